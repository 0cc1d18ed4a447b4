"""Reading the audit log without a lock: every segment in order, and following new records.

Readers never block writers. A line without its newline is an append in flight (or a crash's
torn fragment), so it is never returned as a record.

Given the audit key, `records` and `follow` return only sealed records: any other complete line
(forged, planted, a torn fragment that recovery ended) is passed over and counted, never
returned. Without the key they return what parses as a record, unchecked (`audit verify`
checks it); such a record may have any shape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nhidel.audit.records import BadRecord, open_line, parse_unchecked
from nhidel.audit.segments import all_segments, rotated_segments, segment_first_seq
from nhidel.errors import IntegrityError
from nhidel.fsutil import open_private_read
from nhidel.paths import Paths

FOLLOW_INTERVAL = 0.1  # seconds between polls: well under the 250 ms lag goal

_SEAL_AT = slice(-66, -2)  # where a sealed line (checked: it ends `"seal":"<64 hex>"}`) holds it

Skipped = Callable[[int], None]  # told how many complete lines were not sealed records


def lines(paths: Paths) -> Iterator[tuple[Path, int, bytes, bool]]:
    """(segment, line number, bytes without newline, complete?) for every line, in order."""
    for segment in all_segments(paths):
        handle = _open_segment(segment)
        if handle is None:
            continue
        with handle:
            for number, raw in enumerate(handle, start=1):
                complete = raw.endswith(b"\n")
                yield segment, number, raw.rstrip(b"\n") if complete else raw, complete


def lines_backwards(paths: Paths) -> Iterator[tuple[Path, bytes, bool]]:
    """(segment, bytes without newline, complete?) for every line, newest first: a reader that
    stops early reads only the end of the log."""
    for segment in reversed(all_segments(paths)):
        handle = _open_segment(segment)
        if handle is None:
            continue
        with handle:
            for raw, complete in _from_the_end(handle.fileno()):
                yield segment, raw, complete


_BACKWARDS_BLOCK = 1 << 16


def _from_the_end(fd: int) -> Iterator[tuple[bytes, bool]]:
    end = os.fstat(fd).st_size
    unread = b""  # the start of the file's next line back, read but not yet whole
    last = True  # the next line given is the file's last (complete only if a newline ends it)
    while end > 0:
        start = max(0, end - _BACKWARDS_BLOCK)
        parts = (os.pread(fd, end - start, start) + unread).split(b"\n")
        end = start
        unread = parts.pop(0) if start else b""
        for raw in reversed(parts):
            if last:
                last = False
                if raw:
                    yield raw, False
                continue
            yield raw, True


@dataclass(slots=True)
class Position:
    """How far `records` read the current file: its inode and the bytes of its complete lines
    (so `follow` goes on from there, and sees each line once)."""

    inode: int | None = None
    offset: int = 0


def records(
    paths: Paths,
    key: bytes | None = None,
    *,
    skipped: Skipped | None = None,
    end: Position | None = None,
) -> Iterator[dict[str, Any]]:
    """Every complete record: with the audit `key`, only sealed ones (how many other complete
    lines there were goes to `skipped`, once, at the end); without it, unchecked."""
    reading = _Reading(key)
    for segment in all_segments(paths):
        handle = _open_segment(segment)
        if handle is None:
            continue
        current = end is not None and segment == paths.audit_file
        with handle:
            if current and end is not None:
                end.inode, end.offset = os.fstat(handle.fileno()).st_ino, 0
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # an append in flight (or a torn fragment): the last line
                if current and end is not None:
                    end.offset += len(raw)
                record = reading.record(raw[:-1])
                if record is not None:
                    yield record
    if reading.unsealed and skipped is not None:
        skipped(reading.unsealed)


def follow(
    paths: Paths,
    *,
    start_after: int,
    stop: Callable[[], bool] = lambda: False,
    interval: float = FOLLOW_INTERVAL,
    key: bytes | None = None,
    skipped: Skipped | None = None,
    start: Position | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield records with seq > `start_after` as they are appended, across rotations.

    With the audit `key`, only sealed records; the other complete lines are counted to
    `skipped` as they are read (once per poll). `start` is where `records` stopped reading:
    what it read is not read again.
    """
    reading = _Reading(key)
    last = start_after
    handle: IO[bytes] | None = None
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
            if start is not None and start.inode is not None:
                if start.inode == inode:
                    handle.seek(start.offset)
                else:  # rotated since `records` read it: what followed is in the segments
                    for moved in _rotated_records_after(paths, last, reading, start):
                        last = moved["seq"]
                        yield moved
                start = None
        rotated = _rotated(paths.audit_file, inode)
        # Read after checking for rotation, so nothing appended before the rename is missed.
        chunk = handle.read()
        if chunk:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                record = reading.record(raw)
                if record is not None and type(record.get("seq")) is int and record["seq"] > last:
                    if record["seq"] > last + 1:
                        # A gap: the file opened after a rotation was itself rotated away
                        # (and another begun) before it was opened. Its records are in the
                        # rotated segments now: read them first.
                        for moved in _rotated_records_after(paths, last, reading, _NOWHERE):
                            if moved["seq"] >= record["seq"]:
                                break
                            last = moved["seq"]
                            yield moved
                    last = record["seq"]
                    yield record
        if rotated:
            # The renamed file was read to its end (no one appends to it any more).
            read = Position(inode, handle.tell() - len(buffer))
            handle.close()
            handle = None
            # Several rotations may have happened since the last poll: read what they moved.
            for moved in _rotated_records_after(paths, last, reading, read):
                last = moved["seq"]
                yield moved
        elif not chunk:
            time.sleep(interval)
        if reading.unsealed:
            if skipped is not None:
                skipped(reading.unsealed)
            reading.unsealed = 0
    if handle is not None:
        handle.close()


