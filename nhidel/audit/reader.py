"""Reading the audit log without a lock: every segment in order, and following new records.

Readers never block writers. A line without its newline is an append in flight (or a crash's
torn fragment), so it is never returned as a record.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import Paths
from ..errors import IntegrityError
from ..fsutil import open_private_read
from .records import parse_unchecked
from .segments import all_segments, rotated_segments, segment_first_seq

FOLLOW_INTERVAL = 0.1  # seconds between polls: well under the 250 ms lag goal


def lines(paths: Paths) -> Iterator[tuple[Path, int, bytes, bool]]:
    """(segment, line number, bytes without newline, complete?) for every line, in order."""
    for segment in all_segments(paths):
        try:
            handle = os.fdopen(open_private_read(segment), "rb")
        except FileNotFoundError:
            continue  # rotated away between listing and opening: it is in the next name
        except OSError as exc:
            raise IntegrityError(
                f"cannot read the audit log segment {segment}: {exc.strerror}",
                "it should be a regular file; restore it from a backup",
            ) from None
        with handle:
            for number, raw in enumerate(handle, start=1):
                complete = raw.endswith(b"\n")
                yield segment, number, raw.rstrip(b"\n") if complete else raw, complete


def records(paths: Paths) -> Iterator[dict[str, Any]]:
    """Every complete record, unchecked (use `audit verify` to check them)."""
    for _, _, raw, complete in lines(paths):
        record = parse_unchecked(raw) if complete else None
        if record is not None:
            yield record


def follow(
    paths: Paths,
    *,
    start_after: int,
    stop: Callable[[], bool] = lambda: False,
    interval: float = FOLLOW_INTERVAL,
) -> Iterator[dict[str, Any]]:
    """Yield records with seq > `start_after` as they are appended, across rotations."""
    last = start_after
    handle = None
    inode = None
    buffer = b""
    while not stop():
        if handle is None:
            try:
                handle = os.fdopen(open_private_read(paths.audit_file), "rb")
                inode = os.fstat(handle.fileno()).st_ino
                buffer = b""
            except FileNotFoundError:
                time.sleep(interval)
                continue
        rotated = _rotated(paths.audit_file, inode)
        # Read after checking for rotation, so nothing appended before the rename is missed.
        chunk = handle.read()
        if chunk:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                record = parse_unchecked(raw)
                if record is not None and type(record.get("seq")) is int and record["seq"] > last:
                    last = record["seq"]
                    yield record
        if rotated:
            handle.close()
            handle = None
            # Several rotations may have happened since the last poll: read what they moved.
            for record in _rotated_records_after(paths, last):
                last = record["seq"]
                yield record
        elif not chunk:
            time.sleep(interval)
    if handle is not None:
        handle.close()


def _rotated_records_after(paths: Paths, last: int) -> Iterator[dict[str, Any]]:
    segments = rotated_segments(paths)
    firsts = [segment_first_seq(p) for p in segments] + [None]
    for segment, following in zip(segments, firsts[1:], strict=True):
        if following is not None and following <= last + 1:
            continue  # everything in it is at or before `last`
        with segment.open("rb") as handle:
            for raw in handle:
                record = parse_unchecked(raw.rstrip(b"\n")) if raw.endswith(b"\n") else None
                if record is not None and type(record["seq"]) is int and record["seq"] > last:
                    last = record["seq"]
                    yield record


def _rotated(path: Path, inode: int | None) -> bool:
    try:
        return os.stat(path).st_ino != inode
    except FileNotFoundError:
        return False
