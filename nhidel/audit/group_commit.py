"""Group commit for verify decisions: a gateway may decide thousands of times a second.

Decisions are buffered and written (sealed, chained, fsynced, and the high-water mark moved)
at most a second after the first of them, or when the verifier closes, or at interpreter exit:
one fsync and one keystore write per batch, not per decision. A state change (a consumed use)
is written at once, with the buffer ahead of it. If a background write fails, the next
decision or `close()` raises it: nothing is dropped silently.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from .writer import AuditLog

MAX_DELAY = 1.0  # seconds a decision may wait in memory
MAX_BUFFERED = 10_000


class DecisionLog:
    def __init__(self, log: AuditLog, *, max_delay: float = MAX_DELAY) -> None:
        self.log = log
        self.max_delay = max_delay
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._failure: BaseException | None = None
        atexit.register(self.flush)

    def add(self, records: list[dict[str, Any]], *, state_change: bool) -> None:
        self._raise_failure()
        with self._lock:
            self._pending.extend(records)
            if state_change or len(self._pending) >= MAX_BUFFERED:
                self._write_locked()
            elif self._timer is None:
                self._timer = threading.Timer(self.max_delay, self._flush_in_background)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            self._write_locked()

    def close(self) -> None:
        atexit.unregister(self.flush)
        self.flush()
        self._raise_failure()

    def _flush_in_background(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - re-raised on the caller's thread
            self._failure = exc

    def _write_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            self.log.append(batch, durable=True)
        except BaseException:
            self._pending = batch + self._pending  # keep them for the next attempt
            raise

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
