"""Appending to the audit log: chained, sealed, fsynced, marked, and safe under concurrency.

Every append holds an exclusive flock on `audit.lock` (a file that is never replaced) around
read-tail -> write -> fsync -> mark, so concurrent nhidel processes neither lose nor garble
records, and the high-water mark only moves forward. A crash can leave the file ahead of the
mark (the mark is written after the fsync), never behind it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Paths
from ..errors import IntegrityError
from ..fsutil import ensure_private_dir, exclusive_lock, fsync_dir, storage_error
from .records import (
    FORMAT_VERSION,
    GENESIS,
    canonical,
    event,
    line_hash,
    parse_unchecked,
    seal_line,
)
from .segments import rotated_segments, segment_name

if TYPE_CHECKING:
    from ..keystore import KeyStore

MARK = "audit-mark"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AuditKeys:
    """What sealing needs: the audit key, and the keystore that holds the high-water mark."""

    seal_key: bytes
    keystore: KeyStore | None

    def __repr__(self) -> str:  # keep the key out of tracebacks
        return "AuditKeys(...)"


def segment_limit() -> int:
    """Bytes after which the current segment is rotated ($NHIDEL_AUDIT_SEGMENT_BYTES)."""
    raw = os.environ.get("NHIDEL_AUDIT_SEGMENT_BYTES", "")
    return int(raw) if raw.isdigit() and int(raw) >= 4096 else DEFAULT_SEGMENT_BYTES


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    """The writer. Every writer holds the audit key: nhidel's commands all open the keystore
    (a process that cannot, cannot verify either, so it has no decisions to record)."""

    def __init__(self, paths: Paths, keys: AuditKeys) -> None:
        self.paths = paths
        self.path = paths.audit_file
        self.keys = keys

    def append(
        self, events: Iterable[dict[str, Any]], *, durable: bool = True
    ) -> list[dict[str, Any]]:
        """Chain, seal and write `events`; with `durable`, fsync and then move the high-water
        mark in the keystore before returning.

        Raises StorageError if the log cannot be written, and callers then refuse the operation
        the records describe. (A disk that fills mid-line leaves a torn fragment, which the next
        writer ends and records with `log.recovered`.)
        """
        pending = [dict(content, time=content.get("time") or utc_now()) for content in events]
        if not pending:
            return []
        ensure_private_dir(self.path.parent)
        with exclusive_lock(self.paths.audit_lock):
            written = self._write_sealed(pending, self.keys.seal_key, durable=durable)
            if durable and self.keys.keystore is not None:
                last = written[-1]
                self.keys.keystore.write(MARK, {"seq": last["seq"], "hash": last["_hash"]})
                _anchor_in_syslog(last["seq"], last["_hash"])
        for record in written:
            record.pop("_hash")
        return written

    # -- the sealed log -------------------------------------------------------------------

    def _write_sealed(
        self, pending: list[dict[str, Any]], key: bytes, *, durable: bool
    ) -> list[dict[str, Any]]:
        self._rotate_if_full(key)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise storage_error(self.path, exc) from exc
        try:
            seq, prev, fragment = _read_tail(fd)
            if seq == 0:
                seq, prev = self._segment_start()
            chunks = []
            if fragment is not None:
                # A crash tore the last line: end it, and record what was lost in the chain.
                chunks.append(b"\n")
                pending.insert(0, event(
                    "log.recovered", time=utc_now(), fragment_bytes=len(fragment),
                    fragment_sha256=hashlib.sha256(fragment).hexdigest(),
                ))  # fmt: skip
            written = []
            for content in pending:
                seq += 1
                record = {**content, "v": FORMAT_VERSION, "seq": seq, "prev": prev,
                          "nhidel": _version()}  # fmt: skip
                line = seal_line(canonical(record), key)
                prev = line_hash(line)
                chunks.append(line + b"\n")
                written.append({**record, "_hash": prev})
            _write_all(fd, b"".join(chunks))
            if durable:
                os.fsync(fd)
        except OSError as exc:
            raise storage_error(self.path, exc) from exc
        finally:
            os.close(fd)
        return written

    def _segment_start(self) -> tuple[int, str]:
        """For an empty current segment: continue the chain from the newest rotated one."""
        rotated = rotated_segments(self.paths)
        if not rotated:
            return 0, GENESIS
        with rotated[-1].open("rb") as handle:
            seq, prev, _ = _read_tail(handle.fileno())
        return seq, prev

    def _rotate_if_full(self, key: bytes) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < segment_limit() or not _ends_with_newline(self.path, size):
            return  # a torn tail is recovered in this segment first, then it rotates
        target = self.path.with_name(segment_name(_first_seq(self.path)))
        try:
            os.replace(self.path, target)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise storage_error(self.path, exc) from exc
        # The new segment opens with a record naming the one it follows; the chain goes on.
        self._write_sealed(
            [event("log.rotated", time=utc_now(), previous_segment=target.name)],
            key, durable=True,
        )  # fmt: skip


def _anchor_in_syslog(seq: int, digest: str) -> None:
    """With $NHIDEL_AUDIT_SYSLOG set, copy each new head to syslog: an anchor that a restore
    of the keystore and the log from the same old backup cannot roll back."""
    if not os.environ.get("NHIDEL_AUDIT_SYSLOG"):
        return
    import syslog

    syslog.openlog("nhidel", 0, syslog.LOG_AUTH)
    syslog.syslog(syslog.LOG_INFO, f"audit head seq={seq} hash={digest}")


def _version() -> str:
    from .. import __version__

    return __version__


def _ends_with_newline(path: Path, size: int) -> bool:
    with path.open("rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) == b"\n"


def _first_seq(path: Path) -> int:
    """The first record's seq (a crash's fragment may stand before it)."""
    with path.open("rb") as handle:
        for raw in handle:
            record = parse_unchecked(raw.rstrip(b"\n"))
            if record is not None and type(record["seq"]) is int:
                return int(record["seq"])
    raise IntegrityError(f"{path} holds no record", "run nhidel audit verify")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_tail(fd: int) -> tuple[int, str, bytes | None]:
    """The last complete record's (seq, line hash), and any unterminated fragment after it."""
    size = os.lseek(fd, 0, os.SEEK_END)
    window = 4096
    while True:
        start = max(0, size - window)
        tail = os.pread(fd, size - start, start)
        fragment = None
        if not tail.endswith(b"\n") and tail:
            cut = tail.rfind(b"\n") + 1
            fragment, tail = tail[cut:], tail[:cut]
        lines = tail.splitlines()
        # A complete last line needs the newline before it in the window (or the file start).
        if len(lines) >= 2 or start == 0:
            break
        window *= 4
    if not lines:
        return 0, GENESIS, fragment
    last = lines[-1]
    try:
        seq = json.loads(last)["seq"]
        if type(seq) is not int:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(
            "the last record of the audit log is corrupt",
            "run nhidel audit verify, and restore the log from a backup",
        ) from None
    return seq, line_hash(last), fragment
