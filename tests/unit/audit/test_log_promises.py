"""The audit log's promises (SPEC "Audit log", issue 3), each tried against the real code.

- any edit, deletion, insertion, reordering, truncation, replay of an older copy, or record
  spliced in from another log is detected (a seeded mutation harness, 1,100 mutations), and
  clean logs of every shape are not flagged (100 of them);
- concurrent writers lose and garble nothing; a writer killed mid-write leaves at most a torn
  tail, reported as a warning and repaired by the next append;
- `audit tail -f` follows another process's appends and rotations; `audit verify`,
  `find-token` and `prune` keep their contract; the ledger cannot be rolled back unnoticed;
  a log that cannot be written stops the operation it would have recorded.
"""

# ruff: noqa: S311 - seeded random makes each mutation and crash reproducible
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers.audit_lines import assert_chained, audit_lines, line_sha256
from helpers.audit_workers import (
    FileMark,
    append_many,
    append_until_killed,
    append_until_the_file_limit,
)
from helpers.processes import claims_of, command, isolated_env, ok
from helpers.support import Cli

from nhidel.actions.agents import add_agent
from nhidel.actions.audit_log import verify_log
from nhidel.actions.grants import GrantRequest, issue, revoke
from nhidel.actions.keys import init_principal
from nhidel.audit import MARK, AuditKeys, AuditLog, event
from nhidel.audit.records import BadRecord, open_line
from nhidel.audit.segments import rotated_segments
from nhidel.integrity.checker import Report, check_log
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.keys.principal import load_trust
from nhidel.paths import Paths
from nhidel.verifiers.local import Verifier

WORDS = ("edited", "deleted", "inserted", "reordered", "truncated", "forged", "replaced")
SCOPE = "repo:read:acme/api"


def assert_problem(report: Report, what: str) -> None:
    assert not report.ok, f"not detected: {what}"
    assert report.problem is not None
    assert any(word in report.problem.why for word in WORDS), (what, str(report.problem))


def assert_clean(report: Report) -> None:
    assert report.ok, str(report.problem)
    assert report.warnings == [], report.warnings


def all_lines(paths: Paths) -> list[bytes]:
    """Every line of every segment, oldest first (a torn last line too)."""
    found = []
    for segment in [*rotated_segments(paths), paths.audit_file]:
        if segment.exists():
            found += segment.read_bytes().splitlines()
    return found


def records_of(paths: Paths) -> list[dict[str, Any]]:
    """Every record of every segment (a crash fragment's line, not JSON, is left out)."""
    found = []
    for line in all_lines(paths):
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def events_of(paths: Paths) -> list[str]:
    return [record["event"] for record in records_of(paths)]


# == a log made by the real code ===========================================================


@dataclass
class Corpus:
    """A log written through init, agent add, grant, verify, revoke and bulk appends, whose
    last record is marked; `snapshots` are earlier states of the same log."""

    paths: Paths
    keystore: KeyStore
    key: bytes
    data: bytes
    mark: dict[str, Any]
    snapshots: list[bytes] = field(default_factory=list)

    @property
    def lines(self) -> list[bytes]:
        return self.data.splitlines(keepends=True)

    def restore(self, data: bytes | None = None) -> None:
        """A fresh copy of the log (or `data` in its place) and the keystore's mark."""
        for segment in rotated_segments(self.paths):
            segment.unlink()
        self.paths.audit_file.write_bytes(self.data if data is None else data)
        self.keystore.write(MARK, self.mark)


def build_corpus(root: Path, seed: int, *, bulk: int) -> Corpus:
    rng = random.Random(seed)
    paths = Paths(root, root)
    keystore = open_keystore(paths, env={})
    now = int(time.time())
    snapshots: list[bytes] = []

    def snapshot() -> None:
        snapshots.append(paths.audit_file.read_bytes())

    init_principal(paths, keystore, principal=f"alice{seed}", issuer=None, now=now)
    snapshot()
    for name, allow, auds in (
        ("reviewer", ["repo:read:acme/*", "ticket:create:queue/*"], []),
        ("release-bot", ["release:publish"], ["ci.example.com"]),
    ):
        add_agent(paths, name, allow=allow, max_ttl="1h", default_ttl=None, audiences=auds,
                  now=now, keystore=keystore)  # fmt: skip
    snapshot()
    issued = []
    for number in range(rng.randrange(6, 12)):
        agent, scope, aud = rng.choice(
            [("reviewer", SCOPE, None), ("release-bot", "release:publish", "ci.example.com")]
        )
        uses = rng.choice([None, 3, 5])
        request = GrantRequest(agent, [scope], ttl="30m", aud=aud, uses=uses,
                               reason=f"task {number} ü")  # fmt: skip
        issued.append((scope, issue(paths, keystore, request, now=now)))
    snapshot()
    with Verifier(paths, keystore) as verifier:
        for scope, (grant, token) in issued:
            verifier.check(token, [scope], aud=grant.aud, consume=grant.max_uses is not None)
            verifier.check(token, ["repo:write:acme/api"], aud=grant.aud)
    snapshot()
    doomed = [grant.id for _, (grant, _) in rng.sample(issued, 3)]
    revoke(paths, ids=doomed, reason="rotated out", now=now, keystore=keystore)
    snapshot()
    # Bulk: the same writer nhidel uses, with the real audit key from the keystore.
    log = AuditLog(paths, AuditKeys.of(keystore))
    grants = [grant for _, (grant, _) in issued]
    written = 0
    while written < bulk:
        batch = []
        for _ in range(rng.randrange(1, 12)):
            grant = rng.choice(grants)
            batch.append(event(
                rng.choice(["verify.allowed", "verify.denied", "status.published"]),
                agent=grant.agent, grant=grant.id, scopes=[SCOPE],
                reason=rng.choice([None, "ok", "scope_not_granted", "naïve 日本 \"quoted\""]),
            ))  # fmt: skip
        log.append(batch, durable=rng.random() < 0.3)
        written += len(batch)
        if rng.random() < 0.15:
            snapshot()
    # The last append is durable: the high-water mark names the last record.
    log.append([event("status.published", reason="end of corpus")])
    data = paths.audit_file.read_bytes()
    mark = keystore.read(MARK)
    assert mark is not None
    last = data.splitlines()[-1]
    assert (mark["seq"], mark["hash"]) == (len(data.splitlines()), line_sha256(last))
    assert all(len(s) < len(data) and data.startswith(s) for s in snapshots)
    return Corpus(paths, keystore, load_trust(keystore).audit_key, data, mark, snapshots)


