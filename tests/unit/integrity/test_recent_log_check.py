"""The quick check `nhidel doctor` runs on the audit log: the newest records (and back to the
mark), each sealed, in sequence and chained; the mark's record the one it names. What lies
further back is left to `audit verify`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.audit_lines import line_sha256

from nhidel.audit import AuditKeys, AuditLog, event
from nhidel.audit.reader import lines, lines_backwards
from nhidel.audit.segments import all_segments
from nhidel.audit.writer import Mark
from nhidel.integrity.recent import check_recent
from nhidel.paths import Paths

KEY = os.urandom(32)


@pytest.fixture
def log(paths: Paths) -> AuditLog:
    """A writer with no keystore: the tests hand the mark to the check themselves."""
    return AuditLog(paths, AuditKeys(KEY, None))


def write(log: AuditLog, count: int) -> None:
    log.append([event("status.published", size=n) for n in range(count)])


def mark_at(paths: Paths, seq: int) -> Mark:
    line = paths.audit_file.read_bytes().splitlines()[seq - 1]
    return Mark(seq, line_sha256(line))


def rewrite(path: Path, change: dict[int, bytes | None]) -> None:
    """Replace (or, with None, delete) lines by their 1-based number."""
    lines_ = path.read_bytes().splitlines(keepends=True)
    for number, new in change.items():
        lines_[number - 1] = new or b""
    path.write_bytes(b"".join(lines_))


def test_a_clean_log_checks_out_up_to_its_head_at_the_mark(log: AuditLog, paths: Paths) -> None:
    write(log, 5)
    found = check_recent(paths, KEY, mark_at(paths, 5))
    assert found.ok, found.problem
    assert (found.checked, found.head_seq) == (5, 5)
    assert found.head_hash == mark_at(paths, 5).hash
    assert found.after_mark == [] and found.torn is None


def test_only_the_newest_records_are_read(log: AuditLog, paths: Paths) -> None:
    write(log, 10)
    mark = mark_at(paths, 10)
    edited = paths.audit_file.read_bytes().splitlines(keepends=True)[1].replace(b"size", b"SIZE")
    rewrite(paths.audit_file, {2: edited})
    quick = check_recent(paths, KEY, mark, count=3)
    assert quick.ok and quick.checked == 3  # an edit further back is audit verify's to find
    full = check_recent(paths, KEY, mark, count=20)
    assert full.problem == f"{paths.audit_file} (seq 2): edited or forged: its seal does not match"


def test_the_check_reads_back_to_the_mark_and_returns_what_follows_it(
    log: AuditLog, paths: Paths
) -> None:
    write(log, 10)
    found = check_recent(paths, KEY, mark_at(paths, 3), count=1)
    assert found.ok, found.problem
    assert found.checked == 8  # seq 10 back to 3
    assert [r["seq"] for r in found.after_mark] == list(range(4, 11))


def test_a_log_that_ends_before_the_mark_is_truncated(log: AuditLog, paths: Paths) -> None:
    write(log, 4)
    mark = mark_at(paths, 4)
    rewrite(paths.audit_file, {4: None})
    found = check_recent(paths, KEY, mark)
    assert found.problem is not None and found.problem.startswith(
        "truncated: the log ends at seq 3 but the keystore's high-water mark is seq 4"
    )


def test_a_record_at_the_mark_other_than_the_marked_one_is_a_replaced_log(
    log: AuditLog, paths: Paths
) -> None:
    write(log, 4)
    found = check_recent(paths, KEY, Mark(3, "0" * 64))
    assert found.problem is not None and "(seq 3): replaced" in found.problem


def test_a_missing_record_inside_the_window_is_named(log: AuditLog, paths: Paths) -> None:
    write(log, 6)
    mark = mark_at(paths, 6)
    rewrite(paths.audit_file, {4: None})
    found = check_recent(paths, KEY, mark)
    assert found.problem == f"{paths.audit_file} (seq 5): deleted: record 4 is missing"


def test_an_inserted_unsealed_line_is_named(log: AuditLog, paths: Paths) -> None:
    write(log, 3)
    mark = mark_at(paths, 3)
    rewrite(paths.audit_file, {2: paths.audit_file.read_bytes().splitlines(True)[1] + b"{}\n"})
    found = check_recent(paths, KEY, mark)
    assert found.problem == (
        f"{paths.audit_file}, the line before seq 3: an unsealed line: inserted or edited"
    )


def test_a_torn_last_line_is_noted_not_a_problem(log: AuditLog, paths: Paths) -> None:
    write(log, 3)
    mark = mark_at(paths, 3)
    with paths.audit_file.open("ab") as handle:
        handle.write(b'{"event":"grant.iss')
    found = check_recent(paths, KEY, mark)
    assert found.ok and found.torn == len(b'{"event":"grant.iss') and found.head_seq == 3


def test_a_crash_fragment_the_next_record_seals_is_not_a_problem(
    log: AuditLog, paths: Paths
) -> None:
    write(log, 3)
    with paths.audit_file.open("ab") as handle:
        handle.write(b'{"event":"grant.iss')
    write(log, 1)  # ends the fragment and seals what was lost (log.recovered)
    found = check_recent(paths, KEY, mark_at(paths, 3))
    assert found.ok, found.problem
    assert [r["event"] for r in found.after_mark] == ["log.recovered", "status.published"]


def test_the_check_crosses_rotated_segments(
    log: AuditLog, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NHIDEL_AUDIT_SEGMENT_BYTES", "4096")
    for _ in range(40):
        write(log, 1)
    assert len(all_segments(paths)) > 2
    head = check_recent(paths, KEY, None, count=1)  # no mark: every record is after it
    assert head.ok, head.problem
    assert head.checked == head.head_seq == len(head.after_mark)
    newest = [line for _, _, line, _ in lines(paths)]
    assert [line for _, line, _ in lines_backwards(paths)] == newest[::-1]


def test_a_segment_that_is_not_a_plain_file_is_a_problem_not_a_crash(
    log: AuditLog, paths: Paths, tmp_path: Path
) -> None:
    write(log, 2)
    mark = mark_at(paths, 2)
    moved = tmp_path / "moved.jsonl"
    paths.audit_file.rename(moved)
    paths.audit_file.symlink_to(moved)
    found = check_recent(paths, KEY, mark)
    assert found.problem == f"{paths.audit_file} is a symbolic link"


def test_a_log_read_whole_that_does_not_start_at_seq_1_lost_its_oldest_records(
    log: AuditLog, paths: Paths
) -> None:
    write(log, 6)
    mark = mark_at(paths, 6)
    rewrite(paths.audit_file, {1: None, 2: None})  # within the window, before the mark
    found = check_recent(paths, KEY, mark)
    assert found.problem is not None and "starts at seq 3" in found.problem


def test_a_log_that_starts_where_a_sealed_pruning_ended_checks_out(
    log: AuditLog, paths: Paths
) -> None:
    write(log, 3)
    log.append([event("log.pruned", segments=["audit.000000000001.jsonl"], pruned_through=2)])
    mark = mark_at(paths, 4)
    whole = paths.audit_file.read_bytes()
    rewrite(paths.audit_file, {1: None, 2: None})  # what the pruning deleted
    assert check_recent(paths, KEY, mark).ok
    paths.audit_file.write_bytes(whole)
    rewrite(paths.audit_file, {1: None, 2: None, 3: None})  # one record more than it deleted
    found = check_recent(paths, KEY, mark)
    assert found.problem is not None and "records 3..3" in found.problem
