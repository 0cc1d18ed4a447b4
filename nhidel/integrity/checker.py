"""Checking the whole audit log: seals, chain, sequence, high-water mark, and the ledger.

The mark is read before the log, so a record appended while the check runs can only make the
log longer than the mark, never look truncated. Writers never need to stop.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nhidel.audit.reader import lines
from nhidel.audit.records import (
    GENESIS,
    BadRecord,
    check_seal,
    line_hash,
    open_line,
    parse_unchecked,
    sealed_fields,
)
from nhidel.audit.segments import all_segments
from nhidel.audit.writer import STATE_EVENTS, recovers
from nhidel.errors import IntegrityError
from nhidel.paths import Paths

# Events whose content `audit verify` compares with the ledger; only these are parsed in full.
_NOTEWORTHY = re.compile(
    rb',"event":"(?:grant\.issued|grant\.revoked|grant\.used|key\.rotated|key\.created'
    rb"|agent\.added|agent\.removed|agent\.updated|config\.updated|state\.repaired"
    rb"|secret\.added|secret\.removed|mcp\.added|mcp\.removed|route\.added|route\.removed"
    rb'|log\.pruned|log\.loss_accepted|approval\.used)"'
)

if TYPE_CHECKING:
    from nhidel.ledger.store import Ledger


# Where a problem is when it is on no line of a segment: what the `segment` field holds then.
START, END, MARK_PLACE = "(start)", "(end)", "(mark)"
_PLACES = {
    START: "at the start of the log",
    END: "after the last record",
    MARK_PLACE: "at the keystore's high-water mark",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing wrong: where, and why in words an incident reviewer uses. `segment` is
    a segment's file name (with the line), or START, END, MARK_PLACE, `ledger`, `config.toml`
    (where `line` is 0)."""

    segment: str
    line: int
    seq: int | None
    why: str

    @property
    def place(self) -> str:
        """Where, in words: `in audit.jsonl line 4 (seq 4)`, `after the last record (seq 49)`."""
        if self.segment in _PLACES:
            where = _PLACES[self.segment]
        elif self.line:
            where = f"in {self.segment} line {self.line}"
        else:
            where = f"in {self.segment}"
        return where if self.seq is None else f"{where} (seq {self.seq})"

    def __str__(self) -> str:
        return f"{self.place}: {self.why}"


@dataclass(slots=True)
class Report:
    """What `audit verify` found. The head is the last record verified (seq 0 and the genesis
    hash when none was); with a problem, the check went no further."""

    records: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    warnings: list[str] = field(default_factory=list)
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        problem = self.problem
        return {
            "ok": self.ok,
            "records": self.records,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "warnings": self.warnings,
            "error": None if problem is None else {
                "segment": problem.segment, "line": problem.line, "seq": problem.seq,
                "where": problem.place, "why": problem.why,
            },
        }  # fmt: skip


@dataclass(slots=True)
class _Facts:
    """What the log says happened, to compare with the ledger."""

    issued: dict[str, dict[str, Any]] = field(default_factory=dict)
    loss_accepted: bool = False  # `repair --accept-loss` ran: older rows may lack records
    revoked: dict[str, int] = field(default_factory=dict)  # grant id -> its record's seq
    used: list[tuple[str, int]] = field(default_factory=list)  # (grant id, seq) per use
    rotations: list[dict[str, Any]] = field(default_factory=list)  # key.rotated records
    changes: list[dict[str, Any]] = field(default_factory=list)  # every state change record
    revoke_reasons: dict[str, Any] = field(default_factory=dict)  # grant id -> its record's
    spent: dict[str, tuple[int, int]] = field(default_factory=dict)  # approval -> (lapse, seq)

    pruned_through: int | None = None
    pruned_head: str | None = None
    hash_at_mark: str | None = None  # the line hash of the record the mark names
    first_prev: str | None = None  # what the oldest remaining record chains to

    @property
    def uses(self) -> Counter[str]:
        return Counter(grant_id for grant_id, _ in self.used)

    def forget_after(self, seq: int) -> int:
        """Drop what records after `seq` say (a crash's residue, which the next command
        finishes); return how many such records there were."""
        late = [g for g, r in self.issued.items() if r.get("seq", 0) > seq]
        late += [g for g, at in self.revoked.items() if at > seq]
        self.issued = {g: r for g, r in self.issued.items() if r.get("seq", 0) <= seq}
        self.revoked = {g: at for g, at in self.revoked.items() if at <= seq}
        kept = [(g, at) for g, at in self.used if at <= seq]
        count = len(late) + len(self.used) - len(kept)
        self.used = kept
        self.spent = {a: spent for a, spent in self.spent.items() if spent[1] <= seq}
        return count


