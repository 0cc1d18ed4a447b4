"""What the `nhidel audit` commands do: check the log, show its last records, find a token's
records, and prune old segments (logging the pruning, so it is never mistaken for deletion)."""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from nhidel.audit.reader import follow, records
from nhidel.audit.records import EVENTS, event, line_hash, token_fingerprint
from nhidel.audit.segments import rotated_segments
from nhidel.audit.writer import AuditKeys, read_mark
from nhidel.errors import UsageError
from nhidel.fsutil import fsync_dir, storage_error
from nhidel.integrity.checker import MARK_PLACE, Problem, Report, check_log
from nhidel.keys.keystore import KeyStore
from nhidel.ledger.store import Ledger
from nhidel.paths import Paths


def verify_log(paths: Paths, keystore: KeyStore) -> Report:
    """Check every record, the chain, the seals, the high-water mark and the ledger."""
    from nhidel.keys.principal import load_trust

    mark = read_mark(keystore)  # before the log: an append in flight only makes it longer
    pinned = None if mark is None else mark.to_json()
    trust = load_trust(keystore)
    key, kids = trust.audit_key, set(trust.keys)
    if not paths.ledger_file.exists():
        report = check_log(paths, key, pinned, cast("Ledger", _NoLedger()), kids)
    else:
        with Ledger(paths) as ledger:
            report = check_log(paths, key, pinned, ledger, kids)
    if report.ok and mark is None and report.records:
        report.problem = Problem(MARK_PLACE, 0, None, "deleted: the keystore holds no high-water "
                                 "mark for a log of records (the mark was removed)")  # fmt: skip
    return report


class _NoLedger:
    """ledger.db missing: a ledger without rows or sealed state, so what the log holds is
    reported as lost."""

    def get(self, grant_id: str) -> None:
        return None

    def check_pages(self) -> None:
        return None

    def sealed_state(self) -> None:
        return None

    def all_rows(self) -> Iterator[Any]:
        return iter(())


@dataclass(frozen=True, slots=True)
class TailFilter:
    agent: str | None = None
    event: str | None = None
    since: float | None = None  # Unix seconds

    def __post_init__(self) -> None:
        if self.event is not None and self.event not in EVENTS:
            raise UsageError(f"unknown event {self.event!r}", "events: " + ", ".join(EVENTS))

    def __call__(self, record: dict[str, Any]) -> bool:
        if self.agent is not None and record.get("agent") != self.agent:
            return False
        if self.event is not None and record.get("event") != self.event:
            return False
        return self.since is None or _unix_time(record.get("time")) >= self.since


def _unix_time(stamp: object) -> float:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("-inf")


# The most records `audit tail -n` keeps in memory (a deque sized by a C ssize_t, and far
# more than any log holds).
MAX_TAIL = 1_000_000_000


def tail(
    paths: Paths,
    count: int,
    wanted: TailFilter,
    *,
    keep_following: bool = False,
    stop: Callable[[], bool] = lambda: False,
    warn: Callable[[str], None] = lambda _: None,
) -> Iterator[dict[str, Any]]:
    """The last `count` matching records, then (with `keep_following`) every new match.

    When the keystore opens without asking for a passphrase, only sealed records are shown:
    the lines that are not (forged, planted, a torn fragment) are skipped, and `warn` is told
    how many (with -f, as they come). Otherwise records are shown unchecked, after a warning.
    """
    from nhidel.audit.reader import Position
    from nhidel.errors import KeystoreError
    from nhidel.keys.keystore import open_keystore
    from nhidel.keys.principal import load_trust

    if count < 0:
        raise UsageError("-n must be zero or more", "e.g. -n 20")
    if count > MAX_TAIL:
        raise UsageError(f"-n {count} is too large", f"give at most {MAX_TAIL}, e.g. -n 20")
    try:
        key: bytes | None = load_trust(open_keystore(paths)).audit_key  # never prompts
    except KeystoreError:
        key = None
    unchecked = key is None  # records to be shown unchecked, and not yet warned of it

    def shown(record: dict[str, Any]) -> dict[str, Any]:
        nonlocal unchecked
        if unchecked:
            warn("records not checked against their seals (the keystore is not available): "
                 "run nhidel audit verify")  # fmt: skip
            unchecked = False
        return record

    def matches(record: dict[str, Any]) -> bool:
        try:
            return wanted(record)
        except (TypeError, ValueError, OverflowError, OSError):
            return False  # an unchecked record of the wrong shape: it matches no filter

    def skipped(number: int) -> None:
        warn(f"skipped {number} line(s) that are not sealed records; run nhidel audit verify")

    last: deque[dict[str, Any]] = deque(maxlen=count)
    newest = 0
    end = Position()
    for record in records(paths, key, skipped=skipped, end=end):
        newest = max(newest, record["seq"]) if type(record.get("seq")) is int else newest
        if count and matches(record):
            last.append(record)
    for record in last:
        yield shown(record)
    if keep_following:
        for record in follow(paths, start_after=newest, stop=stop, key=key, skipped=skipped,
                             start=end):  # fmt: skip
            if matches(record):
                yield shown(record)


def find_token(paths: Paths, keystore: KeyStore, token: str) -> list[dict[str, Any]]:
    """Records about `token`, found by its keyed fingerprint (the log never holds tokens);
    only sealed records (the key that finds them checks them)."""
    from nhidel.keys.principal import load_trust

    key = load_trust(keystore).audit_key
    fingerprint = token_fingerprint(key, token)
    return [r for r in records(paths, key) if r.get("token_fp") == fingerprint]


def prune(paths: Paths, keystore: KeyStore, *, keep: int) -> list[str]:
    """Delete all but the `keep` newest rotated segments; log it first. Returns the names."""
    from nhidel.audit import AuditKeys

    if keep < 0:
        raise UsageError("--keep must be zero or more", "e.g. --keep 4")
    keys: AuditKeys = AuditKeys.of(keystore)
    doomed = rotated_segments(paths)[: max(0, len(rotated_segments(paths)) - keep)]
    if not doomed:
        return []
    last_line = _last_line(doomed[-1].read_bytes())
    through = json.loads(last_line)["seq"]
    from nhidel.integrity.state import audit_log

    audit_log(paths, keys).append([event(
        "log.pruned", pruned_through=through, pruned_head=line_hash(last_line),
        segments=[p.name for p in doomed],
    )])  # fmt: skip
    for path in doomed:
        try:
            os.unlink(path)
        except OSError as exc:
            raise storage_error(path, exc) from exc
    fsync_dir(paths.state_dir)
    return [p.name for p in doomed]


def _last_line(data: bytes) -> bytes:
    return data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
