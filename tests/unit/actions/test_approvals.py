"""Approval marks on a ceiling, the summary nhidel writes of a call's arguments, and the
approvals desk an enforcement point asks: a request opened once, a yes spent once, a window
that covers identical calls and nothing else, a no, a lapse, a withdrawal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.support import Cli

from nhidel.actions.approvals import (
    GO,
    HELD,
    SUMMARY_LENGTH,
    Choice,
    Desk,
    answer,
    listed,
    summarize,
)
from nhidel.audit import AuditKeys
from nhidel.ceilings import narrowing_of, needs_approval
from nhidel.config import load_config
from nhidel.integrity.approvals import DENIED, LAPSED, Call
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.ledger.store import Ledger
from nhidel.models import Agent
from nhidel.paths import Paths
from nhidel.scopes import parse_scope, parse_scopes


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# -- marks ------------------------------------------------------------------------------------


def test_a_mark_outside_the_ceiling_is_refused(cli: Cli) -> None:
    cli.ok("init", "--principal", "alice")
    result = cli("agent", "add", "bot", "--allow", "fs:read_file:*", "--approve", "fs:write_file")
    assert result.exit_code == 2
    assert "not within the agent's ceiling" in result.stderr


def test_marks_are_added_removed_and_shown(cli: Cli, paths: Paths) -> None:
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "bot", "--allow", "fs:*:*", "--approve", "fs:write_file:*")
    cli.ok("agent", "update", "bot", "--approve", "fs:move_file:*", "--yes")
    shown = json.loads(cli.ok("agent", "show", "bot", "--json").stdout)
    assert shown["approve"] == ["fs:write_file:*", "fs:move_file:*"]
    cli.ok("agent", "update", "bot", "--no-approve", "fs:write_file:*")
    assert load_config(paths).agents["bot"].approve == (parse_scope("fs:move_file:*"),)
    unknown = cli("agent", "update", "bot", "--no-approve", "fs:delete:*")
    assert unknown.exit_code == 2 and "not an approval mark" in unknown.stderr
    assert cli.ok("audit", "verify").exit_code == 0


def test_an_unmarked_ceiling_seals_as_before_marks_existed() -> None:
    agent = Agent("bot", parse_scopes(["fs:*"]), 3600, 900)
    assert "approve" not in agent.to_json()


def test_a_mark_holds_a_call_an_unmarked_entry_also_covers() -> None:
    agent = Agent("bot", parse_scopes(["fs:*:*"]), 3600, 900,
                  approve=parse_scopes(["fs:write_file:/srv/*"]))  # fmt: skip
    assert needs_approval(agent, parse_scope("fs:write_file:/srv/a.txt")) is not None
    assert needs_approval(agent, parse_scope("fs:write_file:/tmp/a.txt")) is None
    assert needs_approval(agent, parse_scope("fs:read_file:/srv/a.txt")) is None


def test_a_crashed_update_keeps_every_mark_of_both_sides() -> None:
    before = Agent("bot", parse_scopes(["fs:*:*"]), 3600, 900, approve=parse_scopes(["fs:a:*"]))
    asked = Agent("bot", parse_scopes(["fs:*:*"]), 3600, 900, approve=parse_scopes(["fs:b:*"]))
    assert set(narrowing_of(before, asked).approve) == set(parse_scopes(["fs:a:*", "fs:b:*"]))


def test_narrowing_keeps_a_mark_that_still_touches_the_ceiling(cli: Cli, paths: Paths) -> None:
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "bot", "--allow", "fs:*:*", "--allow", "pay:*",
           "--approve", "fs:write_file:*", "--approve", "pay:charge")  # fmt: skip
    cli.ok("agent", "update", "bot", "--disallow", "fs:*:*", "--allow", "fs:write_file:/tmp/*",
           "--yes")  # fmt: skip
    cli.ok("agent", "update", "bot", "--disallow", "pay:*", "--allow", "pay:refund", "--yes")
    marks = {str(m) for m in load_config(paths).agents["bot"].approve}
    assert marks == {"fs:write_file:*"}  # pay:charge no longer touches anything allowed


# -- the summary --------------------------------------------------------------------------------


def test_the_summary_escapes_control_and_non_ascii_characters() -> None:
    text = summarize({"path": "/tmp/a\x1b[31mred\u202e", "n": 3})
    assert "\x1b" not in text and "\u202e" not in text
    assert text == 'path="/tmp/a\\u001b[31mred\\u202e" n=3'


def test_the_summary_marks_what_it_cuts() -> None:
    text = summarize({"content": "x" * 500})
    assert "…(+" in text
    many = summarize({f"k{i}": "v" * 50 for i in range(20)})
    assert len(many) < SUMMARY_LENGTH + 20 and many.endswith("more)")


# -- the desk -----------------------------------------------------------------------------------


@pytest.fixture
def home(cli: Cli, paths: Paths) -> KeyStore:
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "bot", "--allow", "fs:*:*", "--approve", "fs:write_file:*")
    return open_keystore(paths)


def desk_for(paths: Paths, keystore: KeyStore, clock: Clock, ledger: Ledger) -> Desk:
    return Desk(paths, AuditKeys.of(keystore), ledger, clock=clock, timeout=600)


def call(args: str = "a", *, grant: str = "g" + "a" * 26, tool: str = "write_file") -> Call:
    return Call("bot", grant, "fs", tool, ("/srv/x",), args)


def events(paths: Paths) -> list[str]:
    return [json.loads(line)["event"] for line in paths.audit_file.read_text().splitlines()]


def consider(desk: Desk, one: Call) -> Any:
    return desk.consider(one, via="mcp", mark="fs:write_file:*", arguments={"a": one.args_sha256})


def test_a_request_is_opened_once_and_a_yes_is_spent_once(paths: Paths, home: KeyStore) -> None:
    clock = Clock(1_800_000_000)
    with Ledger(paths) as ledger:
        desk = desk_for(paths, home, clock, ledger)
        first = consider(desk, call())
        assert first.outcome == HELD and first.request is not None
        again = consider(desk, call())
        assert again.request == first.request  # the retry waits on the same request
        answer(paths, home, first.request.id, Choice(True), now=int(clock()))
        assert desk.poll(first.request).outcome == GO
        assert desk.poll(first.request).outcome == HELD  # spent
        assert consider(desk, call()).outcome == HELD
    assert events(paths).count("approval.used") == 1
    assert events(paths).count("approval.requested") == 2  # the third call asked anew


def test_a_window_covers_identical_calls_and_nothing_else(paths: Paths, home: KeyStore) -> None:
    clock = Clock(1_800_000_000)
    with Ledger(paths) as ledger:
        desk = desk_for(paths, home, clock, ledger)
        held = consider(desk, call())
        assert held.request is not None
        answer(paths, home, held.request.id, Choice(True, window=600), now=int(clock()))
        assert consider(desk, call()).outcome == GO
        assert consider(desk, call()).outcome == GO
        for other in (call("b"), call(grant="g" + "b" * 26), call(tool="move_file"),
                      Call("bot", call().grant, "fs", "write_file", ("/srv/y",), "a")):  # fmt: skip
            assert consider(desk, other).outcome == HELD, other
        clock.now += 601
        assert consider(desk, call()).outcome == HELD


def test_any_args_widens_only_the_arguments(paths: Paths, home: KeyStore) -> None:
    clock = Clock(1_800_000_000)
    with Ledger(paths) as ledger:
        desk = desk_for(paths, home, clock, ledger)
        held = consider(desk, call())
        assert held.request is not None
        answer(paths, home, held.request.id, Choice(True, 600, any_args=True), now=int(clock()))
        assert consider(desk, call("other arguments")).outcome == GO
        assert consider(desk, call(tool="move_file")).outcome == HELD


def test_a_no_denies_the_call_and_its_retry(paths: Paths, home: KeyStore) -> None:
    clock = Clock(1_800_000_000)
    with Ledger(paths) as ledger:
        desk = desk_for(paths, home, clock, ledger)
        held = consider(desk, call())
        assert held.request is not None
        answer(paths, home, held.request.id, Choice(False, reason="no"), now=int(clock()))
        assert desk.poll(held.request).outcome == DENIED
        assert consider(desk, call()).outcome == DENIED


def test_silence_lapses_and_a_late_yes_is_refused(paths: Paths, home: KeyStore, cli: Cli) -> None:
    clock = Clock(1_800_000_000)
    with Ledger(paths) as ledger:
        desk = desk_for(paths, home, clock, ledger)
        held = consider(desk, call())
        assert held.request is not None
        clock.now += 600
        assert desk.poll(held.request).outcome == LAPSED
    late = cli("approve", held.request.id)
    assert late.exit_code == 2 and "lapsed" in late.stderr
    assert events(paths).count("approval.lapsed") == 1


def test_a_withdrawn_request_cannot_be_approved(paths: Paths, home: KeyStore, cli: Cli) -> None:
    with Ledger(paths) as ledger:
        desk = Desk(paths, AuditKeys.of(home), ledger, clock=lambda: 4_000_000_000.0)
        held = consider(desk, call())
        assert held.request is not None
        desk.close(held.request, "withdrawn by the client")
    refused = cli("approve", held.request.id)
    assert refused.exit_code == 2
    (shown,) = listed(paths, home, now=4_000_000_000, every=True)
    assert shown.status == LAPSED


def test_approvals_list_and_show_need_no_more_than_the_id_prefix(
    paths: Paths, home: KeyStore, cli: Cli, tmp_path: Path
) -> None:
    with Ledger(paths) as ledger:
        desk = Desk(paths, AuditKeys.of(home), ledger, clock=lambda: 4_000_000_000.0)
        held = consider(desk, call())
    assert held.request is not None
    ident = held.request.id
    listing = json.loads(cli.ok("approvals", "--json").stdout)
    assert [item["id"] for item in listing] == [ident]
    assert listing[0]["status"] == "pending" and listing[0]["call"]["action"] == "write_file"
    shown = cli.ok("approvals", "show", ident[:6]).stdout
    assert ident in shown and '"a": "a"' in shown
    assert cli("approve", "a").exit_code == 2  # too short to name one
    assert cli("approve", "azzzzzz").exit_code == 3


def test_the_retry_of_a_withdrawn_call_asks_anew(paths: Paths, home: KeyStore) -> None:
    with Ledger(paths) as ledger:
        desk = Desk(paths, AuditKeys.of(home), ledger, clock=lambda: 4_000_000_000.0)
        held = consider(desk, call())
        assert held.request is not None
        desk.close(held.request, "withdrawn by the client")
        retried = consider(desk, call())
    assert retried.outcome == HELD and retried.request is not None
    assert retried.request.id != held.request.id