# == the mutation harness ==================================================================

Mutation = Callable[[random.Random, Corpus, Corpus], tuple[bytes, str]]


def _join(lines: list[bytes]) -> bytes:
    return b"".join(lines)


def flip_a_byte(rng: random.Random, corpus: Corpus, _: Corpus) -> tuple[bytes, str]:
    data = bytearray(corpus.data)
    at = rng.randrange(len(data))
    data[at] ^= rng.randrange(1, 256)
    return bytes(data), f"byte {at} flipped"


def _changed(rng: random.Random, value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice([-1, 1, 1000])
    if isinstance(value, str):
        if value and rng.random() < 0.5:
            at = rng.randrange(len(value))
            return value[:at] + ("x" if value[at] != "x" else "y") + value[at + 1 :]
        return value + "x"
    if isinstance(value, list):
        return value[1:] if value else ["x"]
    if value is None:
        return rng.choice(["x", 0, []])
    return {"was": value}


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def edit_a_field(rng: random.Random, corpus: Corpus, _: Corpus) -> tuple[bytes, str]:
    """Change one value and keep the line's canonical form and its old seal."""
    lines = corpus.lines
    at = rng.randrange(len(lines))
    record = json.loads(lines[at])
    seal = record.pop("seal")
    name = rng.choice(sorted(record))
    record[name] = _changed(rng, record[name])
    lines[at] = _canonical(record)[:-1] + b',"seal":"' + seal.encode() + b'"}\n'
    return _join(lines), f"line {at + 1}: {name} edited"


def forge_a_record(rng: random.Random, corpus: Corpus, _: Corpus) -> tuple[bytes, str]:
    """Edit a record, or write a new one, chained correctly and sealed under a guessed key."""
    import hmac

    lines = corpus.lines
    guess = rng.choice([os.urandom(32), b"", corpus.key[:-1] + b"\x00", b"nhidel"])
    if rng.random() < 0.5:
        at = rng.randrange(len(lines))
        record = json.loads(lines[at])
        record.pop("seal")
        record["agent"] = "mallory"
        what = f"line {at + 1} edited and resealed"
    else:
        at = len(lines)
        last = json.loads(lines[-1])
        record = {**last, "seq": last["seq"] + 1, "prev": line_sha256(lines[-1].rstrip(b"\n")),
                  "event": "grant.revoked", "reason": "forged"}  # fmt: skip
        record.pop("seal")
        what = "a new last record forged"
    body = _canonical(record)
    seal = hmac.new(guess, body, hashlib.sha256).hexdigest()
    lines[at : at + 1 if at < len(lines) else at] = [body[:-1] + f',"seal":"{seal}"}}\n'.encode()]
    return _join(lines), what


def delete_a_line(rng: random.Random, corpus: Corpus, _: Corpus) -> tuple[bytes, str]:
    lines = corpus.lines
    at = rng.randrange(len(lines))
    del lines[at]
    return _join(lines), f"line {at + 1} of {len(lines) + 1} deleted"


def duplicate_a_line(rng: random.Random, corpus: Corpus, _: Corpus) -> tuple[bytes, str]:
    lines = corpus.lines
    at = rng.randrange(len(lines))
    lines.insert(at + 1, lines[at])
    return _join(lines), f"line {at + 1} duplicated"


def swap_two_lines(rng: random.Random, corpus: Corpus, _: Corpus) -> tuple[bytes, str]:
    lines = corpus.lines
    one, two = rng.sample(range(len(lines)), 2)
    lines[one], lines[two] = lines[two], lines[one]
    return _join(lines), f"lines {one + 1} and {two + 1} swapped"


def insert_a_copy_elsewhere(rng: random.Random, corpus: Corpus, _: Corpus) -> tuple[bytes, str]:
    lines = corpus.lines
    source = rng.randrange(len(lines))
    target = rng.randrange(len(lines) + 1)
    lines.insert(target, lines[source])
    return _join(lines), f"a copy of line {source + 1} inserted before line {target + 1}"


def truncate_the_tail(rng: random.Random, corpus: Corpus, _: Corpus) -> tuple[bytes, str]:
    lines = corpus.lines
    drop = rng.randrange(1, min(len(lines), 40) + 1)
    kept = _join(lines[: len(lines) - drop])
    if rng.random() < 0.3:  # cut inside a record: what is left looks like a crash's torn line
        cut = rng.randrange(1, len(lines[len(lines) - drop]) - 1)
        return kept + lines[len(lines) - drop][:cut], f"cut {cut} bytes into the last {drop}"
    return kept, f"last {drop} records cut off"


def restore_an_older_copy(rng: random.Random, corpus: Corpus, _: Corpus) -> tuple[bytes, str]:
    at = rng.randrange(len(corpus.snapshots))
    older = corpus.snapshots[at]
    return older, f"replaced by snapshot {at} ({len(older.splitlines())} records)"


def splice_from_another_log(rng: random.Random, corpus: Corpus, other: Corpus) -> tuple[bytes, str]:
    """A genuine record of another home (its own key), put in place, inserted or appended."""
    lines, foreign = corpus.lines, other.lines
    how = rng.choice(["replace", "insert", "append"])
    if how == "replace":
        at = rng.randrange(min(len(lines), len(foreign)))
        lines[at] = foreign[at]  # the same seq, so only the seal and the chain can tell
    elif how == "insert":
        at = rng.randrange(len(lines))
        lines.insert(at, rng.choice(foreign))
    else:
        at = len(lines)
        lines.append(rng.choice(foreign))
    return _join(lines), f"{how} at line {at + 1} from another log"


MUTATIONS: dict[str, Mutation] = {
    "flip_a_byte": flip_a_byte,
    "edit_a_field": edit_a_field,
    "forge_a_record": forge_a_record,
    "delete_a_line": delete_a_line,
    "duplicate_a_line": duplicate_a_line,
    "swap_two_lines": swap_two_lines,
    "insert_a_copy_elsewhere": insert_a_copy_elsewhere,
    "truncate_the_tail": truncate_the_tail,
    "restore_an_older_copy": restore_an_older_copy,
    "splice_from_another_log": splice_from_another_log,
}
PER_KIND = 110  # 10 kinds: 1,100 mutations


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_every_random_mutation_of_a_sealed_log_is_detected(tmp_path: Path, kind: str) -> None:
    seed = sorted(MUTATIONS).index(kind)
    corpus = build_corpus(tmp_path / "home", seed, bulk=250 + 20 * seed)
    other = build_corpus(tmp_path / "other", seed + 100, bulk=250)
    assert len(corpus.lines) >= 280
    assert_clean(verify_log(corpus.paths, corpus.keystore))
    rng = random.Random(f"mutations-{kind}")
    missed = []
    for number in range(PER_KIND):
        mutated, what = MUTATIONS[kind](rng, corpus, other)
        assert mutated != corpus.data, what
        corpus.restore(mutated)
        report = verify_log(corpus.paths, corpus.keystore)
        if report.ok:
            missed.append(f"#{number} {what}: ok, warnings {report.warnings}")
        else:
            assert_problem(report, what)
    assert missed == [], f"{len(missed)} of {PER_KIND} {kind} mutations not detected"
    corpus.restore()
    assert_clean(verify_log(corpus.paths, corpus.keystore))  # the harness left it as it found it


# == clean logs of every shape pass ========================================================


def _write_clean_log(
    root: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[Paths, KeyStore, int]:
    """A log of a random size and shape, written only through nhidel: batches, unmarked group
    commits, crash fragments and their recovery, rotation, pruning. Returns its record count."""
    rng = random.Random(seed)
    rotating = seed % 3 == 0
    if rotating:
        monkeypatch.setenv("NHIDEL_AUDIT_SEGMENT_BYTES", "4096")
    else:
        monkeypatch.delenv("NHIDEL_AUDIT_SEGMENT_BYTES", raising=False)
    paths = Paths(root, root)
    keystore = open_keystore(paths, env={})
    init_principal(paths, keystore, principal="carol", issuer=None, now=int(time.time()))
    log = AuditLog(paths, AuditKeys.of(keystore))
    for _ in range(rng.randrange(1, 60)):
        if not rotating and rng.random() < 0.1:
            # A crash's torn fragment (any bytes but a newline), repaired by the next append.
            tail = bytes(rng.choice(range(11, 256)) for _ in range(rng.randrange(300)))
            fragment = b"\xff" + tail  # never JSON, never a newline
            with paths.audit_file.open("ab") as handle:
                handle.write(fragment)
        batch = [
            event(rng.choice(["verify.allowed", "verify.denied", "status.published"]),
                  agent=rng.choice(["a", "b", None]), reason="é" * rng.randrange(0, 200),
                  scopes=[SCOPE] * rng.randrange(0, 3))
            for _ in range(rng.randrange(1, 8))
        ]  # fmt: skip
        log.append(batch, durable=rng.random() < 0.5)
    if rotating and seed % 2 == 0:
        from nhidel.actions.audit_log import prune

        prune(paths, keystore, keep=rng.randrange(0, 3))
    log.append([event("status.published")])  # durable, so the mark names the last record
    return paths, keystore, len(records_of(paths))


def test_a_hundred_clean_logs_of_every_shape_all_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes = {"rotated": 0, "recovered": 0, "pruned": 0}
    for seed in range(100):
        paths, keystore, count = _write_clean_log(tmp_path / f"log{seed}", seed, monkeypatch)
        report = verify_log(paths, keystore)
        assert_clean(report)
        last = all_lines(paths)[-1]
        assert (report.records, report.head_seq) == (count, records_of(paths)[-1]["seq"]), seed
        assert report.head_hash == line_sha256(last) == keystore.read(MARK)["hash"], seed
        names = set(events_of(paths))
        shapes["rotated"] += "log.rotated" in names
        shapes["recovered"] += "log.recovered" in names
        shapes["pruned"] += "log.pruned" in names
    assert all(shapes.values()), shapes  # the hundred logs did include every shape


# == concurrent writers ====================================================================


def test_eight_processes_appending_250_records_each_lose_and_garble_nothing(
    tmp_path: Path,
) -> None:
    writers, appends = 8, 250
    key = os.urandom(32)
    home, mark = tmp_path / "home", tmp_path / "mark.json"
    home.mkdir()
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(writers)
    processes = [
        context.Process(target=append_many,
                        args=(str(home), key, str(mark), ready, writer, appends))
        for writer in range(writers)
    ]  # fmt: skip
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout=90)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    assert [process.exitcode for process in processes] == [0] * writers

    lines = audit_lines(home / "audit.jsonl")
    records = assert_chained(lines, key=key)  # seals and chain, recomputed independently
    assert [record["seq"] for record in records] == list(range(1, writers * appends + 1))
    for writer in range(writers):
        mine = [r["reason"] for r in records if r["agent"] == f"writer-{writer}"]
        assert mine == [str(number) for number in range(appends)], writer
    # The mark moved only forward, and ends on the last record.
    final = FileMark(mark).read(MARK)
    assert final is not None
    assert (final["seq"], final["hash"]) == (writers * appends, line_sha256(lines[-1]))
    report = check_log(Paths(home, home), key, FileMark(mark).read(MARK), None)
    assert_clean(report)
    assert report.records == writers * appends


# == crashes ===============================================================================


def _recover_and_check(home: Path, key: bytes, mark: FileMark) -> tuple[bool, int]:
    """After a crash: the log verifies (at most a torn-tail warning); the next append records
    the fragment in a log.recovered record; then it verifies clean. Returns (torn?, records
    before the repair)."""
    paths = Paths(home, home)
    before = check_log(paths, key, mark.read(MARK), None)
    assert before.ok, str(before.problem)
    data = b"".join(
        segment.read_bytes() for segment in [*rotated_segments(paths), paths.audit_file]
        if segment.exists()
    )  # fmt: skip
    fragment = data[data.rfind(b"\n") + 1 :]
    if fragment:
        assert len(before.warnings) == 1 and "torn" in before.warnings[0], before.warnings
    else:
        assert before.warnings == []
    try:  # cut just before its newline, a record is whole: kept as a record, not "recovered"
        open_line(fragment, key)
        fragment = b""
    except BadRecord:
        pass
    appended = AuditLog(paths, AuditKeys(key, mark)).append([event("agent.added", agent="next")])
    if fragment:
        recovered = appended[0]
        assert recovered["event"] == "log.recovered", appended
        assert recovered["fragment_bytes"] == len(fragment)
        assert recovered["fragment_sha256"] == hashlib.sha256(fragment).hexdigest()
    assert [r["event"] for r in appended][-1] == "agent.added"
    after = check_log(paths, key, mark.read(MARK), None)
    assert_clean(after)
    assert after.records == before.records + len(appended)
    return bool(fragment), before.records


def _mark_a_first_record(home: Path, key: bytes, mark: Path) -> None:
    AuditLog(Paths(home, home), AuditKeys(key, FileMark(mark))).append([event("agent.added")])


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_leaves_a_log_that_verifies_and_repairs(
    tmp_path: Path,
) -> None:
    rng = random.Random(20240603)
    key = os.urandom(32)
    context = multiprocessing.get_context("fork")
    runs, torn, wrote, rotated = 50, 0, 0, 0
    for run in range(runs):
        home, mark = tmp_path / f"run{run}", tmp_path / f"mark{run}.json"
        home.mkdir()
        _mark_a_first_record(home, key, mark)
        segment_bytes = rng.choice([None, 300_000])  # some runs rotate while being killed
        child = context.Process(target=append_until_killed,
                                args=(str(home), key, str(mark), run, segment_bytes))  # fmt: skip
        child.start()
        time.sleep(rng.uniform(0.005, 0.06))
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(timeout=10)
        assert child.exitcode == -signal.SIGKILL
        was_torn, records = _recover_and_check(home, key, FileMark(mark))
        torn, wrote = torn + was_torn, wrote + (records > 1)
        rotated += bool(rotated_segments(Paths(home, home)))
        shutil.rmtree(home)
    # Most kills landed while appending, some during rotation; a torn line is rarer (the
    # next test makes one every time).
    assert wrote >= runs * 0.8 and rotated >= 5, (wrote, rotated)
    print(f"{torn} of {runs} kills tore a line, {rotated} runs had rotated")


def test_a_write_cut_at_a_random_byte_leaves_a_torn_tail_that_the_next_append_repairs(
    tmp_path: Path,
) -> None:
    # RLIMIT_FSIZE makes the kernel cut a write at an exact byte, then the writer dies by
    # SIGKILL: every run leaves a torn line, at a different place inside a record.
    rng = random.Random(7)
    key = os.urandom(32)
    context = multiprocessing.get_context("fork")
    for run in range(30):
        home, mark = tmp_path / f"run{run}", tmp_path / f"mark{run}.json"
        home.mkdir()
        _mark_a_first_record(home, key, mark)
        limit = (home / "audit.jsonl").stat().st_size + rng.randrange(1, 60_000)
        child = context.Process(target=append_until_the_file_limit,
                                args=(str(home), key, str(mark), limit, run))  # fmt: skip
        child.start()
        child.join(timeout=30)
        assert child.exitcode == -signal.SIGKILL, run
        assert (home / "audit.jsonl").stat().st_size == limit
        assert _recover_and_check(home, key, FileMark(mark))[0], run


# == audit tail -f =========================================================================


class Follower:
    """`nhidel audit tail -f --json` in its own process; its lines arrive on a queue."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            command("audit", "tail", "-f", "--json", *args), env=env, cwd=env["HOME"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put((time.monotonic(), line))

    def next(self, timeout: float) -> tuple[float, dict[str, Any]]:
        try:
            when, line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"audit tail -f printed nothing for {timeout}s") from None
        return when, json.loads(line)

    def stop(self) -> tuple[int, str]:
        """Interrupt it (as Ctrl-C does) and return its exit status and stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            _, stderr = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return self.process.returncode, stderr


@pytest.fixture
def follow() -> Iterator[Callable[..., Follower]]:
    started: list[Follower] = []

    def launch(env: dict[str, str], *args: str) -> Follower:
        started.append(Follower(env, *args))
        return started[-1]

    yield launch
    for follower in started:
        follower.stop()


@pytest.fixture
def file_env(tmp_path: Path) -> dict[str, str]:
    """A home with a file keystore, initialised by the real CLI in separate processes."""
    secret = tmp_path / "passphrase"
    secret.write_text("tail passphrase\n")
    secret.chmod(0o600)
    env = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(secret))
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    return env


