"""`audit tail` shows only sealed records (SPEC, issue 10 item 6), and never crashes on a line.

With the audit key at hand (the keystore opens without a prompt), a forged or planted line, even
one with every field of a record and a seal that does not match, is skipped by `audit tail`,
`--json`, the filters and `-f`, with one warning on stderr. Without the keystore (the file
keystore and no passphrase in the environment) tail shows records unchecked, after a warning,
and a record of the wrong shape is still printed safely, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import command, isolated_env, ok
from helpers.support import Cli

from nhidel.actions.audit_log import TailFilter, tail
from nhidel.audit import AuditKeys, AuditLog, event
from nhidel.audit.reader import Position, follow, records
from nhidel.audit.segments import rotated_segments
from nhidel.keys import keystore
from nhidel.keys.keystore import open_keystore
from nhidel.keys.principal import load_trust
from nhidel.paths import Paths

SKIPPED = "warning: skipped {} line(s) that are not sealed records; run nhidel audit verify"
UNCHECKED = (
    "warning: records not checked against their seals (the keystore is not available): "
    "run nhidel audit verify"
)
WRONG_SHAPES = [
    b'{"seq":3,"requested":7}',
    b'{"seq":"x","time":"0001-01-01T00:00:00+01:00","scopes":{"a":1},"agent":[1],"count":2,'
    b'"last_time":5,"reason":"\\ud800\\u001b[2J","event":null,"outcome":{}}',
    b'{"seq":null,"time":12,"requested":"repo:read:x","event":"grant.revoked"}',
]


def _secret(path: Path, passphrase: bytes) -> Path:
    path.write_bytes(passphrase)
    path.chmod(0o600)
    return path


def _forged(audit_file: Path, reason: str = "FORGED") -> bytes:
    """A complete record line as nhidel writes one (every field, chained), but not sealed."""
    last = audit_file.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    record = json.loads(last)
    record.update(
        seq=record["seq"] + 1, event="grant.revoked", grant="g" + "f" * 26, reason=reason,
        prev=hashlib.sha256(last).hexdigest(), seal="0" * 64,
    )  # fmt: skip
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _append(path: Path, *lines: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))


def _append_fragment(path: Path, fragment: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(fragment)  # no newline: an append in flight, or torn by a crash


def _shown(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


# == with the keystore: only sealed records ================================================


def test_a_forged_line_is_never_shown_by_tail_json_or_a_filter(ready: Cli, paths: Paths) -> None:
    before = _shown(ready.ok("audit", "tail", "--json", "-n", "100").stdout)
    _append(paths.audit_file, _forged(paths.audit_file))
    for args in (["-n", "100"], ["--json", "-n", "100"], ["--event", "grant.revoked"],
                 ["--json", "--event", "grant.revoked"], ["--json", "--agent", "reviewer"],
                 ["--json", "--since", "1h"]):  # fmt: skip
        result = ready("audit", "tail", *args)
        assert result.exit_code == 0, (args, result.stderr)
        assert "FORGED" not in result.stdout and "gfff" not in result.stdout, args
        assert result.stderr.splitlines() == [SKIPPED.format(1)], (args, result.stderr)
    assert _shown(ready.ok("audit", "tail", "--json", "-n", "100").stdout) == before


def test_a_forged_fragment_that_recovery_ended_is_skipped(ready: Cli, paths: Paths) -> None:
    # A complete line at the end stops every writer (audit verify names it); an unterminated
    # one is taken for a torn append: the next writer ends it and goes on after it.
    _append_fragment(paths.audit_file, _forged(paths.audit_file))
    ready.ok("agent", "add", "builder", "--allow", "repo:read:acme/*")
    result = ready.ok("audit", "tail", "--json", "-n", "100")
    assert "FORGED" not in result.stdout
    events = [r["event"] for r in _shown(result.stdout)]
    assert events == ["key.created", "agent.added", "log.recovered", "agent.added"]
    assert result.stderr.splitlines() == [SKIPPED.format(1)]


def test_an_untouched_log_is_shown_without_a_warning(ready: Cli) -> None:
    result = ready.ok("audit", "tail", "-n", "5")
    assert result.stderr == "" and len(result.stdout.splitlines()) == 2


@pytest.mark.parametrize("shape", WRONG_SHAPES, ids=["requested_int", "everything", "nulls"])
def test_a_line_of_the_wrong_shape_is_skipped_not_a_crash(
    ready: Cli, paths: Paths, shape: bytes
) -> None:
    _append(paths.audit_file, shape)
    for args in (["-n", "5"], ["--json"], ["--since", "1h"], ["--agent", "reviewer"]):
        result = ready("audit", "tail", *args)
        assert result.exit_code == 0, (args, result.stderr)
        assert result.stderr.splitlines() == [SKIPPED.format(1)], (args, result.stderr)


def test_find_token_shows_no_forged_record(ready: Cli, paths: Paths) -> None:
    token = ready.ok("grant", "reviewer", "--scope", "repo:read:acme/api").stdout.strip()
    forged = json.loads(_forged(paths.audit_file))  # the grant's record, its fingerprint kept
    _append(paths.audit_file, json.dumps(forged).encode())
    shown = _shown(ready.ok("audit", "find-token", "--json", input=token).stdout)
    assert [r["event"] for r in shown] == ["grant.issued"]


def test_tail_follow_skips_forged_lines_as_they_come(ready: Cli, paths: Paths) -> None:
    _append_fragment(paths.audit_file, _forged(paths.audit_file, "OLD"))
    ready.ok("agent", "add", "builder", "--allow", "repo:read:acme/*")  # ends it: a line
    stop = threading.Event()
    shown: list[dict[str, Any]] = []
    warnings: list[str] = []

    def run() -> None:
        every = TailFilter()
        for record in tail(paths, 1, every, keep_following=True, stop=stop.is_set,
                           warn=warnings.append):  # fmt: skip
            shown.append(record)  # noqa: PERF402 - read by the test thread as it grows

    follower = threading.Thread(target=run, daemon=True)
    follower.start()
    try:
        _wait(lambda: len(shown) == 1)
        _append_fragment(paths.audit_file, _forged(paths.audit_file, "NEW"))
        time.sleep(0.3)  # read unterminated: not yet a line
        ready.ok("agent", "add", "tester", "--allow", "repo:read:acme/*")
        _wait(lambda: len(shown) == 3)
        _append(paths.audit_file, _forged(paths.audit_file, "LAST"))  # no record after it
        _wait(lambda: len(warnings) == 3)
        time.sleep(0.3)  # a few polls more: nothing else arrives
    finally:
        stop.set()
        follower.join(timeout=10)
    assert not follower.is_alive()
    assert [(r["event"], r["agent"]) for r in shown] == [
        ("agent.added", "builder"), ("log.recovered", None), ("agent.added", "tester"),
    ]  # fmt: skip
    # Each forged line warned of once: the old one by the first read, the others as they came.
    assert warnings == [SKIPPED.format(1).removeprefix("warning: ")] * 3


def _wait(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def file_env(tmp_path: Path) -> dict[str, str]:
    """A home with the file keystore, initialised by the real CLI in separate processes."""
    secret = _secret(tmp_path / "passphrase", b"tail sealed passphrase")
    env = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(secret))
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    return env


def _follow(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command("audit", "tail", "-f", *args), env=env, cwd=env["HOME"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def _interrupt(process: subprocess.Popen[str]) -> int:
    """Ctrl-C, as a person stops -f; its exit status."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _grant_and_revoke(env: dict[str, str]) -> str:
    ok(env, "grant", "reviewer", "--scope", "repo:read:acme/api")
    grant_id: str = json.loads(ok(env, "list", "--json").stdout)[0]["id"]
    ok(env, "revoke", grant_id)
    return grant_id


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--json"], ["--event", "grant.revoked"], []],
                         ids=["json", "event", "text"])  # fmt: skip