class _Stop(Exception):  # noqa: N818 - unwinds the scan at the first problem
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def check_log(
    paths: Paths,
    key: bytes,
    mark: dict[str, Any] | None,
    ledger: Ledger | None,
    pinned: set[str] | None = None,
) -> Report:
    """Check every record; the first problem found ends the check (see `Report.problem`)."""
    report = Report()
    facts = _Facts()
    try:
        first_seq = _check_fast(paths, key, mark, report, facts)
        if first_seq is None:
            report, facts = Report(), _Facts()
            first_seq = _scan(paths, key, mark, report, facts)
        _check_start(first_seq, facts)
        _check_mark(mark, report, facts)
        if ledger is not None:
            _check_sealed_state(paths, ledger, key, mark, report, facts, pinned)
            _check_ledger(ledger, facts)
    except _Stop as stop:
        report.problem = stop.problem
    except IntegrityError as exc:  # a ledger too damaged to read
        report.problem = Problem("ledger", 0, None, f"corrupt: {exc.message}")
    return report


def _check_fast(
    paths: Paths, key: bytes, mark: dict[str, Any] | None, report: Report, facts: _Facts
) -> int | None:
    """A large, clean log checked on every core; None when the sequential scan must run."""
    from nhidel.audit.parallel import MIN_PARALLEL_BYTES, check_in_parallel

    segments = all_segments(paths)
    if (os.cpu_count() or 1) < 2 or sum(p.stat().st_size for p in segments) < MIN_PARALLEL_BYTES:
        return None
    mark_seq = mark.get("seq") if mark else None
    summaries = check_in_parallel(segments, key, mark_seq, _NOTEWORTHY.pattern)
    if not summaries:
        return None
    first = summaries[0]
    if first.first_seq == 1 and first.first_prev != GENESIS:
        return None
    for before, after in zip(summaries, summaries[1:], strict=False):
        if after.first_seq != before.last_seq + 1 or after.first_prev != before.last_hash:
            return None
    for summary in summaries:
        for body in summary.noteworthy:
            _note(json.loads(body), facts)
        facts.hash_at_mark = facts.hash_at_mark or summary.hash_at_mark
        report.records += summary.count
    facts.first_prev = first.first_prev if first.first_seq != 1 else GENESIS
    report.head_seq, report.head_hash = summaries[-1].last_seq, summaries[-1].last_hash
    return first.first_seq


