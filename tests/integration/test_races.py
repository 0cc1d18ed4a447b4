"""Real concurrency: several nhidel processes at once against one home.

To make an overlap certain instead of lucky, a test holds the ledger's write lock itself
(`BEGIN IMMEDIATE` on ledger.db): grant processes then read the ledger, sign, and block on that
lock. The test waits until each one sleeps in SQLite's busy handler, and may SIGSTOP it there,
so it can choose who gets the lock first once it lets go. The file keystore keeps these tests
free of D-Bus.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers.audit_lines import assert_chained, audit_lines
from helpers.processes import (
    Run,
    assert_clean_error,
    audit_records,
    claims_of,
    finish,
    isolated_env,
    list_all,
    ok,
    start,
)

from nhidel.audit import AuditKeys, AuditLog, event
from nhidel.integrity.checker import check_log
from nhidel.paths import Paths

pytestmark = pytest.mark.slow

GRANTS = 8
SCOPE = "repo:read:acme/api"
GRANT_ARGS = ("grant", "reviewer", "--scope", SCOPE, "--ttl", "30m")
BLOCK_TIMEOUT = 30.0
Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """`start`, plus a teardown that never leaves a stopped or running nhidel behind."""
    started: list[subprocess.Popen[str]] = []

    def launch(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
        started.append(start(env, *args))
        return started[-1]

    yield launch
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.communicate(timeout=10)


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """A file keystore with its passphrase, and nothing initialised yet."""
    secret = tmp_path / "passphrase"
    secret.touch(mode=0o600)
    secret.write_text("race passphrase\n")
    return isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(secret))


@pytest.fixture
def env(bare_env: dict[str, str]) -> dict[str, str]:
    env = bare_env
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    ok(env, "list")  # creates the ledger, so the test can lock it
    return env


def ledger_path(env: dict[str, str]) -> Path:
    return Path(env["NHIDEL_HOME"]) / "ledger.db"


@contextmanager
def ledger_write_lock(env: dict[str, str]) -> Iterator[sqlite3.Connection]:
    """Hold the locks a running state change holds (audit.lock, then the ledger's write lock)
    until the block ends."""
    db = sqlite3.connect(ledger_path(env), isolation_level=None, timeout=10)
    try:
        with exclusive_flock(Path(env["NHIDEL_HOME"]) / "audit.lock"):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            finally:
                db.execute("ROLLBACK")
    finally:
        db.close()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _sleeping(pid: int) -> bool:
    """In a timed sleep, as SQLite's busy handler is between retries (state S, nanosleep)."""
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    if state != "S":
        return False
    wchan = Path(f"/proc/{pid}/wchan").read_text().strip()
    return wchan in ("", "0") or "nanosleep" in wchan  # "0": the kernel hides wchan


def wait_until_blocked(
    processes: list[subprocess.Popen[str]], *, stop: bool, settle: float = 0.4
) -> None:
    """Wait until every process sleeps without using CPU for `settle` seconds.

    With `stop`, SIGSTOP each one as soon as it is blocked: a stopped process spends none of
    SQLite's busy timeout, and stays out of the race until the test sends SIGCONT.
    """
    quiet_since: dict[int, tuple[float, int]] = {}
    waiting = {process.pid: process for process in processes}
    deadline = time.monotonic() + BLOCK_TIMEOUT
    while waiting:
        assert time.monotonic() < deadline, f"processes never blocked: {sorted(waiting)}"
        for pid, process in list(waiting.items()):
            if process.poll() is not None:
                stdout, stderr = process.communicate()
                raise AssertionError(
                    f"{process.args} ended before blocking "
                    f"(exit {process.returncode}): {stdout!r} {stderr!r}"
                )
            ticks = _cpu_ticks(pid)
            since = quiet_since.get(pid)
            if not _sleeping(pid) or since is None or since[1] != ticks:
                quiet_since[pid] = (time.monotonic(), ticks)
            elif time.monotonic() - since[0] >= settle:
                if stop:
                    os.kill(pid, signal.SIGSTOP)
                del waiting[pid]
        time.sleep(0.05)


def resume(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        os.kill(process.pid, signal.SIGCONT)


def finish_all(processes: list[subprocess.Popen[str]], *args: str) -> list[Run]:
    return [finish(process, *args) for process in processes]


def assert_refused(result: Run) -> None:
    """Refused by policy: exit 6, a clean one-line error, and no token on stdout."""
    stderr = assert_clean_error(result, 6)
    assert "nothing was issued" in stderr, str(result)


def assert_no_grant_left_active(env: dict[str, str], results: list[Run]) -> None:
    """Every grant row is revoked, and every printed token is one of those revoked rows."""
    rows = {row["id"]: row for row in list_all(env)}
    assert all(row["status"] == "revoked" for row in rows.values()), rows
    for result in results:
        if result.code == 0:
            token = result.stdout.strip()
            assert result.stdout == token + "\n", str(result)
            assert rows[claims_of(token)["jti"]]["status"] == "revoked", str(result)
        else:
            assert result.code in (3, 6), str(result)
            assert_clean_error(result, result.code)


def test_grants_that_signed_before_agent_remove_are_refused_when_they_commit(
    env: dict[str, str], spawn: Spawn
) -> None:
    with ledger_write_lock(env):
        grants = [spawn(env, *GRANT_ARGS) for _ in range(GRANTS)]
        wait_until_blocked(grants, stop=True)  # each has checked the agent and signed
        remover = spawn(env, "agent", "remove", "reviewer", "--yes")
        wait_until_blocked([remover], stop=False)
    # The removal commits first; only then may the signed grants try to commit.
    removed = finish(remover, "agent", "remove")
    assert removed.code == 0, str(removed)
    resume(grants)
    for result in finish_all(grants, *GRANT_ARGS):
        assert_refused(result)
    assert list_all(env) == []


def test_grants_racing_agent_remove_never_stay_active(env: dict[str, str], spawn: Spawn) -> None:
    grants = []
    remover = None
    for index in range(GRANTS):
        grants.append(spawn(env, *GRANT_ARGS))
        if index == GRANTS // 2:
            remover = spawn(env, "agent", "remove", "reviewer", "--yes")
        time.sleep(0.1)
    assert remover is not None
    results = finish_all(grants, *GRANT_ARGS)
    removed = finish(remover, "agent", "remove")
    assert removed.code == 0, str(removed)
    assert_no_grant_left_active(env, results)
    assert len(list_all(env)) == sum(result.code == 0 for result in results)
    assert json.loads(ok(env, "agent", "list", "--json").stdout) == []


def test_grants_that_signed_before_revoke_all_are_refused_when_they_commit(
    env: dict[str, str], spawn: Spawn
) -> None:
    with ledger_write_lock(env):
        grants = [spawn(env, *GRANT_ARGS) for _ in range(GRANTS)]
        wait_until_blocked(grants, stop=True)  # each has read the revocation epoch and signed
        revoker = spawn(env, "revoke", "--all", "--yes")
        wait_until_blocked([revoker], stop=False)
    revoked = finish(revoker, "revoke", "--all")
    assert revoked.code == 0, str(revoked)
    resume(grants)
    for result in finish_all(grants, *GRANT_ARGS):
        assert_refused(result)
        assert "ran while this grant was being minted" in result.stderr
    assert list_all(env) == []


def test_grants_blocked_with_revoke_all_never_end_active(env: dict[str, str], spawn: Spawn) -> None:
    ok(env, "grant", *GRANT_ARGS[1:])  # one live grant before, which revoke --all must take
    with ledger_write_lock(env):
        grants = [spawn(env, *GRANT_ARGS) for _ in range(GRANTS)]
        wait_until_blocked(grants, stop=True)
        revoker = spawn(env, "revoke", "--all", "--yes")
        wait_until_blocked([revoker], stop=False)
        resume(grants)  # all nine now wait on the lock together; SQLite picks the order
        time.sleep(0.2)
    revoked = finish(revoker, "revoke", "--all")
    assert revoked.code == 0, str(revoked)
    results = finish_all(grants, *GRANT_ARGS)
    for result in results:
        assert result.code in (0, 6), str(result)
    assert_no_grant_left_active(env, results)
    assert len(list_all(env)) == 1 + sum(result.code == 0 for result in results)


def test_concurrent_grants_all_land_with_one_chained_audit_record_each(
    env: dict[str, str], spawn: Spawn
) -> None:
    with ledger_write_lock(env):
        grants = [spawn(env, *GRANT_ARGS) for _ in range(GRANTS)]
        wait_until_blocked(grants, stop=False)  # all eight commit the moment the lock is free
    results = finish_all(grants, *GRANT_ARGS)
    assert all(result.code == 0 for result in results), "\n".join(map(str, results))
    ids = [claims_of(result.stdout.strip())["jti"] for result in results]
    assert len(set(ids)) == GRANTS

    rows = {row["id"]: row for row in list_all(env)}
    assert set(rows) == set(ids)
    assert all(row["status"] == "active" for row in rows.values())

    records = audit_records(env)
    issued = [record["grant"] for record in records if record["event"] == "grant.issued"]
    assert sorted(issued) == sorted(ids)
    # seq 1..n from genesis, each prev the SHA-256 of the line before (recomputed here) ...
    lines = audit_lines(Path(env["NHIDEL_HOME"]) / "audit.jsonl")
    assert_chained(lines)
    assert len(set(lines)) == len(lines)
    # ... and every seal good under the audit key in the keystore, with the mark at the head.
    report = json.loads(ok(env, "audit", "verify", "--json").stdout)
    assert report["ok"] is True and report["warnings"] == [], report
    assert report["records"] == len(records)


def test_concurrent_inits_create_exactly_one_key(bare_env: dict[str, str], spawn: Spawn) -> None:
    home = Path(bare_env["NHIDEL_HOME"])
    home.mkdir(mode=0o700)
    with exclusive_flock(home / "keystore.lock"):
        # Each init finds no key yet, then waits to write; the window is held open on purpose.
        inits = [spawn(bare_env, "init", "--principal", "alice") for _ in range(4)]
        wait_until_blocked(inits, stop=False)
    results = finish_all(inits, "init")
    winners = [result for result in results if result.code == 0]
    assert len(winners) == 1, "\n".join(map(str, winners))
    for result in results:
        if result.code != 0:
            assert "already exists" in assert_clean_error(result, 6)
    kid = winners[0].stdout.splitlines()[0].removeprefix("kid: ")
    assert ok(bare_env, "key", "show").stdout.split()[0] == kid


@contextmanager
def exclusive_flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


AUDIT_KEY = bytes(range(32))


def _append_records(home: str, ready: Any, writer: int) -> None:
    """In a child process: append APPENDS records, one batch each, as verify does."""
    log = AuditLog(Paths(Path(home), Path(home)), AuditKeys(AUDIT_KEY, None))
    ready.wait(timeout=30)
    for number in range(APPENDS):
        log.append(
            [event("verify.allowed", agent=f"writer-{writer}", reason=str(number))], durable=False
        )


APPENDS = 100


def test_concurrent_audit_appends_from_many_processes_lose_and_garble_nothing(
    tmp_path: Path,
) -> None:
    # Grants append inside the ledger's write transaction, which already serialises them;
    # verify appends outside it, so the log's own lock is all that keeps writers apart.
    context = multiprocessing.get_context("spawn")
    writers = 6
    ready = context.Barrier(writers)
    processes = [
        context.Process(target=_append_records, args=(str(tmp_path), ready, writer))
        for writer in range(writers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        if process.exitcode is None:
            process.kill()
    assert [process.exitcode for process in processes] == [0] * writers
    records = assert_chained(audit_lines(tmp_path / "audit.jsonl"), key=AUDIT_KEY)
    assert len(records) == writers * APPENDS
    assert [record["seq"] for record in records] == list(range(1, writers * APPENDS + 1))
    report = check_log(Paths(tmp_path, tmp_path), AUDIT_KEY, None, None)
    assert report.ok and report.records == writers * APPENDS, report
    for writer in range(writers):
        mine = [r["reason"] for r in records if r["agent"] == f"writer-{writer}"]
        assert mine == [str(number) for number in range(APPENDS)]
