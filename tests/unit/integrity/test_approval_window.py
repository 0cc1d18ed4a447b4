"""`approve --for` windows: which later calls one answer lets through (Answer.window_covers).
A window covers identical calls only; `--any-args` widens the arguments and nothing else."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nhidel.integrity.approvals import DENIED, GRANTED, Answer, Call

ASKED = Call("bot", "grant-1", "fs", "write_file", ("/srv/a.txt",), "a" * 64)
UNTIL = 2_000


def window(*, any_args: bool = False, decision: str = GRANTED) -> Answer:
    call = ASKED.to_json() | ({"args_sha256": None} if any_args else {})
    return Answer("req-1", decision, ASKED.args_sha256, 1_000,
                  window={"call": call, "until": UNTIL})  # fmt: skip


OTHERS = {
    "another tool": replace(ASKED, action="edit_file"),
    "another resource": replace(ASKED, resources=("/srv/b.txt",)),
    "another grant of the same agent": replace(ASKED, grant="grant-2"),
    "another agent": replace(ASKED, agent="other"),
    "another server": replace(ASKED, target="git"),
}


def test_a_window_covers_the_identical_call_until_it_closes() -> None:
    assert window().window_covers(ASKED, now=UNTIL - 1)
    assert not window().window_covers(ASKED, now=UNTIL)


def test_a_window_does_not_cover_a_different_argument_unless_any_args() -> None:
    other_args = replace(ASKED, args_sha256="b" * 64)
    assert not window().window_covers(other_args, now=1_500)
    assert window(any_args=True).window_covers(other_args, now=1_500)


@pytest.mark.parametrize("any_args", [False, True], ids=["exact", "any-args"])
@pytest.mark.parametrize("name", sorted(OTHERS))
def test_a_window_never_covers_another_tool_resource_grant_agent_or_server(
    name: str, any_args: bool
) -> None:
    assert not window(any_args=any_args).window_covers(OTHERS[name], now=1_500)


def test_a_no_with_a_window_covers_nothing() -> None:
    assert not window(decision=DENIED).window_covers(ASKED, now=1_500)