@pytest.mark.slow
def test_tail_follow_prints_a_grant_made_by_another_process_within_a_second(
    file_env: dict[str, str], follow: Callable[..., Follower]
) -> None:
    follower = follow(file_env, "-n", "1")
    _, last = follower.next(timeout=20)  # the newest record: it has read the log
    assert last["event"] == "agent.added" and last["agent"] == "reviewer"

    token = ok(file_env, "grant", "reviewer", "--scope", SCOPE).stdout.strip()
    granted = time.monotonic()
    arrived, record = follower.next(timeout=5)
    assert record["event"] == "grant.issued" and record["grant"] == claims_of(token)["jti"]
    assert record["seq"] == last["seq"] + 1
    assert arrived - granted < 1.0  # it was on disk before `grant` exited

    # The lag from an append to its line, measured from the appending side.
    paths = Paths.from_env({"NHIDEL_HOME": file_env["NHIDEL_HOME"]})
    seal = open_keystore(paths, env=file_env)
    appended = AuditLog(paths, AuditKeys.of(seal)).append([event("status.published")])
    written = time.monotonic()
    arrived, record = follower.next(timeout=5)
    assert record["seq"] == appended[0]["seq"]
    assert arrived - written < 1.0, f"tail -f lagged {arrived - written:.2f}s"

    code, stderr = follower.stop()
    assert code == 0 and "Traceback" not in stderr, stderr