def _scan(
    paths: Paths, key: bytes, mark: dict[str, Any] | None, report: Report, facts: _Facts
) -> int | None:
    expected_seq: int | None = None
    prev = GENESIS
    first_seq = None
    unexplained: tuple[Path, int, bytes] | None = None  # a garbage line awaiting log.recovered
    torn: tuple[Path, int, bytes] | None = None  # an unterminated line: fine only at the very end
    mark_seq = mark.get("seq") if mark else None
    for segment, number, raw, complete in lines(paths):
        if torn is not None:
            raise _Stop(Problem(torn[0].name, torn[1], None,
                                "truncated: an unterminated line inside the log"))  # fmt: skip
        if not complete:
            torn = (segment, number, raw)
            continue
        if unexplained is not None:
            _explain_fragment(unexplained, raw, key)
            unexplained = None
        try:
            body = check_seal(raw, key)
            seq, record_prev = _seq_and_prev(body)
        except BadRecord as bad:
            if bad.why == "not a sealed record":
                unexplained = (segment, number, raw)  # maybe a crash's fragment: see next line
                continue
            raise _Stop(Problem(segment.name, number, None, _forged_or_edited(bad))) from None
        if expected_seq is None:
            first_seq, expected_seq = seq, seq
            prev = record_prev if seq != 1 else GENESIS
            facts.first_prev = prev
        if seq != expected_seq:
            raise _Stop(Problem(segment.name, number, seq, _sequence_problem(seq, expected_seq)))
        if record_prev != prev:
            raise _Stop(Problem(segment.name, number, seq,
                                "the chain is broken: a record before it was inserted, "
                                "edited or replaced"))  # fmt: skip
        prev = line_hash(raw)
        if seq == mark_seq:
            facts.hash_at_mark = prev
        if _NOTEWORTHY.search(body):
            _note(json.loads(body), facts)
        expected_seq = seq + 1
        report.records += 1
        # The head verified so far: what the report gives should a later line stop the check.
        report.head_seq, report.head_hash = seq, prev
    if unexplained is not None:
        segment, number, _ = unexplained
        raise _Stop(Problem(segment.name, number, None, "an unsealed line: inserted or edited"))
    if torn is not None:
        # Past the last sealed record, an unterminated line can only be a crash's doing.
        report.warnings.append(
            f"{torn[0].name} line {torn[1]}: a torn, unterminated last line ({len(torn[2])} "
            "bytes) from an interrupted write; the next append repairs it"
        )
    return first_seq


def _seq_and_prev(body: bytes) -> tuple[int, str]:
    found = sealed_fields(body)
    if found is None:
        raise BadRecord("sealed but not a record")
    return int(found[1]), found[0].decode("ascii")


def _explain_fragment(unexplained: tuple[Path, int, bytes], following: bytes, key: bytes) -> None:
    """A garbage line is a crash's fragment only if the next record is a matching recovery."""
    segment, number, fragment = unexplained
    try:
        record = open_line(following, key)
    except BadRecord:
        record = {}
    if not recovers(record, fragment):
        raise _Stop(Problem(segment.name, number, None, "an unsealed line: inserted or edited"))


def _forged_or_edited(bad: BadRecord) -> str:
    if "seal" in bad.why:
        return "edited or forged: " + bad.why
    return "edited: " + bad.why


def _sequence_problem(seq: int, expected: int) -> str:
    if seq > expected:
        missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
        return f"deleted: records {missing} are missing"
    return f"reordered or inserted: seq {seq} where {expected} was expected"


def _note(record: dict[str, Any], facts: _Facts) -> None:
    event = record.get("event")
    if event in STATE_EVENTS:
        facts.changes.append(record)
    if event == "grant.issued" and isinstance(record.get("grant"), str):
        facts.issued[record["grant"]] = record
    elif event == "grant.revoked" and isinstance(record.get("grant"), str):
        facts.revoked.setdefault(record["grant"], record.get("seq", 0))
        facts.revoke_reasons.setdefault(record["grant"], record.get("reason"))
    elif event == "grant.used" and isinstance(record.get("grant"), str):
        facts.used.append((record["grant"], record.get("seq", 0)))
    elif event == "approval.used" and isinstance(record.get("approval"), str):
        lapses = record.get("lapses_at")
        facts.spent[record["approval"]] = (lapses if type(lapses) is int else 0,
                                           record.get("seq", 0))  # fmt: skip
    elif event == "key.rotated":
        facts.rotations.append(record)
    elif event == "log.loss_accepted":
        facts.loss_accepted = True
    elif event == "log.pruned":
        facts.pruned_through = record.get("pruned_through")
        facts.pruned_head = record.get("pruned_head")


def _check_start(first_seq: int | None, facts: _Facts) -> None:
    if first_seq is None or first_seq == 1:
        return
    if facts.pruned_through == first_seq - 1 and facts.pruned_head == facts.first_prev:
        return
    raise _Stop(Problem(START, 1, first_seq,
                        f"deleted: the log starts at seq {first_seq}, and no log.pruned record "
                        "accounts for the records before it"))  # fmt: skip