def test_tail_follow_in_its_own_process_never_prints_a_forged_line(
    file_env: dict[str, str], args: list[str]
) -> None:
    audit_file = Path(file_env["NHIDEL_HOME"]) / "audit.jsonl"
    first = _grant_and_revoke(file_env)
    following = _follow(file_env, "-n", "1", *args)
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    readers = [
        threading.Thread(target=lambda s=stream, q=into: [q.put(line) for line in s or []],
                         daemon=True)
        for stream, into in ((following.stdout, out), (following.stderr, err))
    ]  # fmt: skip
    for reader in readers:
        reader.start()
    shown: list[str] = []
    warned: list[str] = []

    def skipped() -> int:
        return sum(int(line.split()[2]) for line in warned if line.startswith("warning: skipped"))

    try:
        shown.append(out.get(timeout=30))  # the newest record: it has read the log
        _append_fragment(audit_file, _forged(audit_file))
        second = _grant_and_revoke(file_env)  # the first write ends the fragment: a line
        while second[:8] not in shown[-1]:
            shown.append(out.get(timeout=10))
        _append(audit_file, _forged(audit_file), WRONG_SHAPES[0])
        while skipped() < 3:
            warned.append(err.get(timeout=10))
        time.sleep(0.3)  # a few polls more
    finally:
        code = _interrupt(following)
        for reader in readers:
            reader.join(timeout=10)
    shown += list(out.queue)
    warned += list(err.queue)
    everything = "".join(shown)
    assert code == 0, warned
    assert "FORGED" not in everything and "gfff" not in everything, everything
    assert first[:8] in shown[0] and second[:8] in everything
    assert all(line.startswith("warning: skipped ") for line in warned), warned
    assert skipped() == 3, warned  # each unsealed line warned of once, as it came


