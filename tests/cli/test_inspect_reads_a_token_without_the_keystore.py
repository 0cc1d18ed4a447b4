"""`nhidel inspect`: a token decoded, the grant behind it and a verdict, with no keystore, no use
spent and no audit record; and `show` given a token, which points at inspect.

The home is `world` (alice, agent `reviewer`, set up at the fixed time T, days before the real
clock), so a grant issued at T has expired by now; the other grants come from the command line,
at the real time.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import pytest
from helpers.support import Cli, MemoryKeyring
from helpers.token_world import SCOPE, World, claims_of, forge, segment

from nhidel.paths import Paths
from nhidel.timefmt import local_clock, rfc3339
from nhidel.tokens.jws import mint

UNVERIFIED_BOTH = ["keys from config.toml", "sealed state"]


def grant(cli: Cli, *args: str) -> str:
    return cli.ok("grant", "reviewer", "--scope", SCOPE, *args).stdout.strip()


def inspected(cli: Cli, token: str, *args: str) -> dict[str, Any]:
    result = cli.ok("inspect", "-", "--json", *args, input=token)
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def assert_one_error(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: "), stderr
    assert lines[1].startswith("hint: ") and "Traceback" not in stderr, stderr


def untouched(paths: Paths) -> tuple[bytes, list[tuple[Any, ...]]]:
    """The audit log's bytes, and the ledger's sealed state and every row's uses and revocation."""
    with sqlite3.connect(paths.ledger_file) as db:
        rows = db.execute("SELECT id, uses, revoked_at FROM grants ORDER BY id").fetchall()
        rows += db.execute("SELECT body FROM sealed_state").fetchall()
    return paths.audit_file.read_bytes(), rows


# -- what it shows -------------------------------------------------------------------------


def test_inspect_shows_header_claims_grant_and_verdict(world: World, cli: Cli) -> None:
    token = grant(cli, "--uses", "3", "--reason", "review PR 7")
    result = cli.ok("inspect", token)
    out = result.stdout
    assert out.splitlines()[0] == "header" and "  typ  nhidel+jwt" in out
    for shown in ("claims", f"scope     {SCOPE}", '{"sub": "reviewer"}', "in 15m ("):
        assert shown in out, out
    for shown in ("grant", claims_of(token)["jti"], "status   active", "uses     0 of 3",
                  "reason   review PR 7"):  # fmt: skip
        assert shown in out, out
    assert "would verify now  yes: valid now" in out
    assert "unverified        keys from config.toml, sealed state" in out
    assert result.stderr == ""


def test_inspect_json_has_stable_keys_and_the_grant_as_show_has_it(world: World, cli: Cli) -> None:
    token = grant(cli, "--aud", "api.example.com")
    found = inspected(cli, token)
    assert list(found) == ["header", "claims", "grant", "verdict"]
    assert found["header"]["alg"] == "EdDSA" and found["claims"] == claims_of(token)
    shown = json.loads(cli.ok("show", claims_of(token)["jti"], "--json").stdout)
    assert found["grant"] == shown
    assert found["verdict"] == {
        "would_verify": True,
        "reason": None,
        "detail": "valid now, for the scopes it grants and verify --aud api.example.com",
        "unverified": UNVERIFIED_BOTH,
    }


def test_inspect_reads_the_token_from_argument_stdin_and_environment(
    world: World, cli: Cli
) -> None:
    token = grant(cli)
    by_argument = cli.ok("inspect", token, "--json").stdout
    by_stdin = cli.ok("inspect", "-", "--json", input=token + "\n").stdout
    by_variable = cli("inspect", "--json", env={"NHIDEL_TOKEN": token})
    assert by_variable.exit_code == 0 and by_argument == by_stdin == by_variable.stdout
    nothing = cli("inspect")
    assert nothing.exit_code == 2 and "no token to inspect" in nothing.stderr


# -- the keystore, uses and the log are left alone ------------------------------------------