def _check_mark(mark: dict[str, Any] | None, report: Report, facts: _Facts) -> None:
    if mark is None:
        if report.records:
            report.warnings.append("no high-water mark in the keystore yet")
        return
    seq, digest = mark.get("seq"), mark.get("hash")
    if not isinstance(seq, int) or seq > report.head_seq:
        raise _Stop(Problem(END, 0, report.head_seq,
                            f"truncated: the log ends at seq {report.head_seq} but the "
                            f"high-water mark in the keystore is seq {seq}"))  # fmt: skip
    if facts.hash_at_mark != digest:
        raise _Stop(Problem(MARK_PLACE, 0, seq,
                            f"replaced: record {seq} is not the one the high-water mark in the "
                            "keystore names (an older or another copy of the log)"))  # fmt: skip


def _check_sealed_state(
    paths: Paths,
    ledger: Ledger,
    key: bytes,
    mark: dict[str, Any] | None,
    report: Report,
    facts: _Facts,
    pinned: set[str] | None,
) -> None:
    """The sealed state is fresh (not older than the mark, not newer than the log), config.toml
    and the keystore's pins are as it seals them, it holds every revocation and use the log
    holds, and every row is sealed, was issued, and says what the sealed state says."""
    from nhidel.audit.writer import Mark
    from nhidel.config import load_config
    from nhidel.integrity.state import (
        changed_entries,
        check_fresh,
        check_keys,
        config_digest,
        one_crash_only,
        open_state,
        row_is_sealed,
    )
    from nhidel.tokens.claims import MAX_LEEWAY

    def stop(why: str) -> _Stop:
        return _Stop(Problem("ledger", 0, None, why))

    ledger.check_pages()
    sealed = open_state(ledger.sealed_state(), key)
    marked = Mark(mark["seq"], mark["hash"], mark.get("state_seq", 0)) if mark else None
    if sealed.legacy and (facts.issued or (marked is not None and marked.state_seq)):
        raise stop("deleted: the ledger has no sealed state (replaced or deleted)")
    check_fresh(sealed, marked, report.head_seq)
    late = [r for r in facts.changes if r.get("seq", 0) > sealed.seq]
    if late:
        try:
            one_crash_only(_records_after(paths, sealed.seq))
        except IntegrityError as rolled_back:
            raise stop("rolled back: " + rolled_back.message) from None
    unfinished = [r for r in facts.rotations if r.get("seq", 0) > sealed.seq]
    if unfinished and pinned == set(unfinished[-1].get("trusted") or ()):
        pass  # a rotation the keystore took and the ledger not yet: the next command ends it
    elif pinned is not None and not sealed.legacy:
        check_keys(sealed, pinned)
    if sealed.config is not None:
        config = load_config(paths)
        digest = config_digest(config)
        if digest != sealed.config and digest not in {r.get("config_sha256") for r in late}:
            what = ", ".join(changed_entries(config, sealed)) or (
                "an agent, a registration, a key or a setting"
            )
            why = (f"edited: config.toml differs from its sealed version ({what} changed, "
                   "added, removed or restored from an older copy)")  # fmt: skip
            raise _Stop(Problem("config.toml", 0, None, why))
    awaiting = facts.forget_after(sealed.seq)
    if awaiting:
        report.warnings.append(
            f"{awaiting} record(s) after the ledger's sealed state are an interrupted change "
            "that the next command finishes (or run nhidel repair)"
        )
    horizon = int(time.time()) - MAX_LEEWAY
    uses = facts.uses
    pruned = facts.pruned_through is not None or facts.loss_accepted
    tombstones = _tombstones(facts)
    for grant, token_hash, seal in ledger.all_rows():
        if not row_is_sealed(key, grant, token_hash, seal):
            raise stop(f"edited: the ledger row of grant {grant.id} does not match its seal")
        if grant.revoked_at is not None and not pruned:
            said = "interrupted" if grant.id in tombstones else facts.revoke_reasons.get(
                grant.id, _NO_RECORD)  # fmt: skip
            if said != grant.revoke_reason:
                raise stop(f"edited: the ledger row of grant {grant.id} says it was revoked "
                           "other than its sealed records do")  # fmt: skip
        if not pruned and grant.id not in facts.issued and not sealed.legacy:
            raise stop(f"inserted: the ledger holds grant {grant.id}, which no record issued")
        if grant.expires_at <= horizon:
            continue  # the sealed state has let it go: no verifier accepts it any more
        if grant.id in facts.revoked and grant.id not in sealed.revoked:
            raise stop(f"the ledger's sealed state lost the revocation of grant {grant.id}")
        if (grant.revoked_at is not None) != (grant.id in sealed.revoked) or (
            grant.uses != sealed.uses(grant.id)
        ):
            raise stop(f"edited: the ledger row of grant {grant.id} says other revocation or "
                       "uses than the sealed state")  # fmt: skip
        if sealed.uses(grant.id) < uses.get(grant.id, 0):
            raise stop(f"the ledger's sealed state lost uses of grant {grant.id}")
    for approval_id, (lapses, _) in facts.spent.items():
        if lapses > horizon and approval_id not in sealed.spent:
            raise stop(f"the ledger's sealed state lost the use of approval {approval_id}")
    _check_approvals(ledger, key, stop)


