"""Group commit for verify decisions: a gateway may decide hundreds of thousands of times a second.

Decisions are buffered and written (sealed, chained, fsynced, and the high-water mark moved)
at most a second after the first of them, or when the verifier closes, or at interpreter exit:
one fsync and one keystore write per batch, not per decision. A state change (a consumed use)
is written at once, with the buffer ahead of it, and `flush()` and `close()` return only once
everything handed in before them is durable. If a background write fails, its records go back
to the front of the buffer and the next decision or `close()` raises the failure: nothing is
dropped silently.

A decision never waits for a write: the buffer's lock is held only to append (or count a
repeat) and to swap the buffer out; sealing, fsync and the mark write happen on a background
thread, outside it, one batch at a time in the order of the swaps (`_writing`). A full buffer
(MAX_BUFFERED records) wakes that thread early; only past MAX_BACKLOG, when the writer cannot
keep up, does a decision wait for a write, so that memory stays bounded.

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
from collections.abc import Hashable, Iterator
from datetime import UTC, datetime
from typing import Any

from nhidel.audit.writer import AuditLog

MAX_DELAY = 1.0  # seconds a decision may wait in memory
MAX_BUFFERED = 10_000  # records (a coalesced run is one) that wake the writer early
# Past this many, a decision waits for the writer (backpressure): a few hundred bytes a record,
# so tens of MB at most, and the writer, at tens of thousands of records a second, falls this
# far behind only when checks arrive faster than it can seal.
MAX_BACKLOG = 4 * MAX_BUFFERED
GIL_SLICE = 0.0002  # seconds of sealing between two yields of the GIL (see _records)


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
        self._lock = threading.Lock()  # the buffer: held to append, count, and swap, no longer
        self._writing = threading.Lock()  # one write at a time, in the order of the swaps
        self._wake = threading.Event()  # the buffer is full, or the log is closing
        self._writer: threading.Thread | None = None  # while the buffer holds anything
        self._due = 0.0  # (monotonic) when the writer writes the buffer, full or not
        self._closed = False  # the writer stops: after close() nothing is written behind it
        self._failure: BaseException | None = None
        self._stamps = _Stamps()  # used only under `_writing`
        atexit.register(self.flush)

    def decide(self, key: Hashable, content: dict[str, Any]) -> None:
        """Buffer one decision; `key` must be equal exactly when `content` is equal.

        Never waits for a write unless the writer is MAX_BACKLOG records behind.
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
            writer = self._writer_for_locked(was_empty=len(self._pending) == 1)
            behind = len(self._pending) >= MAX_BACKLOG
        if writer is not None:
            writer.start()  # (outside the lock: starting a thread waits for it to run)
        if behind:
            self.flush()

    def add(self, records: list[dict[str, Any]], *, state_change: bool) -> None:
        """Buffer records as they are (never coalesced); a state change is written, with the
        buffer ahead of it, before this returns."""
        self._raise_failure()
        at = time.time()
        with self._lock:
            was_empty = not self._pending
            self._pending.extend(_Pending(content, at) for content in records)
            writer = self._writer_for_locked(was_empty=was_empty)
            behind = len(self._pending) >= MAX_BACKLOG
        if writer is not None:
            writer.start()
        if state_change or behind:
            self.flush()

    def flush(self) -> None:
        """Write the buffer now; when this returns, every record handed in before the call is
        durable (a write already under way is waited for, and one that failed is retried)."""
        self._write(background=False)

    def _write(self, *, background: bool) -> None:
        with self._writing:
            with self._lock:
                if background and self._closed:
                    return  # close() has written what it could: nothing behind its back
                batch, self._pending = self._pending, []
                # A new window: later decisions start new runs, so a run never spans two writes.
                self._runs = {}
            if not batch:
                return
            try:
                self.log.append(self._records(batch), durable=True)
            except BaseException:
                with self._lock:
                    self._pending[:0] = batch  # kept, ahead of the newer ones, for the next try
                raise

    def close(self) -> None:
        """Write everything buffered, then raise any failure of a background write. Whether or
        not that write succeeds, the background writer ends: nothing is written later behind
        the caller's back (what a failed write left stays buffered, as the failure says)."""
        atexit.unregister(self.flush)
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
            self._wake.set()  # a waiting writer sees it at once and ends
        self._raise_failure()

    def _records(self, batch: list[_Pending]) -> Iterator[dict[str, Any]]:
        """The batch's records, made as the writer seals them. Sealing is pure Python: a batch
        of thousands would hold the GIL until the interpreter's switch interval (5 ms) took it
        away, and every check on another thread would wait that long. So every GIL_SLICE of
        sealing, this thread lets go of the GIL (sleep(0) releases it and, taking ~50-90 us on
        Linux, leaves a waiting thread the time to take it)."""
        clock = time.perf_counter
        stamps = self._stamps
        until = clock() + GIL_SLICE
        for pending in batch:
            yield pending.record(stamps)
            if clock() >= until:
                time.sleep(0)
                until = clock() + GIL_SLICE

    def _writer_for_locked(self, *, was_empty: bool) -> threading.Thread | None:
        """After an append: a writer thread for the caller to start when none runs; a full
        buffer wakes the running one."""
        self._closed = False  # (a decision after close() is written like any other)
        if was_empty or self._writer is None:
            self._due = time.monotonic() + self.max_delay
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_in_background, name="nhidel-decision-log", daemon=True
            )
            return self._writer
        if len(self._pending) >= MAX_BUFFERED and not self._wake.is_set():
            self._wake.set()
        return None

    def _write_in_background(self) -> None:
        """Write the buffer when it is due or full, until it is empty or a write fails."""
        while True:
            self._wake.wait(max(0.0, self._due - time.monotonic()))
            self._wake.clear()
            with self._lock:
                if not self._pending or self._failure is not None or self._closed:
                    self._writer = None
                    return
            try:
                self._write(background=True)
            except Exception as exc:  # noqa: BLE001 - re-raised on the caller's thread
                self._failure = exc

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
