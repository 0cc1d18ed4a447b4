"""`grant --format export` (for eval, beside the dotenv `env`) and `grant --like ID [--replace]`,
which renews a grant: a new one with its agent, scopes, audience, reason and use limit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import claims_of, command, isolated_env, list_all, ok
from helpers.support import Cli

SCOPE = "repo:read:acme/api"


def minted(cli: Cli, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli.ok("grant", *args, "--format", "json").stdout)
    return found


def shown(cli: Cli, grant_id: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli.ok("show", grant_id, "--json").stdout)
    return found


def lifetime(grant: dict[str, Any]) -> int:
    from nhidel.timefmt import parse_time

    return parse_time(grant["expires_at"], now=0) - parse_time(grant["not_before"], now=0)


def in_bash(script: str, text: str) -> str:
    done = subprocess.run(["bash", "-c", script, "bash", text], capture_output=True, text=True,
                          timeout=30, check=True)  # fmt: skip
    return done.stdout


# -- --format export and env -----------------------------------------------------------------


def test_format_export_prints_a_quoted_export_that_eval_hands_to_children(ready: Cli) -> None:
    out = ready.ok("grant", "reviewer", "--scope", SCOPE, "--format", "export").stdout
    token = out.removeprefix("export NHIDEL_TOKEN='").removesuffix("'\n")
    assert out == f"export NHIDEL_TOKEN='{token}'\n" and token.count(".") == 2
    assert in_bash('eval "$1"; sh -c \'printf %s "$NHIDEL_TOKEN"\'', out) == token


def test_format_env_stays_a_dotenv_line_that_eval_does_not_export(ready: Cli) -> None:
    out = ready.ok("grant", "reviewer", "--scope", SCOPE, "--format", "env").stdout
    assert out.startswith("NHIDEL_TOKEN=ey") and "'" not in out and out.count("\n") == 1
    unexported = 'eval "$1"; sh -c \'printf %s "${NHIDEL_TOKEN-unset}"\''
    assert in_bash(unexported, out) == "unset"


def test_the_format_help_says_which_is_dotenv_and_which_is_for_eval(cli: Cli) -> None:
    text = " ".join(cli.ok("grant", "--help").stdout.replace("│", " ").split())
    assert "env (NHIDEL_TOKEN=TOKEN: a dotenv line, which eval sets but does not export)" in text
    assert "export (export NHIDEL_TOKEN='TOKEN': for eval)" in text


# -- --like -------------------------------------------------------------------------------------


def test_like_copies_agent_scopes_audience_reason_and_use_limit(ready: Cli) -> None:
    ready.ok("agent", "add", "ci", "--allow", "release:publish", "--allow", "repo:read:acme/*",
             "--aud", "api", "--aud", "cdn", "--max-ttl", "2h")  # fmt: skip
    old = minted(ready, "ci", "--scope", "release:publish", "--scope", "repo:read:acme/x",
                 "--aud", "cdn", "--uses", "3", "--reason", "ship 1.2", "--ttl", "40m")  # fmt: skip
    result = ready("grant", "--like", old["id"][:6].upper(), "--format", "json")
    assert result.exit_code == 0, result.stderr
    new = json.loads(result.stdout)
    assert new["id"] != old["id"] and new["status"] == "active" and new["uses"] == 0
    for copied in ("agent", "scopes", "aud", "reason", "max_uses"):
        assert new[copied] == old[copied], copied
    assert lifetime(new) == lifetime(old) == 40 * 60  # the original's TTL by default
    assert f"(like {old['id'][:10]})" in result.stderr
    assert shown(ready, old["id"])["status"] == "active"  # without --replace, left alone


def test_like_takes_its_own_ttl_and_not_before(ready: Cli) -> None:
    old = minted(ready, "reviewer", "--scope", SCOPE, "--ttl", "10m")
    new = minted(ready, "--like", old["id"], "--ttl", "30m", "--not-before", "+1h")
    assert lifetime(new) == 30 * 60 and new["status"] == "pending"


def test_like_caps_the_default_ttl_at_the_agents_max_ttl_today(ready: Cli) -> None:
    old = minted(ready, "reviewer", "--scope", SCOPE, "--ttl", "50m")
    ready.ok("agent", "remove", "reviewer", "--yes")
    ready.ok("agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "20m")
    assert lifetime(minted(ready, "--like", old["id"])) == 20 * 60
    over = ready("grant", "--like", old["id"], "--ttl", "50m")
    assert over.exit_code == 6, over.stderr


def test_like_of_a_grant_the_ceiling_no_longer_covers_is_refused_by_policy(ready: Cli) -> None:
    old = minted(ready, "reviewer", "--scope", SCOPE)
    ready.ok("agent", "remove", "reviewer", "--yes")
    ready.ok("agent", "add", "reviewer", "--allow", "ticket:create:queue/*")
    result = ready("grant", "--like", old["id"])
    assert result.exit_code == 6 and result.stdout == "", result.stderr
    assert "beyond agent reviewer's ceiling" in result.stderr


def test_like_renews_a_revoked_grant(ready: Cli) -> None:
    old = minted(ready, "reviewer", "--scope", SCOPE)
    ready.ok("revoke", old["id"])
    assert minted(ready, "--like", old["id"])["status"] == "active"


def test_like_of_an_unknown_id_is_exit_3(ready: Cli) -> None:
    result = ready("grant", "--like", "gzzzzzzz")
    assert result.exit_code == 3 and "no grant 'gzzzzzzz'" in result.stderr


def test_like_given_a_token_is_exit_2_and_does_not_echo_it(ready: Cli) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    result = ready("grant", "--like", token)
    assert result.exit_code == 2 and "nhidel inspect" in result.stderr
    assert all(part not in result.stderr for part in (token, *token.split(".")))


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (("reviewer",), "AGENT"),
        (("--scope", SCOPE), "--scope"),
        (("--aud", "api"), "--aud"),
        (("--uses", "2"), "--uses"),
        (("--reason", "again"), "--reason"),
    ],
)
def test_like_with_what_it_copies_is_a_usage_error(
    ready: Cli, extra: tuple[str, ...], named: str
) -> None:
    old = minted(ready, "reviewer", "--scope", SCOPE)
    result = ready("grant", "--like", old["id"], *extra)
    assert result.exit_code == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith(f"error: {named} cannot be given with --like")
    assert len(json.loads(ready.ok("list", "--json").stdout)) == 1  # nothing minted


def test_replace_without_like_is_a_usage_error(ready: Cli) -> None:
    result = ready("grant", "reviewer", "--scope", SCOPE, "--replace")
    assert result.exit_code == 2 and "--replace goes with --like" in result.stderr


def test_grant_without_like_still_needs_agent_and_scope(ready: Cli) -> None:
    assert "missing argument 'AGENT'" in ready("grant", "--scope", SCOPE).stderr
    assert ready("grant", "reviewer").exit_code == 2


def test_the_help_says_a_token_cannot_be_extended_and_the_ttl_is_capped(cli: Cli) -> None:
    text = " ".join(cli.ok("grant", "--help").stdout.replace("│", " ").split())
    assert "A token cannot be extended" in text
    assert "with --like, grant ID's TTL, capped by the agent's max TTL" in text


# -- --replace ----------------------------------------------------------------------------------


def test_replace_revokes_the_old_grant_naming_the_new_one(ready: Cli) -> None:
    old = minted(ready, "reviewer", "--scope", SCOPE)
    result = ready("grant", "--like", old["id"], "--replace")
    assert result.exit_code == 0, result.stderr
    new_id = claims_of(result.stdout.strip())["jti"]
    gone = shown(ready, old["id"])
    assert gone["status"] == "revoked" and gone["revoke_reason"] == f"replaced by {new_id}"
    assert shown(ready, new_id)["status"] == "active"
    assert f"{old['id'][:10]} revoked (replaced by {new_id[:10]})" in result.stderr


@pytest.mark.parametrize("output", ["token", "export"])
def test_replace_leaves_the_old_grant_live_when_the_new_token_is_undelivered(
    tmp_path: Path, output: str
) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    passphrase.chmod(0o600)
    env = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(passphrase))
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "reviewer", "--allow", "repo:read:acme/*")
    old = claims_of(ok(env, "grant", "reviewer", "--scope", SCOPE).stdout.strip())["jti"]
    args = command("grant", "--like", old, "--replace", "--format", output)
    done = subprocess.run(["bash", "-c", 'exec "$@" >&-', "bash", *args], env=env,
                          cwd=env["HOME"], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 1 and "undelivered" in done.stderr, done.stderr
    statuses = {g["id"]: (g["status"], g["revoke_reason"]) for g in list_all(env)}
    assert statuses.pop(old) == ("active", None)
    assert list(statuses.values()) == [("revoked", "undelivered")]