class _Reading:
    """One line to a record: checked against its seal when there is a key (counting the
    lines that are not sealed records), else parsed unchecked."""

    __slots__ = ("key", "unsealed")

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.unsealed = 0

    def record(self, raw: bytes) -> dict[str, Any] | None:
        if self.key is None:
            return parse_unchecked(raw)
        try:
            record = open_line(raw, self.key)
        except BadRecord:
            self.unsealed += 1
            return None
        record["seal"] = raw[_SEAL_AT].decode("ascii")  # the record as the line holds it
        return record


def _open_segment(segment: Path) -> IO[bytes] | None:
    try:
        return os.fdopen(open_private_read(segment), "rb")
    except FileNotFoundError:
        return None  # rotated away between listing and opening: it is in the next name
    except OSError as exc:
        raise IntegrityError(
            f"cannot read the audit log segment {segment}: {exc.strerror}",
            "it should be a regular file; restore it from a backup",
        ) from None


def _rotated_records_after(
    paths: Paths, last: int, reading: _Reading, read: Position
) -> Iterator[dict[str, Any]]:
    """Records after `last` in the rotated segments; of the file `read` names, only what
    follows its first `offset` bytes (the rest was read before)."""
    segments = rotated_segments(paths)
    firsts = [segment_first_seq(p) for p in segments] + [None]
    for segment, following in zip(segments, firsts[1:], strict=True):
        if following is not None and following <= last + 1:
            continue  # everything in it is at or before `last`
        handle = _open_segment(segment)
        if handle is None:
            continue
        with handle:
            if os.fstat(handle.fileno()).st_ino == read.inode:
                handle.seek(read.offset)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break
                record = reading.record(raw[:-1])
                if record is not None and type(record["seq"]) is int and record["seq"] > last:
                    last = record["seq"]
                    yield record


_NOWHERE = Position(None, 0)  # no file read yet: every rotated segment is read whole


def _rotated(path: Path, inode: int | None) -> bool:
    try:
        return os.stat(path).st_ino != inode
    except FileNotFoundError:
        return False
