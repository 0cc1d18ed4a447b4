"""Group commit for verify decisions: a gateway may decide hundreds of thousands of times a second.

Decisions are buffered and written (sealed, chained, fsynced, and the high-water mark moved)
at most a second after the first of them, or when the verifier closes, or at interpreter exit:
one fsync and one keystore write per batch, not per decision. A state change (a consumed use)
is written at once, with the buffer ahead of it. If a background write fails, the next
decision or `close()` raises it: nothing is dropped silently.

Identical decisions within one such window (same event, outcome, token fingerprint, grant,
requested scopes and audience) become one record, at the place of the first of them, with
`count` (how many) and `last_time` (when the last was decided); `time` is when the first was.
A record without `count` stands for one decision. The count is inside the sealed body, so the
seal covers it like any other field, and the counts of a log add up to the decisions made.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any

from nhidel.audit.writer import AuditLog

MAX_DELAY = 1.0  # seconds a decision may wait in memory
MAX_BUFFERED = 10_000  # records (a coalesced run is one)


class _Pending:
    """One record to write: its content, and for a decision, how many it stands for."""

    __slots__ = ("content", "count", "first", "last")

    def __init__(self, content: dict[str, Any], at: float) -> None:
        self.content = content
        self.count = 1
        self.first = at
        self.last = at

    def record(self, stamp: _Stamps) -> dict[str, Any]:
        if self.count == 1:
            return {**self.content, "time": stamp(self.first)}
        return {**self.content, "time": stamp(self.first), "count": self.count,
                "last_time": stamp(self.last)}  # fmt: skip


class DecisionLog:
    def __init__(self, log: AuditLog, *, max_delay: float = MAX_DELAY) -> None:
        self.log = log
        self.max_delay = max_delay
        self._pending: list[_Pending] = []
        self._runs: dict[Hashable, _Pending] = {}  # this window's decisions, by what they say
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._failure: BaseException | None = None
        self._stamps = _Stamps()
        atexit.register(self.flush)

    def decide(self, key: Hashable, content: dict[str, Any]) -> None:
        """Buffer one decision; `key` must be equal exactly when `content` is equal.

        `content` is not copied: pass one that nobody changes afterwards.
        """
        if self._failure is not None:
            self._raise_failure()
        at = time.time()
        with self._lock:
            run = self._runs.get(key)
            if run is not None:
                run.count += 1
                run.last = at
                return
            run = self._runs[key] = _Pending(content, at)
            self._pending.append(run)
            self._after_append_locked(state_change=False)

    def add(self, records: list[dict[str, Any]], *, state_change: bool) -> None:
        """Buffer records as they are (never coalesced); a state change is written at once."""
        self._raise_failure()
        at = time.time()
        with self._lock:
            self._pending.extend(_Pending(content, at) for content in records)
            self._after_append_locked(state_change=state_change)

    def flush(self) -> None:
        with self._lock:
            self._write_locked()

    def close(self) -> None:
        atexit.unregister(self.flush)
        self.flush()
        self._raise_failure()

    def _after_append_locked(self, *, state_change: bool) -> None:
        if state_change or len(self._pending) >= MAX_BUFFERED:
            self._write_locked()
        elif self._timer is None:
            self._timer = threading.Timer(self.max_delay, self._flush_in_background)
            self._timer.daemon = True
            self._timer.start()

    def _flush_in_background(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - re-raised on the caller's thread
            self._failure = exc

    def _write_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # A new window: later decisions start new runs, so a run never spans two writes.
        self._runs = {}
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            self.log.append([pending.record(self._stamps) for pending in batch], durable=True)
        except BaseException:
            self._pending = batch + self._pending  # keep them for the next attempt
            raise

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure


class _Stamps:
    """RFC 3339 UTC times with microseconds, as the writer stamps them, formatting each second's
    date and time once."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, at: float) -> str:
        second = int(at)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._prefix}.{int((at - second) * 1_000_000):06d}Z"
