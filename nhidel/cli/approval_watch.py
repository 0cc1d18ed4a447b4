"""`nhidel approvals watch`: requests shown as they arrive, each asked about with one key.

On a terminal, a live view (Rich) lists the waiting requests, each with its agent, summary and
how long until it lapses, under a prompt for the oldest one not yet skipped: `y` approves it,
`n` or Enter denies it (the same `answer` as `nhidel approve` and `deny`), `s` skips it, `d`
prints it whole, `q` ends the watch. A key answers the request the prompt showed when it was
pressed, and whatever was typed ahead is dropped when the prompt moves on, so a key meant for
one request never answers the next. With `--json`, one line a request, nothing asked.

New requests are noticed by `actions.approvals.Lookout` (a look at the ledger every half
second), so no daemon is needed. Every text a request holds is escaped (`render.safe`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nhidel.actions.approvals import FORGED, POLL_INTERVAL, Choice, Listed, Lookout, arrivals
from nhidel.cli.notify import notify
from nhidel.cli.render import safe
from nhidel.errors import NhidelError
from nhidel.relative_time import relative

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from nhidel.keys.keystore import KeyStore
    from nhidel.paths import Paths

PROMPT_KEYS = "[y/N/s(kip)/d(etails)/q(uit)]"
# A yes or no pressed sooner than this after the prompt moved to another request was meant for
# the one before: it is dropped (a person needs longer than this to read a new prompt).
SETTLE = 0.3
QUIT_KEYS = ("q", "Q", "\x04")  # and Ctrl-D
YES_KEYS = ("y", "Y")
NO_KEYS = ("n", "N", "\r", "\n")  # Enter takes the default: no
Answerer = Callable[[str, Choice], None]
Describer = Callable[[Listed], str]


def print_arrivals(
    paths: Paths, store: KeyStore, to_json: Callable[[Listed], dict[str, Any]]
) -> None:
    """`--json`: each request as one JSON line as it arrives (those already waiting first),
    flushed at once, for a script that answers with `nhidel approve` or `deny`."""
    for item in arrivals(paths, store, clock=time.time, sleep=time.sleep):
        sys.stdout.write(json.dumps(to_json(item), ensure_ascii=False) + "\n")
        sys.stdout.flush()


class Watch:
    """The terminal view: what is waiting, what is being asked, and the keys that answer it."""

    def __init__(self, lookout: Lookout, console: Console, answer: Answerer, details: Describer):
        self.lookout = lookout
        self.console = console
        self.answer = answer
        self.details = details
        self.waiting: list[Listed] = []
        self.skipped: set[str] = set()
        self.asking: Listed | None = None
        self.asked_since = 0.0

    def look(self, now: float) -> bool:
        """Read the requests again if the ledger changed (telling the desktop of new ones), and
        choose the one to ask: whether that is another request than before."""
        if self.lookout.changed():
            self.waiting = self.lookout.waiting(now=int(now))
            for item in self.lookout.arrived(self.waiting):
                if item.status != FORGED:
                    notify("nhidel: approval wanted", _notice(item))
        self.waiting = [item for item in self.waiting if item.lapses_at > now]
        before = self.asking
        askable = [item for item in self.waiting
                   if item.status != FORGED and item.id not in self.skipped]  # fmt: skip
        # The prompt stays on its request until that one is answered, skipped or lapses: a
        # request arriving meanwhile (older by the clock, or first by id) never takes its place.
        kept = [item for item in askable if before is not None and item.id == before.id]
        self.asking = next(iter(kept or askable), None)
        moved = (before and before.id) != (self.asking and self.asking.id)
        if moved:
            self.asked_since = now
        return moved

    def press(self, key: str, now: float) -> bool:
        """Act on one key for the request being asked; false when the watch is to end."""
        if key in QUIT_KEYS:
            return False
        asking = self.asking
        if asking is None:
            return True
        if key in YES_KEYS + NO_KEYS:
            if now - self.asked_since >= SETTLE:
                self._answer(asking, Choice(key in YES_KEYS))
        elif key in ("s", "S"):
            self.skipped.add(asking.id)
        elif key in ("d", "D"):
            self.console.print(self.details(asking), markup=False, highlight=False)
        return True

    def view(self, now: float) -> RenderableType:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        count = sum(1 for item in self.waiting if item.status != FORGED)
        head = Text(f"approvals watch: {count} waiting (Ctrl-C or q ends it)", style="bold")
        table = Table(box=None, pad_edge=False, header_style="bold")
        for name in ("ID", "AGENT", "REQUEST", "LAPSES"):
            table.add_column(name, overflow="fold")
        for item in self.waiting:
            when = "FORGED: its seal fails" if item.status == FORGED else (
                relative(item.lapses_at, now=int(now)) + (", skipped" if item.id in self.skipped
                                                          else ""))  # fmt: skip
            table.add_row(*(Text(safe(cell)) for cell in (item.id, item.agent, item.summary,
                                                          when)))  # fmt: skip
        if self.asking is None:
            prompt = Text("nothing to ask: waiting for requests", style="dim")
        else:
            prompt = Text(f"approve {self.asking.id} ({safe(self.asking.agent)})? {PROMPT_KEYS} ",
                          style="bold")  # fmt: skip
        return Group(head, table, prompt) if self.waiting else Group(head, prompt)

    def _answer(self, item: Listed, choice: Choice) -> None:
        try:
            self.answer(item.id, choice)
        except NhidelError as exc:  # answered elsewhere, lapsed meanwhile: say so, watch on
            self.console.print(f"{item.id}: {safe(exc.message)}", markup=False, highlight=False)


def watch_on_terminal(paths: Paths, store: KeyStore, answer: Answerer, details: Describer) -> None:
    """Run the live view until `q` (or Ctrl-C, which the error tree ends as 130)."""
    import termios
    import tty

    from nhidel.cli.render import console as make_console

    console = make_console(stderr=False)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    lookout = Lookout(paths, store)
    watch = Watch(lookout, console, answer, details)
    try:
        tty.setcbreak(fd)  # one key at a time, not echoed; Ctrl-C still interrupts
        with _screen(console) as show:
            while True:
                now = time.time()
                if watch.look(now):
                    termios.tcflush(fd, termios.TCIFLUSH)  # typed for the request before
                show(watch.view(now), _screenful(watch))
                key = _key(fd, POLL_INTERVAL)
                if key is not None and not watch.press(key, time.time()):
                    return
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        lookout.close()


def _screenful(watch: Watch) -> tuple[object, ...]:
    """What a plain (dumb) terminal is shown again for: the waiting ids and the one asked."""
    return (tuple(item.id for item in watch.waiting), watch.asking and watch.asking.id,
            tuple(sorted(watch.skipped)))  # fmt: skip


class _screen:  # noqa: N801 - a context manager, used like a function
    """A Rich Live view, redrawn each time; on a terminal Rich cannot redraw (TERM=dumb), the
    view printed again whenever what it shows changes (not at every tick of the countdown)."""

    def __init__(self, console: Console) -> None:
        from rich.live import Live

        self.console = console
        self.live: Live | None = None
        if not console.is_dumb_terminal:
            self.live = Live(console=console, auto_refresh=False, transient=False)
        self.shown: tuple[object, ...] | None = None

    def __enter__(self) -> Callable[[RenderableType, tuple[object, ...]], None]:
        if self.live is not None:
            self.live.start()
        return self.show

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def show(self, view: RenderableType, screenful: tuple[object, ...]) -> None:
        if self.live is not None:
            self.live.update(view, refresh=True)
        elif screenful != self.shown:
            self.console.print(view)
        self.shown = screenful


def _key(fd: int, timeout: float) -> str | None:
    """One key pressed within `timeout` seconds (the first of what arrived), or None."""
    import select

    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    pressed = os.read(fd, 64)
    return pressed[:1].decode("latin-1") if pressed else QUIT_KEYS[-1]  # none: it went away


def _notice(item: Listed) -> str:
    """The desktop notification's text: who asks and where the call goes, never the argument
    values (a notifier's argv is readable by every local user while it runs)."""
    request = item.request
    call = request.body.get("call") if request is not None else None
    if isinstance(call, dict):
        what = f"{call.get('target')} {call.get('action')}"
    else:
        what = str(request.kind if request is not None else "request")
    return safe(f"{item.agent} asks: {what} ({item.id})")
