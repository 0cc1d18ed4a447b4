"""Crash injection for tests/integration/test_crash_harness.py, installed in a child process before
`nhidel.cli.main` runs.

Every durability boundary the command crosses is counted: `os.write`, `os.fsync`,
`os.replace`, `os.rename`, and an SQLite `COMMIT` (through a connection factory, since the
ledger runs with isolation_level=None and sends BEGIN IMMEDIATE/COMMIT itself). With
`mode="count"` the process runs to the end and writes what it crossed (kind and where, as JSON)
to the record file. With `mode="before"` or `"after"` it SIGKILLs itself just before or just
after boundary `target` (1-based); `mode="torn"` writes only the first half of the bytes of
that boundary, when it is an `os.write`, and then SIGKILLs itself (a torn append). SIGKILL
runs no handler, flushes nothing and closes nothing: what is on disk is what a kill -9 leaves.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sqlite3
import sys
from typing import Any

_write = os.write
_fsync = os.fsync
_replace = os.replace
_rename = os.rename
_open = os.open
_close = os.close
_connect = sqlite3.connect

MODES = ("count", "before", "after", "torn")


class _Hook:
    def __init__(self, mode: str, target: int, record: str | None) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        self.mode = mode
        self.target = target
        self.record = record
        self.crossed: list[list[str]] = []

    def cross(self, kind: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        number = len(self.crossed) + 1
        self.crossed.append([kind, _where()])
        if number == self.target:
            if self.mode == "before":
                _die()
            if self.mode == "torn" and kind == "write":
                fd, data = args[0], memoryview(args[1])
                if len(data) > 1:
                    call(fd, data[: len(data) // 2])
                _die()
        result = call(*args, **kwargs)
        if number == self.target and self.mode in ("after", "torn"):
            _die()
        return result

    def save(self) -> None:
        if self.record is None:
            return
        data = json.dumps({"mode": self.mode, "boundaries": self.crossed}).encode()
        fd = _open(self.record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while data:
                data = data[_write(fd, data) :]
        finally:
            _close(fd)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _where() -> str:
    """The innermost nhidel frame that led here (for the harness's messages)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if f"{os.sep}nhidel{os.sep}" in name:
            short = name[name.rindex(f"{os.sep}nhidel{os.sep}") + 1 :]
            return f"{short}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


def install(mode: str, target: int = 0, record: str | None = None) -> None:
    """Wrap the boundaries; from now on every one of them counts."""
    hook = _Hook(mode, target, record)

    def write(fd: int, data: Any) -> int:
        return int(hook.cross("write", _write, fd, data))

    def fsync(fd: Any) -> None:
        hook.cross("fsync", _fsync, fd)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        hook.cross("replace", _replace, src, dst, **kwargs)

    def rename(src: Any, dst: Any, **kwargs: Any) -> None:
        hook.cross("rename", _rename, src, dst, **kwargs)

    class Connection(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if isinstance(sql, str) and sql.strip().upper() in ("COMMIT", "END"):
                return hook.cross("commit", super().execute, sql, *args)  # type: ignore[no-any-return]
            return super().execute(sql, *args)

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", Connection)
        return _connect(*args, **kwargs)

    os.write = write
    os.fsync = fsync
    os.replace = replace
    os.rename = rename
    sqlite3.connect = connect  # type: ignore[assignment]
    # Registered before nhidel registers anything, so it runs last: the count includes what
    # nhidel's own exit handlers write (the audit group commit).
    atexit.register(hook.save)
