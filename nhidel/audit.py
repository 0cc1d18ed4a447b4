"""The audit log: append-only JSON Lines, one event a line, each record chained to the last.

Every record names its sequence number and the SHA-256 of the previous record, and carries its
own hash, so an edit, a deletion, an insertion or a reordering breaks the chain. Appends take an
exclusive flock on a separate lock file, read the tail, write whole lines and (for state changes)
fsync before returning, so concurrent nhidel processes neither lose nor garble records.

Never put a token or a secret in a record: callers pass claims and ids only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from . import __version__
from .config import Paths
from .errors import IntegrityError
from .fsutil import ensure_private_dir, exclusive_lock, storage_error

FORMAT_VERSION = 1
GENESIS = "0" * 64
# Enough to hold any single record; the tail read looks back this far for the last line.
_TAIL_WINDOW = 64 * 1024

EVENTS = (
    "key.created",
    "key.rotated",
    "agent.added",
    "agent.removed",
    "grant.issued",
    "grant.revoked",
    "grant.used",
    "verify.allowed",
    "verify.denied",
    "status.published",
    "log.recovered",
    "log.rotated",
    "log.pruned",
)


def canonical(record: Mapping[str, Any]) -> bytes:
    """The one serialisation that is hashed and written: sorted keys, no spaces, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def event(name: str, **fields: Any) -> dict[str, Any]:
    """A record's content before it is chained: the event name and what it is about."""
    if name not in EVENTS:
        raise ValueError(f"unknown audit event {name!r}")
    base: dict[str, Any] = {
        "event": name,
        "principal": None,
        "agent": None,
        "grant": None,
        "scopes": None,
        "expires_at": None,
        "reason": None,
    }
    base.update(fields)
    return base


class AuditLog:
    def __init__(self, paths: Paths) -> None:
        self.path = paths.audit_file
        self.lock = paths.audit_lock

    def append(
        self, events: Iterable[dict[str, Any]], *, durable: bool = True
    ) -> list[dict[str, Any]]:
        """Chain and write `events` as one batch; with `durable`, fsync before returning.

        Raises StorageError (and writes nothing) if the log cannot be written, so callers can
        refuse the operation the record describes.
        """
        pending = list(events)
        if not pending:
            return []
        ensure_private_dir(self.path.parent)
        with exclusive_lock(self.lock):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                raise storage_error(self.path, exc) from exc
            try:
                seq, prev, fragment = _read_tail(fd)
                lines = []
                if fragment is not None:
                    # A crash left a torn last line: end it, and say so in the chain.
                    lines.append(b"\n")
                    pending.insert(
                        0,
                        event(
                            "log.recovered",
                            fragment_bytes=len(fragment),
                            fragment_sha256=hashlib.sha256(fragment).hexdigest(),
                        ),
                    )
                written = []
                now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                for content in pending:
                    seq += 1
                    record = {
                        **content,
                        "v": FORMAT_VERSION,
                        "seq": seq,
                        "time": now,
                        "nhidel": __version__,
                        "prev": prev,
                    }
                    record["hash"] = prev = record_hash(record)
                    lines.append(canonical(record) + b"\n")
                    written.append(record)
                _write_all(fd, b"".join(lines))
                if durable:
                    os.fsync(fd)
            except OSError as exc:
                raise storage_error(self.path, exc) from exc
            finally:
                os.close(fd)
        return written


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        count = os.write(fd, view)
        view = view[count:]


def _read_tail(fd: int) -> tuple[int, str, bytes | None]:
    """The last record's (seq, hash), and any unterminated fragment after it."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return 0, GENESIS, None
    start = max(0, size - _TAIL_WINDOW)
    os.lseek(fd, start, os.SEEK_SET)
    tail = os.read(fd, size - start)
    fragment = None
    if not tail.endswith(b"\n"):
        cut = tail.rfind(b"\n") + 1
        fragment, tail = tail[cut:], tail[:cut]
    lines = tail.splitlines()
    if not lines:
        return 0, GENESIS, fragment
    try:
        last = json.loads(lines[-1])
        return int(last["seq"]), str(last["hash"]), fragment
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(
            "the last record of the audit log is corrupt",
            "run nhidel audit verify, and restore the log from a backup",
        ) from None