def test_inspect_works_with_the_file_keystore_and_no_passphrase(world: World, cli: Cli) -> None:
    token = grant(cli)
    locked = {"NHIDEL_KEYSTORE": "file"}  # no NHIDEL_PASSPHRASE(_FILE), no terminal to ask
    assert cli("verify", token, "--any-scope", env=locked).exit_code == 4  # really unavailable
    result = cli("inspect", token, "--json", env=locked)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["verdict"]["would_verify"] is True


def test_inspect_never_opens_the_keystore(
    world: World, cli: Cli, memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = grant(cli)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("inspect opened the keystore")

    monkeypatch.setattr("nhidel.keys.keystore.open_keystore", refuse)
    monkeypatch.setattr(memory_keyring, "get_password", refuse)
    found = inspected(cli, token)
    assert found["verdict"]["would_verify"] is True and found["grant"]["status"] == "active"


def test_inspect_spends_no_use_and_writes_no_audit_record(
    world: World, cli: Cli, paths: Paths
) -> None:
    token = grant(cli, "--uses", "1")
    before = untouched(paths)
    cli.ok("inspect", token)
    assert inspected(cli, token)["grant"]["uses"] == 0
    assert untouched(paths) == before
    assert cli("verify", token, "--any-scope", "--consume").exit_code == 0  # its one use is left


# -- each status -----------------------------------------------------------------------------


def test_inspect_of_a_pending_grant_says_when_it_starts(world: World, cli: Cli) -> None:
    token = grant(cli, "--not-before", "+1h")
    start = rfc3339(claims_of(token)["nbf"])
    found = inspected(cli, token)
    assert found["grant"]["status"] == "pending" and found["grant"]["not_before"] == start
    verdict = found["verdict"]
    assert (verdict["would_verify"], verdict["reason"]) == (False, "not_yet_valid")
    assert start in verdict["detail"] and verdict["unverified"] == ["keys from config.toml"]
    shown = local_clock(claims_of(token)["nbf"])
    assert f"starts   in 1h ({shown})" in cli.ok("inspect", token).stdout


def test_inspect_of_an_expired_grant(world: World, cli: Cli) -> None:
    issued, token = world.issue(ttl="15m")  # at T, days ago
    found = inspected(cli, token)
    assert found["grant"]["id"] == issued.id and found["grant"]["status"] == "expired"
    assert found["verdict"]["reason"] == "expired" and not found["verdict"]["would_verify"]
    assert local_clock(claims_of(token)["exp"]) in cli.ok("inspect", token).stdout


def test_inspect_of_a_revoked_grant_says_when_and_why(world: World, cli: Cli) -> None:
    token = grant(cli)
    cli.ok("revoke", claims_of(token)["jti"], "--reason", "leaked in a log")
    found = inspected(cli, token)
    assert found["grant"]["status"] == "revoked"
    assert found["grant"]["revoke_reason"] == "leaked in a log" and found["grant"]["revoked_at"]
    assert found["verdict"]["reason"] == "revoked"
    assert found["verdict"]["unverified"] == UNVERIFIED_BOTH  # the row, not the sealed state
    assert "revoked  " in cli.ok("inspect", token).stdout
    assert ": leaked in a log" in cli.ok("inspect", token).stdout


def test_inspect_of_an_exhausted_grant(world: World, cli: Cli) -> None:
    token = grant(cli, "--uses", "1")
    cli.ok("verify", token, "--any-scope", "--consume")
    found = inspected(cli, token)
    assert found["grant"]["status"] == "exhausted" and found["grant"]["uses"] == 1
    assert found["verdict"]["reason"] == "uses_exhausted"


def test_inspect_of_a_token_this_ledger_never_issued(world: World, cli: Cli) -> None:
    now = int(time.time())
    claims = {**claims_of(grant(cli)), "jti": "g" + "a" * 26, "iat": now, "nbf": now}
    stranger = mint(claims, world.signer.seed, world.signer.kid)
    found = inspected(cli, stranger)
    assert found["grant"] is None and found["verdict"]["reason"] == "unknown_grant"
    assert "this ledger issued no such token" in cli.ok("inspect", stranger).stdout


def test_inspect_of_a_tampered_signature(world: World, cli: Cli) -> None:
    token = grant(cli)
    head, payload, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    found = inspected(cli, f"{head}.{payload}.{flipped}")
    assert found["verdict"]["reason"] == "bad_signature"
    assert found["verdict"]["unverified"] == ["keys from config.toml"]
    assert found["grant"] is None  # not the token the ledger issued


def test_a_verdict_that_needs_no_key_claims_nothing_unverified(world: World, cli: Cli) -> None:
    untyped = forge(world.header(typ="JWT"), claims_of(grant(cli)), world.sign)
    verdict = inspected(cli, untyped)["verdict"]
    assert (verdict["reason"], verdict["unverified"]) == ("wrong_type", [])


# -- bad input and hostile claims ---------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Zm9vYmFyYmF6cXV4",  # no dots
        "Zm9vYmFy.YmF6cXV4",  # two parts
        "eyJhbGciOiJFZERTQSJ9.c2VjcmV0c2VjcmV0.Zm9vYmFyYmF6",  # a payload that is not JSON
        segment(["a", "list"]) + "." + segment({"sub": "x"}) + ".Zm9vYmFyYmF6",
        "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.Zm9v+YmFy",  # not base64url
    ],
)
def test_inspect_of_a_text_that_is_no_token_is_exit_2_and_quotes_none_of_it(
    world: World, cli: Cli, text: str
) -> None:
    for args, given in ((("inspect", text), None), (("inspect", "-"), text)):
        result = cli(*args, input=given)
        assert result.exit_code == 2 and result.stdout == "", result.stderr
        assert_one_error(result.stderr)
        assert "not a token" in result.stderr
        for part in [text, *text.replace("+", ".").split(".")]:
            assert part not in result.stderr, (part, result.stderr)


