"""`nhidel agent update`: change a ceiling without losing the grants it still covers.

--allow adds scopes, --disallow removes the entries a scope covers, --max-ttl, --default-ttl and
--aud replace. Narrowing revokes exactly the live grants the new ceiling no longer covers, names
them, and asks first (--yes without a terminal); widening revokes nothing. One sealed
`agent.updated` record, then a `grant.revoked` per grant, in one state change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.support import Cli

API = "repo:read:acme/api"
TICKET = "ticket:create:queue/1"


def mint(cli: Cli, *args: str) -> dict[str, Any]:
    """A grant for reviewer (its JSON, with the token)."""
    found: dict[str, Any] = json.loads(
        cli.ok("grant", "reviewer", "--format", "json", *args).stdout
    )
    return found


def status(cli: Cli, grant: dict[str, Any]) -> tuple[str, str | None]:
    shown = json.loads(cli.ok("show", grant["id"], "--json").stdout)
    return shown["status"], shown["revoke_reason"]


def ceiling(cli: Cli) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(cli.ok("agent", "show", "reviewer", "--json").stdout)
    return shown


def records(cli: Cli, *filters: str) -> list[dict[str, Any]]:
    out = cli.ok("audit", "tail", "-n", "100", "--json", *filters).stdout
    return [json.loads(line) for line in out.splitlines()]


def state_files(home: Path) -> dict[str, bytes]:
    return {name: (home / name).read_bytes() for name in ("audit.jsonl", "config.toml")}


def test_allow_adds_scopes_and_revokes_nothing(ready: Cli) -> None:
    kept = mint(ready, "--scope", API)
    said = ready.ok("agent", "update", "reviewer", "--allow", "deploy:run").stderr
    assert "updated agent reviewer: repo:read:acme/* ticket:create:queue/* deploy:run" in said
    assert "revoked" not in said
    assert ceiling(ready)["allow"] == ["repo:read:acme/*", "ticket:create:queue/*", "deploy:run"]
    assert status(ready, kept) == ("active", None)
    ready.ok("grant", "reviewer", "--scope", "deploy:run")  # the wider ceiling holds at once
    assert ready("audit", "verify").exit_code == 0


def test_disallow_revokes_exactly_the_live_grants_it_no_longer_covers_and_names_them(
    ready: Cli,
) -> None:
    kept = mint(ready, "--scope", API)
    doomed = [mint(ready, "--scope", TICKET), mint(ready, "--scope", API, "--scope", TICKET)]
    spent = mint(ready, "--scope", TICKET, "--uses", "1")
    ready.ok("verify", "-", "--any-scope", "--consume", input=spent["token"])
    gone = mint(ready, "--scope", TICKET)
    ready.ok("revoke", gone["id"])
    result = ready.ok("agent", "update", "reviewer", "--disallow", "ticket:create:queue/*", "--yes")
    assert "revoked 2 grants: " in result.stderr
    assert all(g["id"][:10] in result.stderr for g in doomed)
    assert spent["id"][:10] not in result.stderr and gone["id"][:10] not in result.stderr
    assert [status(ready, g) for g in doomed] == [("revoked", "ceiling narrowed")] * 2
    assert status(ready, kept) == ("active", None)
    assert status(ready, spent) == ("exhausted", None)
    assert status(ready, gone) == ("revoked", None)
    assert ceiling(ready)["allow"] == ["repo:read:acme/*"]
    assert ready("grant", "reviewer", "--scope", TICKET).exit_code == 6
    assert ready("audit", "verify").exit_code == 0


def test_the_update_is_sealed_as_one_agent_updated_record_with_the_new_ceiling(
    ready: Cli,
) -> None:
    doomed = mint(ready, "--scope", TICKET)
    ready.ok("agent", "update", "reviewer", "--disallow", "ticket:create:queue/*",
             "--max-ttl", "30m", "--aud", "api.example.com", "--yes")  # fmt: skip
    (updated,) = records(ready, "--event", "agent.updated")
    assert (updated["agent"], updated["scopes"], updated["aud"]) == (
        "reviewer", ["repo:read:acme/*"], ["api.example.com"])  # fmt: skip
    assert (updated["max_ttl"], updated["default_ttl"], updated["revoked"]) == (1800, 900, 1)
    assert updated["config_sha256"] and updated["principal"] == "alice"
    (revoked,) = records(ready, "--event", "grant.revoked")
    assert revoked["seq"] == updated["seq"] + 1 and revoked["sid"] == updated["sid"]
    assert (revoked["grant"], revoked["agent"], revoked["scopes"], revoked["reason"]) == (
        doomed["id"], "reviewer", [TICKET], "ceiling narrowed")  # fmt: skip
    shown = ready.ok("audit", "tail", "--agent", "reviewer", "--event", "agent.updated").stdout
    assert "agent.updated" in shown and "repo:read:acme/*" in shown


def test_aud_replaces_the_audiences_and_revokes_grants_for_any_other(ready: Cli) -> None:
    ready.ok("agent", "update", "reviewer", "--aud", "a.example.com", "--aud", "b.example.com")
    for_a = mint(ready, "--scope", API, "--aud", "a.example.com")
    for_b = mint(ready, "--scope", API, "--aud", "b.example.com")
    said = ready.ok("agent", "update", "reviewer", "--aud", "b.example.com", "--yes").stderr
    assert "aud b.example.com)" in said and "revoked 1 grant: " in said
    assert ceiling(ready)["aud"] == ["b.example.com"]
    assert status(ready, for_a) == ("revoked", "ceiling narrowed")
    assert status(ready, for_b) == ("active", None)


def test_naming_audiences_revokes_the_grants_that_name_none(ready: Cli) -> None:
    anywhere = mint(ready, "--scope", API)  # no aud: any verifier takes it
    ready.ok("agent", "update", "reviewer", "--aud", "api.example.com", "--yes")
    assert status(ready, anywhere) == ("revoked", "ceiling narrowed")


def test_a_lower_max_ttl_revokes_the_grants_with_more_time_left_than_it(ready: Cli) -> None:
    long = mint(ready, "--scope", API, "--ttl", "30m")
    short = mint(ready, "--scope", API, "--ttl", "5m")
    later = mint(ready, "--scope", API, "--ttl", "5m", "--not-before", "+20m")  # 5m of use
    said = ready.ok("agent", "update", "reviewer", "--max-ttl", "10m", "--yes").stderr
    assert "(ttl 10m, max 10m)" in said  # the default TTL (15m) came down with it
    assert status(ready, long) == ("revoked", "ceiling narrowed")
    assert status(ready, short) == ("active", None)
    assert status(ready, later) == ("pending", None)


def test_a_higher_max_ttl_and_default_ttl_revoke_nothing(ready: Cli) -> None:
    kept = mint(ready, "--scope", API)
    ready.ok("agent", "update", "reviewer", "--max-ttl", "2h", "--default-ttl", "1h")
    shown = ceiling(ready)
    assert (shown["max_ttl"], shown["default_ttl"]) == ("2h", "1h")
    assert status(ready, kept) == ("active", None)


def test_on_a_terminal_a_narrowing_names_the_agent_and_grants_and_asks(ready: Cli) -> None:
    doomed = mint(ready, "--scope", TICKET)
    result = ready("agent", "update", "reviewer", "--disallow", "ticket:create:queue/*",
                   input="y\n", terminal=True)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    asked = result.stderr.splitlines()[0]
    assert asked.startswith("agent reviewer's narrower ceiling no longer covers 1 live grant")
    assert doomed["id"][:10] in asked and "Continue? [y/N]" in asked
    assert status(ready, doomed) == ("revoked", "ceiling narrowed")


def test_a_declined_narrowing_changes_nothing_and_exits_1(ready: Cli, nhidel_home: Path) -> None:
    doomed = mint(ready, "--scope", TICKET)
    before = state_files(nhidel_home)
    result = ready("agent", "update", "reviewer", "--disallow", "ticket:create:queue/*",
                   input="n\n", terminal=True)  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.endswith("Continue? [y/N] not confirmed: nothing changed\n")  # (no echo)
    assert state_files(nhidel_home) == before
    assert status(ready, doomed) == ("active", None)


def test_a_narrowing_without_a_terminal_needs_yes(ready: Cli, nhidel_home: Path) -> None:
    doomed = mint(ready, "--scope", TICKET)
    before = state_files(nhidel_home)
    result = ready("agent", "update", "reviewer", "--disallow", "ticket:create:queue/*")
    assert result.exit_code == 2
    assert "--yes" in result.stderr and doomed["id"][:10] in result.stderr
    assert state_files(nhidel_home) == before


def test_a_narrowing_that_revokes_nothing_does_not_ask(ready: Cli) -> None:
    mint(ready, "--scope", API)
    said = ready.ok("agent", "update", "reviewer", "--disallow", "ticket:create:queue/*").stderr
    assert "updated agent reviewer: repo:read:acme/* (" in said and "revoked" not in said


def test_running_an_update_again_changes_nothing_and_writes_nothing(
    ready: Cli, nhidel_home: Path
) -> None:
    args = ("agent", "update", "reviewer", "--allow", "repo:read:acme/web",
            "--disallow", "repo:read:acme/*", "--yes")  # fmt: skip
    assert "updated agent reviewer: ticket:create:queue/* repo:read:acme/web" in ready.ok(
        *args).stderr  # fmt: skip
    before = state_files(nhidel_home)
    assert "unchanged" in ready.ok(*args).stderr
    assert state_files(nhidel_home) == before


def test_disallow_takes_every_entry_the_scope_covers(ready: Cli) -> None:
    ready.ok("agent", "update", "reviewer", "--allow", "repo:write:acme/api")
    ready.ok("agent", "update", "reviewer", "--disallow", "repo:*:acme/*")
    assert ceiling(ready)["allow"] == ["ticket:create:queue/*"]


@pytest.mark.parametrize(("args", "said"), [
    ((), "nothing to change"),
    (("--disallow", "repo:read:acme/api"), "covers only part of repo:read:acme/*"),
    (("--allow", "a:b", "--disallow", "a:b"), "both allowed and disallowed"),
    (("--disallow", "repo:read:acme/*", "--disallow", "ticket:create:queue/*"), "no scope"),
    (("--default-ttl", "2h"), "longer than the maximum"),
    (("--max-ttl", "10m", "--default-ttl", "15m"), "longer than the maximum"),
    (("--allow", "Repo:Read"), "invalid scope"),
    (("--aud", "has space"), "invalid audience"),
    (("--max-ttl", "forever"), "--max-ttl"),
])  # fmt: skip
def test_bad_updates_are_usage_errors_and_change_nothing(
    ready: Cli, nhidel_home: Path, args: tuple[str, ...], said: str
) -> None:
    before = state_files(nhidel_home)
    result = ready("agent", "update", "reviewer", *args)
    assert result.exit_code == 2, result.stderr
    assert said in result.stderr and result.stderr.count("\n") <= 2
    assert state_files(nhidel_home) == before


def test_a_grant_being_minted_while_a_narrowing_runs_is_held_to_the_new_ceiling(
    ready: Cli,
) -> None:
    ready.ok("agent", "update", "reviewer", "--disallow", "ticket:create:queue/*")
    refused = ready("grant", "reviewer", "--scope", TICKET)
    assert refused.exit_code == 6 and "beyond agent reviewer's ceiling" in refused.stderr


def test_widening_back_does_not_bring_back_the_revoked_grants(ready: Cli) -> None:
    doomed = mint(ready, "--scope", TICKET)
    ready.ok("agent", "update", "reviewer", "--disallow", "ticket:create:queue/*", "--yes")
    ready.ok("agent", "update", "reviewer", "--allow", "ticket:create:queue/*")
    denied = ready("verify", "-", "--scope", TICKET, input=doomed["token"])
    assert denied.exit_code == 1 and "revoked" in denied.stderr
