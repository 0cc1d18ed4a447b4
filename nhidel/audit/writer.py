"""Appending to the audit log: chained, sealed, fsynced, marked, and never behind the mark.

Every append holds an exclusive flock on `audit.lock` (a file that is never replaced) for a
whole `Session`: read the high-water mark from the keystore, check the log against it, write,
fsync, and move the mark. So concurrent nhidel processes neither lose nor garble records, and
the mark only moves forward.

The mark (`seq`, `hash`, and `state_seq`, the last record whose effect the ledger holds) is
the anchor an agent cannot write. A log that ends before the mark, or whose record at the
mark's seq is another one, was truncated, rolled back or replaced: nothing is written on top
of it (that would launder the loss) until `nhidel repair --accept-loss` says so, sealed. Records
after the mark are what a crash left between the fsync and the mark (or a non-durable append):
they are checked (sealed, chained) and handed to the caller as `residue`, whose state changes
the caller finishes before anything else is written (see nhidel/state.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nhidel.audit.records import (
    FORMAT_VERSION,
    GENESIS,
    BadRecord,
    canonical,
    event,
    line_hash,
    open_line,
    parse_unchecked,
    seal_line,
)
from nhidel.audit.segments import rotated_segments, segment_name
from nhidel.errors import IntegrityError, UsageError
from nhidel.fsutil import (
    ensure_private_dir,
    exclusive_lock,
    fsync_dir,
    open_private_append,
    storage_error,
)
from nhidel.paths import Paths

if TYPE_CHECKING:
    from nhidel.keys.keystore import KeyStore

MARK = "audit-mark"
# Ends a torn fragment's line: JSON followed by it never parses, so no reader takes the
# fragment's bytes (whatever they claim) for a record.
TORN_MARK = b" <torn>"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
# Smaller would rotate on nearly every write; larger, and the checks that read a segment whole
# (the records after the mark, pruning) would hold too much in memory.
MIN_SEGMENT_BYTES = 4096
MAX_SEGMENT_BYTES = 1 << 30
RECOVER_HINT = (
    "restore the missing files from a backup; if they are lost for good, run "
    "nhidel repair --accept-loss (it records the loss, sealed)"
)


@dataclass(frozen=True, slots=True)
class AuditKeys:
    """What sealing needs: the audit key, and the keystore that holds the high-water mark."""

    seal_key: bytes
    keystore: KeyStore | None

    def __repr__(self) -> str:  # keep the key out of tracebacks
        return "AuditKeys(...)"

    @classmethod
    def of(cls, keystore: KeyStore) -> AuditKeys:
        """The audit key (from the pinned trust entry) and where the high-water mark goes."""
        from nhidel.keys.principal import load_trust

        return cls(load_trust(keystore).audit_key, keystore)


@dataclass(frozen=True, slots=True)
class Mark:
    """The keystore's high-water mark: the last record known durable, and the last record
    whose effect the ledger had committed when the mark moved (`state_seq`)."""

    seq: int
    hash: str
    state_seq: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "state_seq": self.state_seq}


def read_mark(keystore: KeyStore) -> Mark | None:
    """The mark, or None before the first record; a mark of the wrong shape is exit 5."""
    entry = keystore.read(MARK)
    if entry is None:
        return None
    seq, digest, state_seq = entry.get("seq"), entry.get("hash"), entry.get("state_seq", 0)
    if (
        type(seq) is not int
        or type(state_seq) is not int
        or not isinstance(digest, str)
        or not 0 <= state_seq <= seq
    ):
        raise IntegrityError(
            f"the audit high-water mark in {keystore.description} is malformed", RECOVER_HINT
        )
    return Mark(seq, digest, state_seq)


def log_head(paths: Paths) -> int:
    """The seq of the last complete record, read without the lock (0 for no log)."""
    for segment in [paths.audit_file, *reversed(rotated_segments(paths))]:
        try:
            fd = os.open(segment, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise IntegrityError(
                f"cannot read the audit log {segment}: {exc.strerror}",
                "it should be a regular file; " + RECOVER_HINT,
            ) from None
        try:
            seq = _read_tail(fd)[0]
        finally:
            os.close(fd)
        if seq:
            return seq
    return 0


def segment_limit() -> int:
    """Bytes after which the current segment is rotated ($NHIDEL_AUDIT_SEGMENT_BYTES): the
    default when unset or empty, the value when in range, else a UsageError naming both."""
    raw = os.environ.get("NHIDEL_AUDIT_SEGMENT_BYTES", "").strip()
    if not raw:
        return DEFAULT_SEGMENT_BYTES
    if raw.isascii() and raw.isdigit() and len(raw) <= 10:
        if MIN_SEGMENT_BYTES <= int(raw) <= MAX_SEGMENT_BYTES:
            return int(raw)
    raise UsageError(
        f"NHIDEL_AUDIT_SEGMENT_BYTES is {raw!r}: give a whole number of bytes from "
        f"{MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES} (1 GiB)",
        "e.g. NHIDEL_AUDIT_SEGMENT_BYTES=1048576 for 1 MiB, or unset it for the default 64 MiB",
    )


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class Session:
    """The log, locked and checked against the mark, for one writer.

    `residue` holds the sealed records after the mark, oldest first. `state_seq` is raised by
    a caller that committed a ledger change for records it wrote; the mark carries it.
    """

    log: AuditLog
    fd: int
    mark: Mark | None
    head_seq: int
    head_hash: str
    residue: list[dict[str, Any]]
    state_seq: int
    durable: bool = True
    segment_bytes: int = DEFAULT_SEGMENT_BYTES  # rotate past this size
    written: list[dict[str, Any]] = field(default_factory=list)
    # Names this session in its records: a crash leaves one session's records after the mark;
    # several sessions' state changes there mean the keystore was put back
    # (nhidel.integrity.state).
    sid: str = field(default_factory=lambda: os.urandom(4).hex())

    def write(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chain, seal, append and (when durable) fsync `events`; return them as records.

        `events` may be an iterator: it is consumed one event at a time as they are sealed, so
        that the group commit can let go of the GIL between them (see audit/decision_log.py).
        """
        contents = iter(events)
        first = next(contents, None)
        if first is None:
            return []
        key = self.log.keys.seal_key
        chunks = []
        lead = []
        torn, self.log.torn = self.log.torn, None
        if torn is not None:
            # A crash tore the last line: end it so that it can never parse as a record (a
            # reader without the key cannot check seals), and seal what was lost.
            chunks.append(TORN_MARK + b"\n")
            lead.append(event(
                "log.recovered", time=utc_now(), fragment_bytes=len(torn),
                fragment_sha256=hashlib.sha256(torn).hexdigest(),
            ))  # fmt: skip
        elif self._full():  # (a torn segment is ended before it rotates)
            self._rotate()
            lead.append(event("log.rotated", time=utc_now(),
                              previous_segment=self.log.rotated_to))  # fmt: skip
        records = []
        seq, prev = self.head_seq, self.head_hash
        for content in itertools.chain(lead, (first,), contents):
            seq += 1
            record = {**content, "time": content.get("time") or utc_now(), "v": FORMAT_VERSION,
                      "seq": seq, "prev": prev, "nhidel": _version(), "sid": self.sid}  # fmt: skip
            line = seal_line(canonical(record), key)
            prev = line_hash(line)
            chunks.append(line + b"\n")
            records.append(record)
        try:
            _write_all(self.fd, b"".join(chunks))
            if self.durable:
                os.fsync(self.fd)
        except OSError as exc:
            raise storage_error(self.log.path, exc) from exc
        self.head_seq, self.head_hash = seq, prev
        self.written.extend(records)
        return records

    def _full(self) -> bool:
        size = os.fstat(self.fd).st_size
        return size >= self.segment_bytes and self.head_seq > 0

    def _rotate(self) -> None:
        path = self.log.path
        target = path.with_name(segment_name(_first_seq(path)))
        try:
            os.replace(path, target)
            fsync_dir(path.parent)
            os.close(self.fd)
            self.fd = _open_log(path)
        except OSError as exc:
            raise storage_error(path, exc) from exc
        self.log.rotated_to = target.name