def test_inspect_makes_what_a_token_claims_terminal_safe(world: World, cli: Cli) -> None:
    hostile = {**claims_of(grant(cli)), "sub": "\x1b]0;pwned\x07", "act": {"sub": "a\u202eb"},
               "\x1b[31mkey": "\x9b2J", "lone": "\udcff"}  # fmt: skip
    token = forge(world.header(), hostile, world.sign)
    shown = cli.ok("inspect", token).stdout
    for raw in ("\x1b", "\x07", "\u202e", "\x9b"):
        assert raw not in shown, repr(shown)
    assert "\\x1b]0;pwned\\x07" in shown
    as_json = cli.ok("inspect", token, "--json").stdout
    assert as_json.isascii()
    assert json.loads(as_json)["claims"] == hostile  # escaped, yet exactly what it claims


# -- show given a token ------------------------------------------------------------------------


def test_show_given_a_token_points_to_inspect_and_never_echoes_it(world: World, cli: Cli) -> None:
    token = grant(cli)
    for given in (token, token.split(".")[0], token[:-1]):
        result = cli("show", given)
        assert result.exit_code == 2, result.stderr
        assert_one_error(result.stderr)
        assert "nhidel inspect" in result.stderr
        for secret in (token, *token.split(".")):
            assert secret not in result.stdout and secret not in result.stderr


def test_show_still_shows_a_grant_by_id(world: World, cli: Cli) -> None:
    token = grant(cli)
    shown = json.loads(cli.ok("show", claims_of(token)["jti"][:8], "--json").stdout)
    assert shown["id"] == claims_of(token)["jti"]


def test_revoke_given_a_token_points_to_inspect_and_never_echoes_it(world: World, cli: Cli) -> None:
    token = grant(cli)
    result = cli("revoke", token)
    assert result.exit_code == 2
    assert "nhidel inspect" in result.stderr
    for piece in (token, *token.split(".")):
        assert piece not in result.stdout + result.stderr
    assert (
        json.loads(cli.ok("show", claims_of(token)["jti"], "--json").stdout)["status"] == "active"
    )
