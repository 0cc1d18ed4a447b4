"""Every command that revokes live grants in bulk says how many (and whose) and asks the same way.

`revoke --all`, `revoke --agent`, `agent remove`, `agent update` (narrowing) and `key rotate --now`:
on a terminal each asks; without one each needs --yes (exit 2, nothing changed); a declined prompt
changes nothing and exits 1 with one line saying so. Only live grants are counted and revoked, and
every revocation record carries the grant's agent and scopes, whatever revoked it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.support import Cli, MemoryKeyring

API = "repo:read:acme/api"

# (the command, what its question must say)
DESTRUCTIVE = {
    "revoke --all": (("revoke", "--all"), "this revokes every live grant (2, of agent reviewer)"),
    "revoke --agent": (
        ("revoke", "--agent", "reviewer"),
        "this revokes 2 live grants of agent reviewer",
    ),
    "agent remove": (("agent", "remove", "reviewer"), "removing agent reviewer revokes its 2 live"),
    "agent update": (
        ("agent", "update", "reviewer", "--disallow", "repo:read:acme/*"),
        "agent reviewer's narrower ceiling no longer covers 2 live grants",
    ),
    "key rotate --now": (
        ("key", "rotate", "--now"),
        "rotating now stops trusting the signing key at once and revokes the 2 live grants",
    ),
}


def mint(cli: Cli, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cli.ok("grant", "reviewer", "--scope", API, "--format", "json", *args).stdout
    )
    return found


@pytest.fixture
def two_live(ready: Cli) -> list[dict[str, Any]]:
    """Two live grants of reviewer."""
    return [mint(ready), mint(ready)]


def statuses(cli: Cli) -> dict[str, str]:
    return {g["id"]: g["status"] for g in json.loads(cli.ok("list", "--all", "--json").stdout)}


def everything(home: Path, keyring: MemoryKeyring) -> tuple[dict[str, bytes], dict[Any, str]]:
    """Every file of the home (but the locks) and the keyring's entries: what "nothing changed"
    is held to."""
    files = {p.name: p.read_bytes() for p in home.iterdir() if not p.name.endswith(".lock")}
    return files, dict(keyring.entries)


@pytest.mark.parametrize("name", list(DESTRUCTIVE))
def test_on_a_terminal_each_says_how_many_live_grants_and_asks(
    ready: Cli, two_live: list[dict[str, Any]], name: str
) -> None:
    args, plan = DESTRUCTIVE[name]
    result = ready(*args, input="y\n", terminal=True)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith(plan) and ". Continue? [y/N] " in result.stderr
    assert all(statuses(ready)[g["id"]] == "revoked" for g in two_live)


@pytest.mark.parametrize("name", list(DESTRUCTIVE))
@pytest.mark.parametrize("answer", ["n\n", "\n", "whatever\n", ""])
def test_a_declined_prompt_changes_nothing_and_exits_1(
    ready: Cli,
    two_live: list[dict[str, Any]],
    nhidel_home: Path,
    memory_keyring: MemoryKeyring,
    name: str,
    answer: str,
) -> None:
    args, _ = DESTRUCTIVE[name]
    before = everything(nhidel_home, memory_keyring)
    result = ready(*args, input=answer, terminal=True)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].endswith("not confirmed: nothing changed")
    assert result.stderr.count("nothing changed") == 1 and "error" not in result.stderr
    assert everything(nhidel_home, memory_keyring) == before


@pytest.mark.parametrize("name", list(DESTRUCTIVE))
def test_without_a_terminal_each_needs_yes_and_changes_nothing(
    ready: Cli,
    two_live: list[dict[str, Any]],
    nhidel_home: Path,
    memory_keyring: MemoryKeyring,
    name: str,
) -> None:
    args, plan = DESTRUCTIVE[name]
    before = everything(nhidel_home, memory_keyring)
    result = ready(*args)
    assert result.exit_code == 2
    error, hint = result.stderr.splitlines()
    assert error.startswith(f"error: refusing without --yes: {plan}")
    assert hint.startswith("hint: ") and "--yes" in hint
    assert everything(nhidel_home, memory_keyring) == before


@pytest.mark.parametrize("name", list(DESTRUCTIVE))
def test_with_yes_none_asks(ready: Cli, two_live: list[dict[str, Any]], name: str) -> None:
    args, _ = DESTRUCTIVE[name]
    result = ready(*args, "--yes", terminal=True)
    assert result.exit_code == 0, result.stderr
    assert "Continue?" not in result.stderr
    assert all(statuses(ready)[g["id"]] == "revoked" for g in two_live)


@pytest.mark.parametrize("name", list(DESTRUCTIVE))
def test_with_nothing_live_to_revoke_none_asks(ready: Cli, name: str) -> None:
    spent = mint(ready, "--uses", "1")
    ready.ok("verify", "-", "--any-scope", "--consume", input=spent["token"])
    args, _ = DESTRUCTIVE[name]
    result = ready(*args)  # no terminal and no --yes: fine, nothing is lost
    assert result.exit_code == 0, result.stderr
    assert statuses(ready)[spent["id"]] == "exhausted"


def test_revoke_all_and_agent_count_and_revoke_only_live_grants(
    ready: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = mint(ready, "--ttl", "1h")
    pending = mint(ready, "--not-before", "+5m")
    short = mint(ready, "--ttl", "5m")
    spent = mint(ready, "--uses", "1")
    ready.ok("verify", "-", "--any-scope", "--consume", input=spent["token"])
    gone = mint(ready)
    ready.ok("revoke", gone["id"])
    later = int(time.time()) + 600  # `short` has expired by then
    monkeypatch.setattr("nhidel.cli.common.now", lambda: later)
    asked = ready("revoke", "--agent", "reviewer", input="y\n", terminal=True).stderr
    assert asked.startswith("this revokes 2 live grants of agent reviewer")
    said = asked.split("[y/N] ")[-1].strip()  # (the runner does not echo the answer)
    assert said.startswith("revoked 2 grants: ") and "already" not in said
    assert {live["id"][:10], pending["id"][:10]} == set(said.split(": ")[1].split())
    assert ready.ok("revoke", "--all").stderr == "revoked 0 grants\n"
    shown = statuses(ready)
    assert (shown[short["id"]], shown[spent["id"]]) == ("expired", "exhausted")


def test_a_grant_edited_to_look_used_up_is_still_revoked(ready: Cli, nhidel_home: Path) -> None:
    hidden = mint(ready)
    with sqlite3.connect(nhidel_home / "ledger.db") as db:  # the row no longer matches its seal
        db.execute("UPDATE grants SET max_uses = 0 WHERE id = ?", (hidden["id"],))
    said = ready("revoke", "--all", "--yes").stderr
    assert f"revoked 1 grant: {hidden['id'][:10]}" in said


def test_every_revocation_record_carries_the_grants_agent_and_scopes(ready: Cli) -> None:
    ready.ok("agent", "add", "ci", "--allow", "release:publish")
    by_id = mint(ready)
    ready.ok("revoke", by_id["id"])
    mint(ready)
    ready.ok("revoke", "--agent", "reviewer", "--yes")
    ready.ok("grant", "ci", "--scope", "release:publish")
    ready.ok("revoke", "--all", "--yes")
    mint(ready, "--scope", "ticket:create:queue/1")
    ready.ok("agent", "update", "reviewer", "--disallow", "ticket:create:queue/*", "--yes")
    mint(ready)
    ready.ok("key", "rotate", "--now", "--yes")
    ready.ok("grant", "ci", "--scope", "release:publish")
    ready.ok("agent", "remove", "ci", "--yes")
    out = ready.ok("audit", "tail", "-n", "100", "--json", "--event", "grant.revoked").stdout
    revoked = [json.loads(line) for line in out.splitlines()]
    assert [r["reason"] for r in revoked] == [
        None, None, None, "ceiling narrowed", "signing key compromised", "agent removed"
    ]  # fmt: skip
    shapes = {frozenset(r) - {"sid"} for r in revoked}
    assert len(shapes) == 1, shapes
    for record in revoked:
        assert record["agent"] in ("reviewer", "ci") and record["principal"] == "alice"
        assert record["scopes"] and record["expires_at"], record


def test_audit_tail_by_agent_shows_what_key_rotate_now_revoked(ready: Cli) -> None:
    grant = mint(ready)
    ready.ok("key", "rotate", "--now", "--yes")
    shown = ready.ok("audit", "tail", "--agent", "reviewer", "--event", "grant.revoked").stdout
    (line,) = shown.splitlines()
    assert grant["id"][:10] in line and API in line and "signing key compromised" in line
