"""The group commit never makes a decision wait for a write, and keeps every promise it had.

A decision returns while a write is blocked in its mark write; a full buffer wakes the
background writer instead of writing on the deciding thread, and only a writer far behind
(MAX_BACKLOG) makes a decision write; decisions from many threads, with state changes among
them, reach the log counted exactly once and in each thread's order; a failed background write
is raised on the next decision (or on close) and its records are written later, in order;
`flush()` and a state change return only once their records are in the log and the mark moved.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.audit_lines import assert_chained, audit_lines
from helpers.audit_workers import FileMark

from nhidel.audit import AuditKeys, AuditLog, decision_log, event
from nhidel.audit.decision_log import DecisionLog
from nhidel.errors import StorageError
from nhidel.paths import Paths

WRITER = "nhidel-decision-log"  # the background writer's thread name
SAFETY_S = 60  # lets a broken implementation fail instead of hanging; never reached otherwise


class GatedMark(FileMark):
    """The mark file, whose writes can be held: `entered` is set when a write arrives, and the
    write waits for `release` (set by the test, or by a safety timer)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, entry: str, value: dict[str, Any]) -> None:
        if self.gate:
            self.entered.set()
            self.release.wait(SAFETY_S)
        super().write(entry, value)


class RecordingLog:
    """Stands in for AuditLog: keeps what it was given and which thread gave it; the first
    `failures` appends raise (before writing anything, as a full disk would)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[list[dict[str, Any]]] = []
        self.threads: list[threading.Thread] = []
        self.appended = threading.Event()

    def append(self, events: Iterable[dict[str, Any]], *, durable: bool = True) -> None:
        assert durable
        if self.failures:
            self.failures -= 1
            raise StorageError("the disk is full", "free some space")
        self.batches.append(list(events))
        self.threads.append(threading.current_thread())
        self.appended.set()

    def records(self) -> list[dict[str, Any]]:
        return [record for batch in self.batches for record in batch]


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def mark(tmp_path: Path) -> GatedMark:
    return GatedMark(tmp_path / "mark.json")


@pytest.fixture
def log(paths: Paths, key: bytes, mark: GatedMark) -> AuditLog:
    return AuditLog(paths, AuditKeys(key, mark))


def decision(agent: str, n: int) -> dict[str, Any]:
    return event("verify.allowed", agent=agent, outcome="allowed", n=n)


def logged(paths: Paths, key: bytes) -> list[dict[str, Any]]:
    return assert_chained(audit_lines(paths.audit_file), key=key)


def wait_for_background_writers() -> None:
    for thread in threading.enumerate():
        if thread.name == WRITER:
            thread.join(SAFETY_S)


def count(records: Iterable[dict[str, Any]]) -> int:
    return sum(record.get("count", 1) for record in records)


@pytest.fixture(autouse=True)
def no_writer_left_behind() -> Iterator[None]:
    yield
    wait_for_background_writers()


# -- a decision never waits for a write ---------------------------------------------------


def test_a_decision_returns_while_the_background_write_is_blocked_in_its_mark_write(
    paths: Paths, key: bytes, mark: GatedMark, log: AuditLog
) -> None:
    decisions = DecisionLog(log, max_delay=0)  # the writer starts at once
    mark.gate = True
    safety = threading.Timer(SAFETY_S, mark.release.set)
    safety.start()
    try:
        decisions.decide("first", decision("bot", 1))
        assert mark.entered.wait(SAFETY_S), "the background write never reached the mark"
        for n in range(2, 102):  # the write holds the log's lock and waits in the keystore
            decisions.decide(("later", n), decision("bot", n))
        assert not mark.release.is_set(), "a decision waited for the blocked write"
    finally:
        mark.release.set()
        safety.cancel()
    decisions.close()
    assert [record["n"] for record in logged(paths, key)] == list(range(1, 102))


def test_a_full_buffer_wakes_the_writer_instead_of_writing_on_the_deciding_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decision_log, "MAX_BUFFERED", 5)
    recording = RecordingLog()
    decisions = DecisionLog(recording, max_delay=SAFETY_S)  # type: ignore[arg-type]
    for n in range(5):
        decisions.decide(n, decision("bot", n))
    assert recording.appended.wait(SAFETY_S), "a full buffer did not wake the writer"
    assert recording.threads[0] is not threading.current_thread()
    assert [record["n"] for record in recording.records()] == list(range(5))
    decisions.close()


def test_a_writer_that_falls_too_far_behind_makes_the_decision_write_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decision_log, "MAX_BACKLOG", 3)
    recording = RecordingLog()
    decisions = DecisionLog(recording, max_delay=SAFETY_S)  # type: ignore[arg-type]
    for n in range(3):
        decisions.decide(n, decision("bot", n))
    # Nothing else could have written before the third decision returned: memory stays bounded.
    assert recording.threads == [threading.current_thread()]
    assert [record["n"] for record in recording.records()] == [0, 1, 2]
    decisions.close()


# -- counts and order under threads ---------------------------------------------------------


def test_decisions_from_many_threads_add_up_in_order_with_state_changes_among_them(
    paths: Paths, key: bytes, mark: GatedMark, log: AuditLog
) -> None:
    threads, steps, repeats = 6, 150, 4
    decisions = DecisionLog(log, max_delay=0.002)  # many writes while the threads decide
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def decide_many(agent: str) -> None:
        try:
            start.wait(SAFETY_S)
            for step in range(steps):
                content = decision(agent, step)
                for _ in range(repeats):  # identical decisions: coalesced within a window
                    decisions.decide((agent, step), content)
                if step % 50 == 49:
                    used = event("grant.used", agent=agent, n=step)
                    decisions.add([used], state_change=True)
                    # Durable when add returns: in the log, after this thread's decisions.
                    mine = [r for r in logged(paths, key) if r["agent"] == agent]
                    assert mine[-1]["event"] == "grant.used" and mine[-1]["n"] == step
                    assert count(r for r in mine if r["event"] == "verify.allowed") == (
                        (step + 1) * repeats
                    )
        except BaseException as exc:  # noqa: BLE001 - reported on the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=decide_many, args=(f"t{n}",)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(SAFETY_S)
    decisions.close()
    assert not errors, errors
    records = logged(paths, key)
    assert count(records) == threads * (steps * repeats + steps // 50)
    for n in range(threads):
        mine = [r for r in records if r["agent"] == f"t{n}"]
        # Each thread's records in its own order: a run may be cut by a write, never reordered.
        assert [r["n"] for r in mine] == sorted(r["n"] for r in mine)
        for step in range(steps):
            same = [r for r in mine if r["n"] == step and r["event"] == "verify.allowed"]
            assert count(same) == repeats
    assert any(record.get("count", 1) > 1 for record in records)
    assert json.loads(Path(mark.path).read_text())["seq"] == records[-1]["seq"]


# -- failures are raised, and nothing is lost ----------------------------------------------


def test_a_failed_background_write_is_raised_on_the_next_decision_and_nothing_is_lost() -> None:
    recording = RecordingLog(failures=1)
    decisions = DecisionLog(recording, max_delay=0)  # type: ignore[arg-type]
    decisions.decide("a", decision("bot", 1))
    wait_for_background_writers()  # its write failed
    with pytest.raises(StorageError):
        decisions.decide("b", decision("bot", 2))  # refused: the caller learns of the failure
    decisions.max_delay = SAFETY_S  # from now on, only close() writes
    decisions.decide("c", decision("bot", 3))
    decisions.decide("c", decision("bot", 3))
    decisions.close()
    # The failed batch is written first, in one write with what came after it.
    assert [[(r["n"], r.get("count", 1)) for r in batch] for batch in recording.batches] == [
        [(1, 1), (3, 2)]
    ]


def test_a_failed_background_write_is_raised_by_close_after_its_records_are_written() -> None:
    recording = RecordingLog(failures=1)
    decisions = DecisionLog(recording, max_delay=0)  # type: ignore[arg-type]
    decisions.decide("a", decision("bot", 1))
    wait_for_background_writers()
    with pytest.raises(StorageError):
        decisions.close()
    assert [record["n"] for record in recording.records()] == [1]


# -- flush and state changes wait for durability -------------------------------------------


def test_flush_returns_once_the_records_are_in_the_log_and_the_mark_moved(
    paths: Paths, key: bytes, mark: GatedMark, log: AuditLog
) -> None:
    decisions = DecisionLog(log, max_delay=SAFETY_S)
    for n in range(3):
        decisions.decide(n, decision("bot", n))
    decisions.flush()
    records = logged(paths, key)
    assert [record["n"] for record in records] == [0, 1, 2]
    assert json.loads(Path(mark.path).read_text())["seq"] == records[-1]["seq"]
    decisions.close()


def test_flush_waits_for_a_background_write_under_way_and_then_writes_the_rest(
    paths: Paths, key: bytes, mark: GatedMark, log: AuditLog
) -> None:
    decisions = DecisionLog(log, max_delay=0)
    mark.gate = True
    order: list[str] = []
    decisions.decide("first", decision("bot", 1))
    assert mark.entered.wait(SAFETY_S)
    decisions.decide("second", decision("bot", 2))  # after the swap: not in the blocked write
    mark.gate = False

    def flush() -> None:
        decisions.flush()
        order.append("flushed")

    flusher = threading.Thread(target=flush)
    flusher.start()
    flusher.join(0.2)  # a flush that did not wait would be done by now
    order.append("released")
    mark.release.set()
    flusher.join(SAFETY_S)
    assert order == ["released", "flushed"]
    records = logged(paths, key)
    assert [record["n"] for record in records] == [1, 2]
    assert json.loads(Path(mark.path).read_text())["seq"] == records[-1]["seq"]
    decisions.close()


def test_a_state_change_is_durable_with_the_decisions_before_it_when_add_returns(
    paths: Paths, key: bytes, mark: GatedMark, log: AuditLog
) -> None:
    decisions = DecisionLog(log, max_delay=SAFETY_S)
    decisions.decide("a", decision("bot", 1))
    decisions.decide("a", decision("bot", 1))
    decisions.add([event("grant.used", agent="bot", n=2)], state_change=True)
    records = logged(paths, key)
    assert [(r["event"], r["n"], r.get("count", 1)) for r in records] == [
        ("verify.allowed", 1, 2),
        ("grant.used", 2, 1),
    ]
    assert json.loads(Path(mark.path).read_text())["seq"] == records[-1]["seq"]
    decisions.close()