# == without the keystore: unchecked, after a warning, and never a crash ====================


@pytest.fixture
def no_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli) -> Cli:
    """An initialised file keystore, then no passphrase in the environment: tail cannot
    open the keystore (and must not prompt)."""
    secret = _secret(tmp_path / "passphrase", b"tail unchecked passphrase")
    monkeypatch.setenv("NHIDEL_KEYSTORE", "file")
    monkeypatch.setenv("NHIDEL_PASSPHRASE_FILE", str(secret))
    monkeypatch.setitem(keystore._SCRYPT, "n", 2**14)
    monkeypatch.setattr(keystore, "_passphrase_taken", None)
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "reviewer", "--allow", "repo:read:acme/*")
    monkeypatch.delenv("NHIDEL_PASSPHRASE_FILE")
    return cli


def test_without_the_keystore_tail_warns_that_records_are_unchecked(
    no_passphrase: Cli, paths: Paths
) -> None:
    result = no_passphrase("audit", "tail", "--json", "-n", "5", input="a passphrase\n")
    assert result.exit_code == 0, result.stderr
    assert [r["event"] for r in _shown(result.stdout)] == ["key.created", "agent.added"]
    assert result.stderr.splitlines() == [UNCHECKED]
    # Nothing shown, nothing to warn of.
    result = no_passphrase("audit", "tail", "--event", "grant.revoked")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("shape", WRONG_SHAPES, ids=["requested_int", "everything", "nulls"])
def test_without_the_keystore_a_line_of_the_wrong_shape_is_printed_safely(
    no_passphrase: Cli, paths: Paths, shape: bytes
) -> None:
    _append(paths.audit_file, shape)
    for args in (["-n", "5"], ["--json"], ["--since", "1h"], ["--agent", "reviewer"],
                 ["--event", "grant.revoked"]):  # fmt: skip
        result = no_passphrase("audit", "tail", *args)
        assert result.exit_code == 0, (args, result.stderr)
        assert "\x1b" not in result.stdout, args
        assert result.stderr.splitlines() in ([UNCHECKED], []), (args, result.stderr)
    assert no_passphrase("audit", "tail", "-n", "5").stdout.count("\n") == 3


def test_without_the_keystore_tail_follow_warns_once_and_survives_wrong_shapes(
    no_passphrase: Cli, paths: Paths
) -> None:
    stop = threading.Event()
    shown: list[dict[str, Any]] = []
    warnings: list[str] = []

    def run() -> None:
        for record in tail(paths, 1, TailFilter(), keep_following=True, stop=stop.is_set,
                           warn=warnings.append):  # fmt: skip
            shown.append(record)  # noqa: PERF402 - read by the test thread as it grows

    follower = threading.Thread(target=run, daemon=True)
    follower.start()
    try:
        _wait(lambda: len(shown) == 1)
        _append(paths.audit_file, *(shape.replace(b'"seq":3', b'"seq":99')
                                    for shape in WRONG_SHAPES))  # fmt: skip
        _wait(lambda: len(shown) == 2)
    finally:
        stop.set()
        follower.join(timeout=10)
    assert not follower.is_alive()
    assert shown[1] == {"seq": 99, "requested": 7}
    assert warnings == [UNCHECKED.removeprefix("warning: ")]


# == following on from where the first read stopped ========================================


def test_follow_goes_on_from_where_records_stopped_across_a_rotation(
    ready: Cli, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records appended between tail's first read and its following (here across rotations)
    are each yielded once, and a line read once is not counted again."""
    monkeypatch.setenv("NHIDEL_AUDIT_SEGMENT_BYTES", "4096")
    key = load_trust(open_keystore(paths)).audit_key
    _append_fragment(paths.audit_file, _forged(paths.audit_file))
    log = AuditLog(paths, AuditKeys.of(open_keystore(paths)))
    log.append([event("status.published")])  # ends the fragment: an unsealed line
    counted: list[int] = []
    end = Position()
    newest = max(r["seq"] for r in records(paths, key, skipped=counted.append, end=end))
    assert counted == [1]
    for number in range(40):  # several 4 KiB segments
        log.append([event("status.published", reason=f"r{number} " + "z" * 300)])
    assert rotated_segments(paths)
    head = max(r["seq"] for r in records(paths, key))
    seen: list[int] = []
    for record in follow(paths, start_after=newest, key=key, skipped=counted.append,
                         start=end, stop=lambda: bool(seen) and seen[-1] >= head):  # fmt: skip
        seen.append(record["seq"])  # noqa: PERF401 - `stop` reads it as it grows
    assert seen == list(range(newest + 1, head + 1))
    assert counted == [1]