# == rotation ==============================================================================


@pytest.fixture
def rotating(monkeypatch: pytest.MonkeyPatch, ready: Cli, paths: Paths) -> Paths:
    """4 KiB segments, and enough state changes through the CLI for several of them."""
    monkeypatch.setenv("NHIDEL_AUDIT_SEGMENT_BYTES", "4096")
    for number in range(6):
        token = ready.ok("grant", "reviewer", "--scope", SCOPE, "--reason", f"r{number}").stdout
        ready.ok("verify", "-", "--scope", SCOPE, input=token)
        ready("verify", "-", "--scope", "repo:write:acme/api", input=token)
    log = AuditLog(paths, AuditKeys.of(open_keystore(paths, env={})))
    for number in range(40):
        log.append([event("status.published", reason=f"bulk {number} " + "z" * 120)])
    assert len(rotated_segments(paths)) >= 4
    return paths


def _verify(paths: Paths) -> Report:
    return verify_log(paths, open_keystore(paths, env={}))


def test_verify_spans_every_rotated_segment(rotating: Paths, ready: Cli) -> None:
    segments = rotated_segments(rotating)
    total = len(all_lines(rotating))
    report = _verify(rotating)
    assert_clean(report)
    assert report.records == total and report.head_seq == total
    # Each later segment opens with a log.rotated record naming the one before it.
    for before, after in zip(segments, [*segments[1:], rotating.audit_file], strict=True):
        first = json.loads(audit_lines(after)[0])
        assert (first["event"], first["previous_segment"]) == ("log.rotated", before.name)
        assert int(before.name.split(".")[1]) == json.loads(audit_lines(before)[0])["seq"]
    result = ready("audit", "verify")
    assert result.exit_code == 0 and f"ok: {total} records" in result.stderr