class AuditLog:
    """The writer. Every writer holds the audit key: nhidel's commands all open the keystore
    (a process that cannot, cannot verify either, so it has no decisions to record)."""

    def __init__(
        self,
        paths: Paths,
        keys: AuditKeys,
        *,
        finish_residue: Callable[[Session], None] | None = None,
    ) -> None:
        self.paths = paths
        self.path = paths.audit_file
        self.keys = keys
        # Called, with the session, when the records after the mark include a state change
        # (nhidel.integrity.state finishes it in the ledger). Without it such a log is refused.
        self.finish_residue = finish_residue
        self.rotated_to = ""
        self.torn: bytes | None = None  # an unterminated fragment the next write ends
        self.loss: str | None = None  # what an accept_loss session found wrong

    @contextmanager
    def session(self, *, durable: bool = True, accept_loss: bool = False) -> Iterator[Session]:
        """Hold the log for one writer; on a clean exit, move the mark past what was written
        (and past any residue, which the caller has dealt with).

        `accept_loss` (only `nhidel repair --accept-loss`): a log behind the mark, or not the
        one it names, is written on anyway; `self.loss` says what was wrong, and the caller
        seals that in the log before the mark moves to the new head.
        """
        segment_bytes = segment_limit()  # a bad setting is refused before anything is written
        ensure_private_dir(self.path.parent)
        keystore = self.keys.keystore
        self.loss = None
        with exclusive_lock(self.paths.audit_lock):
            mark = read_mark(keystore) if keystore is not None else None
            fd = _open_log(self.path)
            try:
                try:
                    head_seq, head_hash, residue = self._check_against(fd, mark, keystore is None)
                except IntegrityError as lost:
                    if not accept_loss:
                        raise
                    self.loss = lost.message
                    head_seq, head_hash, residue = self._check_against(fd, mark, True)
                session = Session(self, fd, mark, head_seq, head_hash, residue,
                                  mark.state_seq if mark else 0, durable,
                                  segment_bytes)  # fmt: skip
                yield session
                fd = session.fd
                moved = session.head_seq != (mark.seq if mark else 0)
                if (
                    durable
                    and keystore is not None
                    and (moved or session.state_seq != (mark.state_seq if mark else 0))
                ):
                    new = Mark(session.head_seq, session.head_hash, session.state_seq)
                    keystore.write(MARK, new.to_json())
                    _anchor_in_syslog(new.seq, new.hash)
            finally:
                os.close(fd)

    def append(
        self, events: Iterable[dict[str, Any]], *, durable: bool = True
    ) -> list[dict[str, Any]]:
        """Chain, seal and write `events`; with `durable`, fsync and then move the high-water
        mark in the keystore before returning.

        Raises StorageError if the log cannot be written, and callers then refuse the operation
        the records describe; IntegrityError if the log is behind the mark.
        """
        with self.session(durable=durable) as session:
            if session.residue and self.finish_residue is not None:
                self.finish_residue(session)
            elif any(r.get("event") in STATE_EVENTS for r in session.residue):
                raise IntegrityError(
                    "the audit log holds a change that was interrupted before it was finished",
                    "run nhidel repair",
                )
            return session.write(events)

    # -- the log against the mark ---------------------------------------------------------

    def _check_against(
        self, fd: int, mark: Mark | None, unmarked: bool
    ) -> tuple[int, str, list[dict[str, Any]]]:
        """(head seq, head hash, sealed records after the mark), or IntegrityError when the
        log is behind the mark or is not the log the mark names. `unmarked`: a writer with no
        keystore (tests of the log alone), which has no mark to check against."""
        seq, digest, fragment = _read_tail(fd)
        if seq == 0:
            seq, digest = self._segment_start()
        residue = [] if unmarked else self._behind_or_after(mark, seq, digest)
        self.torn = None
        if fragment is not None:  # only once the log is known not to be behind the mark
            seq, digest = self._end_fragment(fd, fragment, seq, digest)
        return seq, digest, residue

    def _behind_or_after(self, mark: Mark | None, seq: int, digest: str) -> list[dict[str, Any]]:
        if mark is None:
            # Before the first mark (or a crash right after the first records): every record
            # is residue, checked from the start of the chain. The mark itself cannot be
            # removed without the keystore.
            mark = Mark(0, GENESIS)
        if seq < mark.seq:
            raise IntegrityError(
                f"the audit log ends at seq {seq} but the high-water mark in "
                f"{self._keystore_name()} is seq {mark.seq}: records were deleted, or the log "
                "was rolled back",
                RECOVER_HINT,
            )
        if seq == mark.seq:
            if digest != mark.hash:
                raise _replaced(mark, self._keystore_name())
            return []
        return self._after_mark(mark)

    def _after_mark(self, mark: Mark) -> list[dict[str, Any]]:
        """The sealed, chained records after the mark (a crash's residue), oldest first."""
        key = self.keys.seal_key
        found: list[bytes] = []
        for segment in reversed([*rotated_segments(self.paths), self.path]):
            try:
                data = segment.read_bytes()
            except FileNotFoundError:
                continue
            lines = [ln for ln in data.split(b"\n") if ln][::-1]
            for line in lines:
                record = parse_unchecked(line)
                if record is None or type(record.get("seq")) is not int:
                    continue  # a recovered crash fragment: the record after it explains it
                if record["seq"] <= mark.seq:
                    if record["seq"] != mark.seq or line_hash(line) != mark.hash:
                        raise _replaced(mark, self._keystore_name())
                    return self._chained(mark, found[::-1], key)
                found.append(line)
        if mark.seq == 0:
            return self._chained(mark, found[::-1], key)
        raise _replaced(mark, self._keystore_name())

    @staticmethod
    def _chained(mark: Mark, lines: list[bytes], key: bytes) -> list[dict[str, Any]]:
        records = []
        seq, prev = mark.seq, mark.hash
        for line in lines:
            try:
                record = open_line(line, key)
            except BadRecord as bad:
                raise IntegrityError(
                    f"a record after the audit high-water mark is not sealed ({bad.why})",
                    "run nhidel audit verify; " + RECOVER_HINT,
                ) from None
            if record["seq"] != seq + 1 or record.get("prev") != prev:
                raise IntegrityError(
                    f"the records after the audit high-water mark (seq {mark.seq}) are not "
                    "chained to it",
                    "run nhidel audit verify; " + RECOVER_HINT,
                )
            seq, prev = record["seq"], line_hash(line)
            records.append(record)
        return records

    def _end_fragment(self, fd: int, fragment: bytes, seq: int, digest: str) -> tuple[int, str]:
        """An unterminated last line. A sealed record of the chain that lost only its newline
        is kept as a record. Anything else can only be a torn write: the next write ends it
        and seals what was lost (`log.recovered`); it is never read as a record."""
        try:
            record = open_line(fragment, self.keys.seal_key)
        except BadRecord:
            record = None
        if record is not None and record["seq"] == seq + 1 and record.get("prev") == digest:
            try:
                _write_all(fd, b"\n")
            except OSError as exc:
                raise storage_error(self.path, exc) from exc
            return seq + 1, line_hash(fragment)
        self.torn = fragment
        return seq, digest

    def _segment_start(self) -> tuple[int, str]:
        """For an empty current segment: continue the chain from the newest rotated one."""
        rotated = rotated_segments(self.paths)
        if not rotated:
            return 0, GENESIS
        fd = os.open(rotated[-1], os.O_RDONLY | os.O_NOFOLLOW)
        try:
            seq, digest, _ = _read_tail(fd)
        finally:
            os.close(fd)
        return seq, digest

    def _keystore_name(self) -> str:
        keystore = self.keys.keystore
        return keystore.description if keystore is not None else "the keystore"


