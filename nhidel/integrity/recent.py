"""The quick check of the audit log that `nhidel doctor` runs: its newest records and the mark.

`audit verify` reads every record and holds the ledger against them: seconds on a large log.
This reads the log from its end only: the newest RECENT records, and back to the keystore's
high-water mark when that is further (the records after the mark are few: what a crash left,
or decisions not yet marked). Each must be sealed, in sequence and chained to the one before,
the record at the mark the one it names, and the log must reach the mark; a log read whole must
start at seq 1 or where a sealed `log.pruned` record says pruning ended. What it does not
read (an edit further back, the ledger's every row) is `audit verify`'s to find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhidel.audit.reader import lines_backwards
from nhidel.audit.records import GENESIS, BadRecord, line_hash, open_line, parse_unchecked
from nhidel.audit.writer import Mark, recovers
from nhidel.errors import NhidelError
from nhidel.paths import Paths

RECENT = 1000


@dataclass(slots=True)
class Recent:
    """What the quick check found: the head, the records after the mark, the first problem."""

    checked: int = 0  # sealed records read
    head_seq: int = 0
    head_hash: str = GENESIS
    after_mark: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    torn: int | None = None  # bytes of an unterminated last line (an interrupted write's)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_recent(paths: Paths, key: bytes, mark: Mark | None, *, count: int = RECENT) -> Recent:
    """Check the newest `count` records, and every record back to the mark (see the module
    doc). With no mark, every record is after it, as a writer sees it."""
    scan = _Scan(key, mark or Mark(0, GENESIS), count)
    try:
        for segment, raw, complete in lines_backwards(paths):
            if not scan.take(segment, raw, complete):
                break
        else:
            scan.read_all = True
    except NhidelError as exc:  # a segment that cannot be read, or is not a plain file
        scan.found.problem = exc.message
    return scan.finish()


class _Scan:
    """The log read from its end, a line at a time (`take`), each checked against the record
    read before it: the next one in the log."""

    def __init__(self, key: bytes, mark: Mark, count: int) -> None:
        self.key = key
        self.mark = mark
        self.count = count
        self.found = Recent()
        self.newer: dict[str, Any] | None = None
        self.lines = 0
        self.read_all = False  # every line there is, back to the oldest segment's first
        self.pruned_through = 0  # the records `audit prune` deleted, by its sealed records

    def take(self, segment: Path, raw: bytes, complete: bool) -> bool:
        """Check one line; False once the check is done (or found a problem)."""
        first, self.lines = self.lines == 0, self.lines + 1
        if not complete:
            if first:  # the newest line: an append in flight, or a crash's torn write
                self.found.torn = len(raw)
                return True
            return self._stop(f"{segment}: an unterminated line inside the log (truncated)")
        try:
            record = open_line(raw, self.key)
        except BadRecord as bad:
            if self.newer is not None and recovers(self.newer, raw):
                return True  # a crash's fragment, sealed by the record after it
            return self._stop(f"{self._where(segment, raw)}: {_unsealed(bad)}")
        return self._in_sequence(segment, raw, record)

    def _in_sequence(self, segment: Path, raw: bytes, record: dict[str, Any]) -> bool:
        seq, digest, newer, found = record["seq"], line_hash(raw), self.newer, self.found
        if newer is None:
            found.head_seq, found.head_hash = seq, digest
        elif newer["seq"] != seq + 1:
            if newer["seq"] == seq + 2:
                gap = f"deleted: record {seq + 1} is missing"
            elif newer["seq"] > seq + 2:
                gap = f"deleted: records {seq + 1}..{newer['seq'] - 1} are missing"
            else:
                gap = f"reordered or inserted: seq {seq} before it"
            return self._stop(f"{segment} (seq {newer['seq']}): {gap}")
        elif newer.get("prev") != digest:
            return self._stop(
                f"{segment} (seq {newer['seq']}): the chain is broken: the record "
                "before it was edited or replaced"
            )
        if seq == 1 and record.get("prev") != GENESIS:
            return self._stop(f"{segment} (seq 1): the chain is broken: it does not start the log")
        if seq == self.mark.seq and digest != self.mark.hash:
            return self._stop(
                f"{segment} (seq {seq}): replaced: not the record the keystore's "
                "high-water mark names (an older or another copy of the log)"
            )
        if seq > self.mark.seq:
            found.after_mark.append(record)
        through = record.get("pruned_through") if record.get("event") == "log.pruned" else None
        if type(through) is int:
            self.pruned_through = max(self.pruned_through, through)
        found.checked += 1
        self.newer = record
        return seq > 1 and (found.checked < self.count or seq > self.mark.seq)

    def _where(self, segment: Path, raw: bytes) -> str:
        claimed = parse_unchecked(raw)
        if claimed is not None and type(claimed.get("seq")) is int:
            return f"{segment} (seq {claimed['seq']})"
        if self.newer is not None:
            return f"{segment}, the line before seq {self.newer['seq']}"
        return f"{segment}, its last line"

    def _stop(self, problem: str) -> bool:
        self.found.problem = problem
        return False

    def finish(self) -> Recent:
        found, mark = self.found, self.mark
        if found.problem is None and found.head_seq < mark.seq:
            found.problem = (
                f"truncated: the log ends at seq {found.head_seq} but the keystore's high-water "
                f"mark is seq {mark.seq}: records were deleted, or the log was rolled back"
            )
        elif found.problem is None and self.newer is not None and self.newer["seq"] > mark.seq:
            if mark.seq:  # (with no mark the log may start anywhere: a writer reads it all)
                found.problem = (
                    f"deleted: the log starts at seq {self.newer['seq']}, after the record the "
                    f"keystore's high-water mark names (seq {mark.seq})"
                )
        oldest = self.newer["seq"] if self.newer is not None else 1
        if found.problem is None and self.read_all and oldest - 1 > self.pruned_through:
            # The whole log was read and it does not start at seq 1, nor where a sealed
            # log.pruned record says the pruning ended: its oldest records were deleted.
            found.problem = (
                f"deleted: the log starts at seq {oldest}, and no log.pruned record accounts "
                f"for records {self.pruned_through + 1}..{oldest - 1}"
            )
        found.after_mark.reverse()
        return found


def _unsealed(bad: BadRecord) -> str:
    if bad.why == "not a sealed record":
        return "an unsealed line: inserted or edited"
    return f"edited or forged: {bad.why}"