_NO_RECORD = object()


def _check_approvals(ledger: Ledger, key: bytes, stop: Callable[[str], _Stop]) -> None:
    """Every approval request and answer in the ledger matches its seal."""
    from nhidel.integrity.approvals import check_row, open_answer, open_request

    for row in ledger.approvals():
        try:
            request = open_request(key, row)
            check_row(request, open_answer(key, request, row), row)
        except IntegrityError as exc:
            raise stop(f"edited: {exc.message}") from None


def _tombstones(facts: _Facts) -> set[str]:
    """Grants a repair revoked as `interrupted` (their grant.issued record had no row)."""
    finished = {seq for r in facts.changes if r.get("event") == "state.repaired"
                for seq in r.get("applied") or []}  # fmt: skip
    return {g for g, r in facts.issued.items() if r.get("seq") in finished}


def _records_after(paths: Paths, seq: int) -> list[dict[str, Any]]:
    """The records after `seq`, oldest first (read from the end: they are few). Their seals
    were checked by the scan already."""
    found: list[dict[str, Any]] = []
    for segment in reversed(all_segments(paths)):
        for raw in reversed(segment.read_bytes().split(b"\n")):
            record = parse_unchecked(raw)
            if record is None or type(record.get("seq")) is not int:
                continue
            if record["seq"] <= seq:
                return found[::-1]
            found.append(record)
    return found[::-1]


def _check_ledger(ledger: Ledger, facts: _Facts) -> None:
    """The ledger's rows against the records that made them: every grant the log issued has
    its row, as issued; every revocation and use the log holds is in the ledger."""
    for grant_id, record in sorted(facts.issued.items()):
        grant = ledger.get(grant_id)
        if grant is None:
            raise _Stop(Problem("ledger", 0, record.get("seq"),
                                f"deleted: the ledger has no row for grant {grant_id}, which the "
                                "log issued"))  # fmt: skip
        issued = (record.get("agent"), record.get("scopes"), record.get("expires_at"),
                  record.get("max_uses"), record.get("kid"))  # fmt: skip
        row = (grant.agent, [str(s) for s in grant.scopes], grant.expires_at, grant.max_uses,
               grant.kid)  # fmt: skip
        if issued != row:
            raise _Stop(Problem("ledger", 0, record.get("seq"),
                                f"edited: the ledger row of grant {grant_id} differs from its "
                                "sealed grant.issued record"))  # fmt: skip
    for grant_id in sorted(facts.revoked):
        grant = ledger.get(grant_id)
        if grant is None or grant.revoked_at is None:
            raise _Stop(Problem("ledger", 0, None,
                                f"the ledger lost the revocation of grant {grant_id} "
                                "(rolled back or edited)"))  # fmt: skip
    for grant_id, count in sorted(facts.uses.items()):
        grant = ledger.get(grant_id)
        if grant is None or grant.uses < count:
            raise _Stop(
                Problem(
                    "ledger",
                    0,
                    None,
                    f"the ledger lost uses of grant {grant_id}: the log holds "
                    f"{count}, the ledger {0 if grant is None else grant.uses}",
                )
            )