# Events whose effect is in the ledger, config.toml or the keystore, not only in the log: a
# crash between their record and that effect leaves work for nhidel.integrity.state to finish.
STATE_EVENTS = frozenset({
    "key.created", "key.rotated", "agent.added", "agent.removed", "grant.issued",
    "grant.revoked", "grant.used", "state.repaired", "log.loss_accepted", "config.updated",
    "agent.updated", "secret.added", "secret.removed", "mcp.added", "mcp.removed", "route.added",
    "route.removed", "approval.used",
})  # fmt: skip


def recovers(record: dict[str, Any], line: bytes) -> bool:
    """Whether `record` is the `log.recovered` that sealed the torn fragment `line` (as the log
    holds it: ended by TORN_MARK, which logs written before the mark existed lack)."""
    fragment = line.removesuffix(TORN_MARK)
    return (
        record.get("event") == "log.recovered"
        and record.get("fragment_bytes") == len(fragment)
        and record.get("fragment_sha256") == hashlib.sha256(fragment).hexdigest()
    )


def _replaced(mark: Mark, where: str) -> IntegrityError:
    return IntegrityError(
        f"record {mark.seq} of the audit log is not the one the high-water mark in {where} "
        "names: the log was replaced by another or an older copy",
        RECOVER_HINT,
    )


def _open_log(path: Path) -> int:
    return open_private_append(path)  # never through a link or anything planted


def _anchor_in_syslog(seq: int, digest: str) -> None:
    """With $NHIDEL_AUDIT_SYSLOG set, copy each new head to syslog: an anchor that a restore
    of the keystore and the log from the same old backup cannot roll back."""
    if not os.environ.get("NHIDEL_AUDIT_SYSLOG"):
        return
    import syslog

    syslog.openlog("nhidel", 0, syslog.LOG_AUTH)
    syslog.syslog(syslog.LOG_INFO, f"audit head seq={seq} hash={digest}")


def _version() -> str:
    from nhidel import __version__

    return __version__


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