@pytest.mark.parametrize("which", ["oldest", "middle", "newest rotated"])
def test_deleting_a_rotated_segment_is_a_problem_named_where_the_gap_shows(
    rotating: Paths, which: str
) -> None:
    segments = [*rotated_segments(rotating), rotating.audit_file]
    at = {"oldest": 0, "middle": (len(segments) - 1) // 2, "newest rotated": len(segments) - 2}
    doomed = segments[at[which]]
    first_seq = json.loads(audit_lines(doomed)[0])["seq"]
    doomed.unlink()
    report = _verify(rotating)
    assert_problem(report, f"{which} segment deleted")
    problem = report.problem
    assert problem is not None and "deleted" in problem.why
    if which == "oldest":  # nothing before it to compare with: the log starts too late
        now_first = json.loads(audit_lines(segments[1])[0])["seq"]
        assert (problem.segment, problem.seq) == ("(start)", now_first)
    else:  # the next segment's first record is where the records go missing
        assert (problem.segment, problem.line) == (segments[at[which] + 1].name, 1)
        assert str(first_seq) in problem.why


def test_swapping_the_contents_of_two_rotated_segments_is_a_problem(rotating: Paths) -> None:
    one, two = rotated_segments(rotating)[1:3]
    first, second = one.read_bytes(), two.read_bytes()
    one.write_bytes(second)
    two.write_bytes(first)
    assert_problem(_verify(rotating), "two segments swapped")


def test_prune_keep_1_is_recorded_and_the_pruned_log_verifies(rotating: Paths, ready: Cli) -> None:
    before = rotated_segments(rotating)
    result = ready.ok("audit", "prune", "--keep", "1")
    assert f"pruned {len(before) - 1} segments" in result.stderr
    assert rotated_segments(rotating) == before[-1:]
    pruned = [json.loads(line) for line in all_lines(rotating)
              if json.loads(line)["event"] == "log.pruned"]  # fmt: skip
    assert len(pruned) == 1
    assert pruned[0]["segments"] == [p.name for p in before[:-1]]
    first = json.loads(audit_lines(before[-1])[0])
    assert pruned[0]["pruned_through"] == first["seq"] - 1
    assert_clean(_verify(rotating))
    assert ready("audit", "verify").exit_code == 0
    # Pruning excuses exactly what it recorded: deleting one more segment is still caught.
    before[-1].unlink()
    assert_problem(_verify(rotating), "a kept segment deleted after pruning")


def test_prune_keeping_every_segment_changes_nothing(rotating: Paths, ready: Cli) -> None:
    before = rotating.audit_file.read_bytes()
    segments = rotated_segments(rotating)
    assert "pruned 0 segments" in ready.ok("audit", "prune", "--keep", "99").stderr
    assert rotated_segments(rotating) == segments and rotating.audit_file.read_bytes() == before


@pytest.mark.slow
def test_tail_follow_keeps_following_across_rotations(
    rotating: Paths, tmp_path: Path, follow: Callable[..., Follower]
) -> None:
    env = isolated_env(tmp_path)  # the same NHIDEL_HOME as the in-process fixtures
    assert Path(env["NHIDEL_HOME"]) == rotating.state_dir
    follower = follow(env, "-n", "1")
    _, last = follower.next(timeout=20)
    log = AuditLog(rotating, AuditKeys.of(open_keystore(rotating, env={})))
    segments = len(rotated_segments(rotating))
    seen = [last["seq"]]
    for number in range(30):  # about three rotations
        log.append([event("verify.allowed", reason=f"follow {number} " + "w" * 300)])
        if number % 6 == 5:  # under a segment between pauses: one rotation per poll at most
            time.sleep(0.25)
    assert len(rotated_segments(rotating)) >= segments + 2
    head = json.loads(all_lines(rotating)[-1])["seq"]
    while seen[-1] < head:
        seen.append(follower.next(timeout=5)[1]["seq"])
    assert seen == list(range(last["seq"], head + 1))  # every record once, in order


# == the ledger against the log ============================================================


def _ledger(paths: Paths, sql: str, *args: Any) -> None:
    with sqlite3.connect(paths.ledger_file) as db:
        assert db.execute(sql, args).rowcount == 1


def test_a_ledger_rolled_back_to_before_a_revocation_is_a_problem_naming_the_grant(
    ready: Cli, paths: Paths
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    grant_id = claims_of(token)["jti"]
    ready.ok("revoke", grant_id[:8])
    assert_clean(_verify(paths))
    _ledger(paths, "UPDATE grants SET revoked_at = NULL, revoke_reason = NULL WHERE id = ?",
            grant_id)  # fmt: skip
    report = _verify(paths)
    assert not report.ok and grant_id in report.problem.why  # type: ignore[union-attr]
    result = ready("audit", "verify")
    assert result.exit_code == 5 and grant_id in result.stderr
    # ... and verify does not take the row's word for it: the sealed state says revoked.
    denied = ready("verify", "-", "--scope", SCOPE, input=token)
    assert denied.exit_code == 1 and "revoked" in denied.stderr


@pytest.mark.parametrize("reset_to", [0, 1])
def test_a_ledger_whose_use_count_was_reset_is_a_problem_naming_the_grant(
    ready: Cli, paths: Paths, reset_to: int
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE, "--uses", "3").stdout.strip()
    grant_id = claims_of(token)["jti"]
    for _ in range(2):
        ready.ok("verify", "-", "--scope", SCOPE, "--consume", input=token)
    assert_clean(_verify(paths))
    _ledger(paths, "UPDATE grants SET uses = ? WHERE id = ?", reset_to, grant_id)
    report = _verify(paths)
    assert not report.ok, f"uses reset 2 -> {reset_to} not detected"
    assert grant_id in report.problem.why and "uses" in report.problem.why  # type: ignore[union-attr]
    assert ready("audit", "verify").exit_code == 5


# == a log that cannot be written ==========================================================


PAGE = 4096


def _fill_the_last_page(paths: Paths) -> None:
    """Append marked records until the log ends less than 100 bytes short of a page boundary,
    so a file system with no free page cannot take even a short record."""
    log = AuditLog(paths, AuditKeys.of(open_keystore(paths, env={})))
    padding = 0
    for _ in range(20):
        size = paths.audit_file.stat().st_size
        if -size % PAGE < 100:
            return
        log.append([event("status.published", reason="p" * padding)])
        grown = paths.audit_file.stat().st_size - size
        base = grown - padding  # the length of such a record with an empty reason
        padding = (-(size + grown) % PAGE - 50 - base) % PAGE
    raise AssertionError("could not end the log at a page boundary")


def _mount_tiny_tmpfs(where: Path) -> bool:
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# (A link or a directory planted in the log's place is refused before any write: see
# tests/integration/test_planted_paths.py.)
@pytest.fixture
def broken_log(request: pytest.FixtureRequest, ready: Cli, paths: Paths,
               tmp_path: Path) -> Any:  # fmt: skip
    """Fill the file system under audit.jsonl; returns a function that frees it again."""
    tiny = tmp_path / "tiny"
    if not _mount_tiny_tmpfs(tiny):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    _fill_the_last_page(paths)
    shutil.copyfile(paths.audit_file, tiny / "audit.jsonl")
    # A file of the full file system mounted in the log's place (nhidel follows no link).
    mounted = subprocess.run(
        ["mount", "--bind", str(tiny / "audit.jsonl"), str(paths.audit_file)],
        capture_output=True,
        check=False,
    )
    request.addfinalizer(
        lambda: [subprocess.run(["umount", "-l", str(where)], capture_output=True,
                                timeout=10, check=False)
                 for where in (paths.audit_file, tiny)]
    )  # fmt: skip
    assert mounted.returncode == 0, mounted.stderr
    filler = tiny / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * PAGE)
        except OSError:
            pass

    def repair() -> None:
        filler.unlink()

    repair.why = "No space left on device"  # type: ignore[attr-defined]
    return repair


def _ledger_ids(paths: Paths) -> list[str]:
    with sqlite3.connect(paths.ledger_file) as db:
        return [row[0] for row in db.execute("SELECT id FROM grants ORDER BY rowid")]


def test_an_unwritable_log_refuses_the_grant_with_one_line_and_no_token(
    broken_log: Any, ready: Cli, paths: Paths
) -> None:
    ready.ok("list")  # the ledger exists, so "no row" below is a real check
    rows = _ledger_ids(paths)
    result = ready("grant", "reviewer", "--scope", SCOPE)
    assert result.exit_code == 1, result.stderr
    assert result.stdout == ""  # no token: a grant the log does not hold never leaves nhidel
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: could not write ") and "audit.jsonl" in lines[0], lines
    assert broken_log.why in lines[0], lines
    assert len(lines) <= 2 and all(line.startswith("hint: ") for line in lines[1:]), lines
    assert "Traceback" not in result.stderr
    assert _ledger_ids(paths) == rows

    broken_log()  # writable again: the next grant works and the log verifies clean
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    assert _ledger_ids(paths) == [*rows, claims_of(token)["jti"]]
    assert_clean(_verify(paths))


def test_an_unwritable_log_refuses_a_revocation_and_the_grant_stays_active(
    ready: Cli, paths: Paths, tmp_path: Path
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    grant_id = claims_of(token)["jti"]
    shutil.move(paths.audit_file, tmp_path / "audit.saved")
    paths.audit_file.symlink_to("/dev/full")
    result = ready("revoke", grant_id)
    assert result.exit_code != 0 and "audit.jsonl" in result.stderr
    paths.audit_file.unlink()
    shutil.move(tmp_path / "audit.saved", paths.audit_file)
    shown = json.loads(ready.ok("show", grant_id, "--json").stdout)
    assert shown["status"] == "active"  # the log and the ledger still agree
    assert_clean(_verify(paths))


# == find-token ============================================================================


def test_find_token_finds_the_issue_and_the_decisions_of_that_token_only(
    ready: Cli, paths: Paths, tmp_path: Path
) -> None:
    mine = ready.ok("grant", "reviewer", "--scope", SCOPE, "--uses", "2").stdout.strip()
    other = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    ready.ok("verify", "-", "--scope", SCOPE, "--consume", input=mine)
    ready("verify", "-", "--scope", "repo:write:acme/api", input=mine)
    ready.ok("verify", "-", "--scope", SCOPE, input=other)

    found = ready.ok("audit", "find-token", "--json", input=mine + "\n").stdout.splitlines()
    records = [json.loads(line) for line in found]
    assert [r["event"] for r in records] == [
        "grant.issued", "verify.allowed", "grant.used", "verify.denied"]  # fmt: skip
    assert {r["grant"] for r in records} == {claims_of(mine)["jti"]}

    found = ready.ok("audit", "find-token", "--json", input=other).stdout.splitlines()
    theirs = [json.loads(line) for line in found]
    assert [r["event"] for r in theirs] == ["grant.issued", "verify.allowed"]
    assert {r["grant"] for r in theirs} == {claims_of(other)["jti"]}

    # A token this home never saw (minted by another home) has no records.
    elsewhere = {"NHIDEL_HOME": str(tmp_path / "elsewhere")}
    assert ready("init", "--principal", "eve", env=elsewhere).exit_code == 0
    assert ready("agent", "add", "reviewer", "--allow", SCOPE, env=elsewhere).exit_code == 0
    stranger = ready("grant", "reviewer", "--scope", SCOPE, env=elsewhere).stdout.strip()
    assert stranger.count(".") == 2
    result = ready("audit", "find-token", input=stranger)
    assert result.exit_code == 3 and result.stdout == ""
    assert "no records" in result.stderr

    # The log holds fingerprints, never a token or a piece of one.
    content = b"".join(all_lines(paths))
    for token in (mine, other):
        for piece in (token, *token.split(".")[1:]):
            assert piece.encode() not in content


def test_find_token_without_a_token_on_stdin_is_a_usage_error(ready: Cli) -> None:
    result = ready("audit", "find-token", input="")
    assert result.exit_code == 2 and "no token on stdin" in result.stderr


# == audit verify on the command line ======================================================


@pytest.fixture
def logged(ready: Cli, paths: Paths) -> Paths:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    ready.ok("verify", "-", "--scope", SCOPE, input=token)
    ready.ok("revoke", claims_of(token)["jti"])
    return paths


def test_audit_verify_on_a_clean_log_exits_0_with_the_count_and_head(
    ready: Cli, logged: Paths
) -> None:
    lines = audit_lines(logged.audit_file)
    result = ready("audit", "verify")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    expected = f"ok: {len(lines)} records; head seq {len(lines)} {line_sha256(lines[-1])}"
    assert result.stderr.strip() == expected


def _edit_line(paths: Paths, number: int) -> None:
    lines = paths.audit_file.read_bytes().splitlines(keepends=True)
    assert b'"reviewer"' in lines[number - 1]
    lines[number - 1] = lines[number - 1].replace(b'"reviewer"', b'"reviewex"', 1)
    paths.audit_file.write_bytes(b"".join(lines))


def test_audit_verify_on_an_edited_record_exits_5_naming_its_line_and_seq(
    ready: Cli, logged: Paths
) -> None:
    _edit_line(logged, 2)  # agent.added
    result = ready("audit", "verify")
    assert result.exit_code == 5
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: ")
    assert "audit.jsonl line 2" in lines[0] and "edited" in lines[0]


def test_audit_verify_on_a_deleted_record_names_the_line_and_seq_where_it_shows(
    ready: Cli, logged: Paths
) -> None:
    lines = logged.audit_file.read_bytes().splitlines(keepends=True)
    del lines[2]
    logged.audit_file.write_bytes(b"".join(lines))
    result = ready("audit", "verify")
    assert result.exit_code == 5
    assert "audit.jsonl line 3 (seq 4)" in result.stderr and "deleted" in result.stderr


def test_audit_verify_json_has_the_documented_shape(ready: Cli, logged: Paths) -> None:
    result = ready("audit", "verify", "--json")
    assert result.exit_code == 0
    clean = json.loads(result.stdout)
    assert set(clean) == {"ok", "records", "head", "warnings", "error"}
    lines = audit_lines(logged.audit_file)
    assert clean == {"ok": True, "records": len(lines), "warnings": [], "error": None,
                     "head": {"seq": len(lines), "hash": line_sha256(lines[-1])}}  # fmt: skip

    _edit_line(logged, 2)
    result = ready("audit", "verify", "--json")
    assert result.exit_code == 5
    bad = json.loads(result.stdout)
    assert set(bad) == {"ok", "records", "head", "warnings", "error"} and bad["ok"] is False
    assert set(bad["error"]) == {"segment", "line", "seq", "where", "why"}
    assert (bad["error"]["segment"], bad["error"]["line"]) == ("audit.jsonl", 2)
    assert bad["error"]["where"] == "in audit.jsonl line 2"
    assert "edited" in bad["error"]["why"]
    assert bad["head"] == {"seq": 1, "hash": line_sha256(lines[0])}  # what was verified


def test_audit_verify_quiet_prints_nothing_and_keeps_the_exit_code(
    ready: Cli, logged: Paths
) -> None:
    result = ready("audit", "verify", "-q")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    _edit_line(logged, 2)
    result = ready("audit", "verify", "-q")
    assert (result.exit_code, result.stdout, result.stderr) == (5, "", "")


def test_audit_verify_reports_a_torn_tail_as_a_warning_with_exit_0(
    ready: Cli, logged: Paths
) -> None:
    with logged.audit_file.open("ab") as handle:
        handle.write(b'{"agent":"reviewer","event":"grant.iss')
    result = ready("audit", "verify")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("warning: ") and "torn" in result.stderr
    report = json.loads(ready("audit", "verify", "--json").stdout)
    assert report["ok"] is True and len(report["warnings"]) == 1
    # The next state change repairs it, and the log is clean again.
    ready.ok("grant", "reviewer", "--scope", SCOPE)
    assert json.loads(ready("audit", "verify", "--json").stdout)["warnings"] == []
    assert "log.recovered" in events_of(logged)


def test_audit_verify_without_the_keystore_says_to_run_init(cli: Cli) -> None:
    result = cli("audit", "verify")
    assert result.exit_code == 4 and "nhidel init" in result.stderr


# == found by review: torn lines at rotation, tail truncation, follow, --since ================


def _rotated_home(paths: Paths, records: int = 40) -> tuple[AuditLog, FileMark, bytes]:
    key = os.urandom(32)
    mark = FileMark(paths.state_dir.parent / "mark.json")
    log = AuditLog(paths, AuditKeys(key, mark))
    for number in range(records):
        log.append([event("agent.added", agent=f"a{number}", reason="x" * 60)])
    return log, mark, key


def test_a_torn_line_is_recovered_even_when_the_next_append_rotates(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NHIDEL_AUDIT_SEGMENT_BYTES", "4096")
    log, mark, key = _rotated_home(paths, records=5)
    fragment = b'{"agent":"a","event":"verify.allowed","reason":"' + b"t" * 4096
    with paths.audit_file.open("ab") as handle:  # a crash tore a large write
        handle.write(fragment)
    log.append([event("agent.added", agent="after the crash")])
    assert "log.recovered" in events_of(paths)
    assert_clean(check_log(paths, key, mark.read(MARK), None))


def test_an_unterminated_line_inside_the_log_is_a_problem_not_a_warning(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NHIDEL_AUDIT_SEGMENT_BYTES", "4096")
    _, mark, key = _rotated_home(paths)
    with rotated_segments(paths)[0].open("ab") as handle:
        handle.write(b'{"agent":"mallory","event":"grant.issued"')
    assert_problem(check_log(paths, key, mark.read(MARK), None), "garbage inside the log")


def test_a_segment_whose_first_write_was_torn_still_rotates(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NHIDEL_AUDIT_SEGMENT_BYTES", "4096")
    key = os.urandom(32)
    paths.state_dir.mkdir(parents=True)
    paths.audit_file.write_bytes(b'{"agent":null,"event":"key.cre')  # the first write, torn
    log = AuditLog(paths, AuditKeys(key, None))
    for number in range(40):
        log.append([event("agent.added", agent=f"a{number}", reason="x" * 60)])
    assert rotated_segments(paths)
    assert check_log(paths, key, None, None).ok


def test_cutting_off_the_verify_decisions_after_the_last_state_change_is_detected(
    ready: Cli, paths: Paths
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    ready.ok("verify", "-", "--scope", SCOPE, input=token)
    lines = paths.audit_file.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[-1])["event"] == "verify.allowed"
    paths.audit_file.write_bytes(b"".join(lines[:-1]))
    assert ready("audit", "verify").exit_code == 5


@pytest.mark.slow
def test_tail_follow_misses_nothing_when_several_rotations_happen_between_polls(
    rotating: Paths, tmp_path: Path, follow: Callable[..., Follower]
) -> None:
    follower = follow(isolated_env(tmp_path), "-n", "1")
    _, last = follower.next(timeout=20)
    log = AuditLog(rotating, AuditKeys.of(open_keystore(rotating, env={})))
    for number in range(60):  # a burst: several 4 KiB segments in a few milliseconds
        log.append([event("verify.allowed", reason=f"burst {number} " + "w" * 300)],
                   durable=False)  # fmt: skip
    head = json.loads(all_lines(rotating)[-1])["seq"]
    seen = [last["seq"]]
    while seen[-1] < head:
        seen.append(follower.next(timeout=5)[1]["seq"])
    assert seen == list(range(last["seq"], head + 1))


def test_follow_fills_a_gap_left_by_a_file_rotated_away_before_it_was_opened(
    rotating: Paths,
) -> None:
    from nhidel.audit.reader import follow
    from nhidel.audit.segments import segment_first_seq

    # Start after a record of an older segment, as a follower does whose file was rotated
    # twice between two polls: the file it opens next begins later than it has read.
    current_first = json.loads(rotating.audit_file.read_bytes().splitlines()[0])["seq"]
    older = rotated_segments(rotating)[-1]
    start_after = segment_first_seq(older)
    head = json.loads(all_lines(rotating)[-1])["seq"]
    assert current_first > start_after + 1
    seen: list[int] = []
    for record in follow(rotating, start_after=start_after, stop=lambda: seen[-1:] == [head]):
        seen.append(record["seq"])  # noqa: PERF401 - `stop` reads it as it grows
    assert seen == list(range(start_after + 1, head + 1))


def test_tail_since_a_second_includes_records_made_later_in_that_second(ready: Cli) -> None:
    ready.ok("grant", "reviewer", "--scope", SCOPE)
    records = [json.loads(line) for line in
               ready.ok("audit", "tail", "--json", "-n", "100").stdout.splitlines()]  # fmt: skip
    issued = next(r for r in records if r["event"] == "grant.issued")
    since = issued["time"][:19] + "Z"  # the second it was written in
    assert datetime.fromisoformat(issued["time"]) > datetime.fromisoformat(since)
    shown = ready.ok("audit", "tail", "--json", "--since", since, "--event", "grant.issued")
    assert [json.loads(line)["seq"] for line in shown.stdout.splitlines()] == [issued["seq"]]


def test_tail_since_accepts_an_iso_8601_duration(ready: Cli) -> None:
    result = ready("audit", "tail", "--json", "--since", "PT1H")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2  # key.created, agent.added
