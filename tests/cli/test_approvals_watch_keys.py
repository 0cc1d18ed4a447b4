"""`approvals watch` without a terminal: which request a key answers, and what a desktop
notifier is given (tests/integration/test_approvals_watch.py runs the real thing on a pty)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from nhidel.actions.approvals import Choice, Listed
from nhidel.cli import approval_watch, notify
from nhidel.cli.approval_watch import SETTLE, Watch


class FakeLookout:
    """What the ledger holds, set by the test; every look sees it changed."""

    def __init__(self) -> None:
        self.items: list[Listed] = []
        self.seen: set[str] = set()

    def changed(self) -> bool:
        return True

    def waiting(self, *, now: int) -> list[Listed]:
        return list(self.items)

    def arrived(self, waiting: list[Listed]) -> list[Listed]:
        new = [item for item in waiting if item.id not in self.seen]
        self.seen.update(item.id for item in new)
        return new


def request(approval_id: str, *, status: str = "pending") -> Listed:
    return Listed(approval_id, status, None, None, summary="fs write_file: x=1", agent="bot",
                  lapses_at=10_000)  # fmt: skip


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> tuple[Watch, FakeLookout, list[tuple[str, bool]]]:
    notified: list[str] = []
    monkeypatch.setattr(approval_watch, "notify", lambda title, body: notified.append(body))
    answered: list[tuple[str, bool]] = []
    lookout = FakeLookout()

    def answer(approval_id: str, choice: Choice) -> None:
        answered.append((approval_id, choice.granted))

    console = Console(file=io.StringIO(), markup=False)
    watch = Watch(lookout, console, answer, lambda item: item.id)  # type: ignore[arg-type]
    return watch, lookout, answered


def test_a_request_arriving_never_takes_the_place_of_the_one_asked(watched: Any) -> None:
    watch, lookout, answered = watched
    lookout.items = [request("abbbb")]
    watch.look(100.0)
    lookout.items = [request("aaaaa"), request("abbbb")]  # first in the listing's order
    assert not watch.look(100.1)
    watch.press("y", 100.0 + SETTLE + 0.01)
    assert answered == [("abbbb", True)]


def test_a_yes_or_no_pressed_as_the_prompt_moves_is_dropped(watched: Any) -> None:
    watch, lookout, answered = watched
    lookout.items = [request("aaaaa")]
    assert watch.look(100.0)  # the prompt moved to aaaaa at 100.0
    watch.press("y", 100.0 + SETTLE / 2)
    watch.press("n", 100.0 + SETTLE / 2)
    assert answered == []
    watch.press("\r", 100.0 + SETTLE + 0.01)  # Enter: the default, no
    assert answered == [("aaaaa", False)]


def test_skipped_and_forged_requests_are_not_asked(watched: Any) -> None:
    watch, lookout, answered = watched
    lookout.items = [request("aforg", status="forged"), request("aaaaa"), request("abbbb")]
    watch.look(100.0)
    assert watch.asking is not None and watch.asking.id == "aaaaa"
    watch.press("s", 100.0)
    watch.look(101.0)
    assert watch.asking is not None and watch.asking.id == "abbbb"
    assert not watch.press("q", 101.0)  # q ends the watch
    assert answered == []


def test_notify_send_gets_the_text_as_arguments_with_its_markup_escaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    command = notify.notifier_command("t", "<a href='x'>bot</a> & co", platform="linux")
    assert command == ["/usr/bin/notify-send", "--app-name=nhidel", "--", "t",
                       "&lt;a href='x'&gt;bot&lt;/a&gt; &amp; co"]  # fmt: skip
    apple = notify.notifier_command("t", 'x" & do shell script "rm', platform="darwin")
    assert apple is not None and apple[-2:] == ["t", 'x" & do shell script "rm']
    assert "item 2 of argv" in apple[2]  # the script reads the text, never holds it


def test_no_notifier_on_path_is_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert notify.notifier_command("t", "b", platform="linux") is None
    notify.notify("t", "b")  # nothing to run, nothing raised
