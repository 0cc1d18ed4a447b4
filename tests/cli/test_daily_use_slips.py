"""Issue 13, what trips a daily user: each slip as the user meets it at the terminal or in a pipe.

`nhidel` alone (or a group alone) is help on stdout, exit 0; a closed output pipe is quiet and
never exit 1 (verdicts keep their status, grant still revokes an undelivered token); a segment
size out of range is refused by name; a --scope with whitespace is a usage error; key and log
records say what they are about in `audit tail`; the environment table names every variable
nhidel reads; an `audit verify` failure names a real place and its JSON gives the head it
verified. (Completion's slips are in test_completion.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import audit_records, command, isolated_env, list_all, ok
from helpers.support import Cli

from nhidel.audit.records import line_hash
from nhidel.audit.writer import DEFAULT_SEGMENT_BYTES, segment_limit
from nhidel.cli.render import audit_record_line
from nhidel.errors import UsageError
from nhidel.tokens.claims import requested_scopes

ROOT = Path(__file__).resolve().parents[2]
SCOPE = "repo:read:acme/api"


def a_home(root: Path) -> dict[str, str]:
    """A home with a principal, an agent and a grant, for nhidel run as separate processes. The
    passphrase comes from a file, so the keystore opens without a prompt (tail checks seals)."""
    secret = root / "passphrase"
    secret.touch(mode=0o600)
    secret.write_text("correct horse battery staple\n")
    environ = isolated_env(root, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(secret))
    ok(environ, "init", "--principal", "alice")
    ok(environ, "agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    ok(environ, "grant", "reviewer", "--scope", SCOPE)
    return environ


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return a_home(tmp_path)


@pytest.fixture(scope="module")
def reading_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One home for the commands that only read it."""
    return a_home(tmp_path_factory.mktemp("reading"))


# -- `nhidel` and `nhidel GROUP` alone: help on stdout, exit 0 (as gh does) ------------------


@pytest.mark.parametrize("group", [(), ("key",), ("agent",), ("audit",), ("config",), ("status",)])
def test_a_command_or_group_given_nothing_prints_its_help_on_stdout_and_exits_0(
    cli: Cli, group: tuple[str, ...]
) -> None:
    result = cli(*group)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == cli(*group, "--help").stdout
    assert f"Usage: nhidel {' '.join(group)}".rstrip() in result.stdout


# -- a closed output pipe -------------------------------------------------------------------


def into_closed_pipe(
    env: dict[str, str],
    *args: str,
    stream: str = "stdout",
    unbuffered: bool = False,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """nhidel writing `stream` into a pipe whose reader has gone before the first byte (the
    other stream is captured). Unbuffered, each write meets the closed pipe inside the command;
    buffered, most meet it only at the final flush."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    environ = {**env, "PYTHONUNBUFFERED": "1"} if unbuffered else env
    sinks: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    sinks[stream] = write_end
    try:
        return subprocess.run(
            command(*args), env=environ, cwd=env["HOME"], text=True, input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL, timeout=60, check=False,
            **sinks,
        )  # fmt: skip
    finally:
        os.close(write_end)


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize("args", [
    ("list",), ("list", "--json"), ("list", "--all"), ("show", "g"), ("audit", "tail", "-n", "100"),
    ("audit", "tail", "--json"), ("agent", "list"), ("key", "show"), ("--help",), (),
])  # fmt: skip
def test_a_closed_output_pipe_is_quiet_and_exit_0(
    reading_env: dict[str, str], args: tuple[str, ...], unbuffered: bool
) -> None:
    if args == ("show", "g"):
        args = ("show", list_all(reading_env)[0]["id"])
    done = into_closed_pipe(reading_env, *args, unbuffered=unbuffered)
    assert (done.returncode, done.stderr) == (0, ""), (args, done.returncode, done.stderr)


def test_audit_tail_follow_ends_quietly_when_its_reader_goes(env: dict[str, str]) -> None:
    """`nhidel audit tail -f | head -1`: the reader takes a line and leaves; the next record
    meets the closed pipe and tail ends, exit 0, saying nothing."""
    follower = subprocess.Popen(
        command("audit", "tail", "-n", "1", "-f"), env=env, cwd=env["HOME"], text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert follower.stdout is not None and follower.stderr is not None
        assert "grant.issued" in follower.stdout.readline()
        follower.stdout.close()  # like head -1
        ok(env, "grant", "reviewer", "--scope", SCOPE)
        assert follower.wait(timeout=60) == 0
        assert follower.stderr.read() == ""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_closed_pipe_never_changes_a_verdict(env: dict[str, str], unbuffered: bool) -> None:
    token = ok(env, "grant", "reviewer", "--scope", SCOPE).stdout.strip()
    allowed = into_closed_pipe(env, "verify", "-", "--scope", SCOPE, "--json", stdin=token,
                               unbuffered=unbuffered)  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    denied = into_closed_pipe(env, "verify", "-", "--scope", "repo:write:acme/api", "--json",
                              stdin=token, unbuffered=unbuffered)  # fmt: skip
    assert denied.returncode == 1, denied.stderr
    # Nothing reads the verdicts: not every line was allowed, whatever was checked.
    batch = into_closed_pipe(env, "verify", "--batch", "--scope", SCOPE, stdin=token + "\n",
                             unbuffered=unbuffered)  # fmt: skip
    assert batch.returncode == 1, batch.stderr
    assert into_closed_pipe(env, "audit", "verify", "--json", unbuffered=unbuffered).returncode == 0
    log = Path(env["NHIDEL_HOME"]) / "audit.jsonl"
    log.write_text(log.read_text().replace('"reviewer"', '"reviewer2"', 1))
    tampered = into_closed_pipe(env, "audit", "verify", "--json", unbuffered=unbuffered)
    assert tampered.returncode == 5, tampered.stderr


def test_a_closed_stderr_neither_stops_a_change_nor_hides_an_error(env: dict[str, str]) -> None:
    revoked = into_closed_pipe(env, "revoke", "--all", "--yes", stream="stderr", unbuffered=True)
    assert revoked.returncode == 0
    assert list_all(env)[0]["status"] == "revoked"
    missing = into_closed_pipe(env, "show", "gzzzzzz", stream="stderr", unbuffered=True)
    assert missing.returncode == 3


def test_grant_into_a_closed_pipe_still_revokes_the_undelivered_token(env: dict[str, str]) -> None:
    done = into_closed_pipe(env, "grant", "reviewer", "--scope", SCOPE)
    assert done.returncode == 1 and "revoked (undelivered)" in done.stderr
    assert sorted(g["status"] for g in list_all(env)) == ["active", "revoked"]


# -- NHIDEL_AUDIT_SEGMENT_BYTES --------------------------------------------------------------


@pytest.mark.parametrize(("given", "limit"), [
    ("", DEFAULT_SEGMENT_BYTES), ("4096", 4096), (" 8192 ", 8192), ("1073741824", 1 << 30),
])  # fmt: skip
def test_a_segment_size_in_range_is_honoured(
    monkeypatch: pytest.MonkeyPatch, given: str, limit: int
) -> None:
    monkeypatch.setenv("NHIDEL_AUDIT_SEGMENT_BYTES", given)
    assert segment_limit() == limit


@pytest.mark.parametrize("given", [
    "2000", "4095", "1073741825", "64MiB", "-4096", "٤٠٩٦", pytest.param("9" * 5000, id="9x5000"),
])  # fmt: skip
def test_a_segment_size_out_of_range_is_refused_naming_the_variable_and_the_range(
    ready: Cli, nhidel_home: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    before = (nhidel_home / "audit.jsonl").read_bytes()
    monkeypatch.setenv("NHIDEL_AUDIT_SEGMENT_BYTES", given)
    result = ready("grant", "reviewer", "--scope", SCOPE)
    assert result.exit_code == 2 and result.stdout == ""
    error, hint = result.stderr.splitlines()
    assert (
        error.startswith("error: NHIDEL_AUDIT_SEGMENT_BYTES is ") and "4096 to 1073741824" in error
    )
    assert hint.startswith("hint: ")
    assert (nhidel_home / "audit.jsonl").read_bytes() == before  # nothing written
    monkeypatch.delenv("NHIDEL_AUDIT_SEGMENT_BYTES")
    assert ready.ok("list", "--all", "--json").stdout == "[]\n"  # nothing granted


def test_a_small_segment_size_rotates_the_log_there(
    ready: Cli, nhidel_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NHIDEL_AUDIT_SEGMENT_BYTES", "4096")
    while not list(nhidel_home.glob("audit.0*.jsonl")):
        ready.ok("grant", "reviewer", "--scope", SCOPE)
    (rotated,) = nhidel_home.glob("audit.0*.jsonl")
    assert 4096 <= rotated.stat().st_size < 4096 + 2048


# -- --scope with whitespace -----------------------------------------------------------------


@pytest.mark.parametrize(("args", "option"), [
    (("grant", "reviewer", "--scope", "repo:read:acme/x repo:read:acme/y"), "--scope"),
    (("grant", "reviewer", "--scope", "repo:read:acme/x y"), "--scope"),
    (("verify", "-", "--scope", "repo:read:acme/x\trepo:read:acme/y"), "--scope"),
    (("agent", "add", "bot", "--allow", "repo:read:x repo:read:y"), "--allow"),
])  # fmt: skip
def test_a_scope_with_whitespace_is_a_usage_error_not_two_scopes(
    ready: Cli, nhidel_home: Path, args: tuple[str, ...], option: str
) -> None:
    before = (nhidel_home / "audit.jsonl").read_bytes()
    result = ready(*args, input="not.a.token")
    assert result.exit_code == 2 and result.stdout == ""
    error, hint = result.stderr.splitlines()
    assert "a scope holds no whitespace" in error
    assert hint.startswith(f"hint: give each scope its own {option}")
    assert (nhidel_home / "audit.jsonl").read_bytes() == before


def test_the_python_api_takes_one_scope_per_item_too() -> None:
    with pytest.raises(UsageError, match="no whitespace"):
        requested_scopes(["repo:read:a repo:read:b"], any_scope=False)
    assert [str(s) for s in requested_scopes(["a:b", "c:d"], any_scope=False)] == ["a:b", "c:d"]


# -- audit tail: key and log records say what they are about ---------------------------------


def test_audit_tail_shows_the_kid_of_key_records_and_the_segments_of_log_records(
    env: dict[str, str],
) -> None:
    (created,) = [r for r in audit_records(env) if r["event"] == "key.created"]
    first = ok(env, "audit", "tail", "-n", "1000").stdout.splitlines()[0]
    assert first.endswith(f"key.created     kid {created['kid']}"), first
    small = {**env, "NHIDEL_AUDIT_SEGMENT_BYTES": "4096"}
    while not list(Path(env["NHIDEL_HOME"]).glob("audit.0*.jsonl")):
        ok(small, "grant", "reviewer", "--scope", SCOPE)
    ok(env, "key", "rotate")
    ok(env, "audit", "prune", "--keep", "0")
    records = {r["event"]: r for r in audit_records(env)}
    lines = ok(env, "audit", "tail", "-n", "1000").stdout.splitlines()

    def line_of(event: str) -> str:
        (found,) = [line for line in lines if f"  {event} " in line]
        return found

    pruned = records["log.pruned"]
    assert line_of("log.pruned").endswith(
        f"deleted {' '.join(pruned['segments'])} (records through seq {pruned['pruned_through']})"
    )
    rotated = records["key.rotated"]
    assert line_of("key.rotated").endswith(f"kid {rotated['old_kid']} -> {rotated['kid']}")
    assert line_of("log.rotated").endswith(f"after {records['log.rotated']['previous_segment']}")


@pytest.mark.parametrize("record", [
    {"event": "log.pruned", "segments": "audit.1.jsonl", "pruned_through": None},
    {"event": "log.pruned", "segments": [1, {"a": 2}]},
    {"event": "log.pruned"},
    {"event": "key.created", "kid": ["\x1b[2J"]},
    {"event": "key.rotated", "kid": 5, "compromised": "yes"},
    {"event": "log.recovered", "fragment_bytes": "\u202e"},
])  # fmt: skip
def test_key_and_log_details_of_any_shape_make_one_escaped_line(record: dict[str, Any]) -> None:
    line = audit_record_line(record, now=0)
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line


# -- the environment table -------------------------------------------------------------------


def test_the_environment_table_names_every_variable_nhidel_reads() -> None:
    """README's table (and so the man page) lists each NHIDEL_ and XDG_*_HOME variable the code
    reads (the `_NHIDEL_*` ones are the completion scripts' own)."""
    read = set()
    for path in (ROOT / "nhidel").rglob("*.py"):
        read |= set(re.findall(r'"(NHIDEL_[A-Z_]+|XDG_[A-Z]+_HOME)"', path.read_text("utf-8")))
    readme = (ROOT / "README.md").read_text("utf-8")
    table = readme.split("## Environment", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE))
    assert {"XDG_CONFIG_HOME", "XDG_STATE_HOME"} <= read
    assert read <= listed, read - listed
    man = (ROOT / "man" / "nhidel.1").read_text("utf-8")
    assert all(f"\\fB{name}\\fR" in man for name in listed)


# -- audit verify: a real place, and the head it verified ------------------------------------


def verify_json(cli: Cli) -> dict[str, Any]:
    result = cli("audit", "verify", "--json")
    assert result.exit_code == 5, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_a_missing_last_record_is_reported_after_the_last_record_with_its_head(
    ready: Cli, nhidel_home: Path
) -> None:
    log = nhidel_home / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))  # the last record gone: the mark names it
    result = ready("audit", "verify")
    assert result.exit_code == 5
    error, hint = result.stderr.splitlines()
    last = len(lines) - 1
    assert error.startswith(
        f"error: audit log integrity failure after the last record (seq {last}): truncated: "
    ), error
    assert "line 0" not in error and "(end)" not in error
    assert hint.startswith("hint: ")
    report = verify_json(ready)
    assert report["head"] == {"seq": last, "hash": line_hash(lines[-2].rstrip(b"\n"))}
    assert report["error"]["where"] == f"after the last record (seq {last})"


def test_an_edited_record_is_reported_at_its_line_and_the_head_is_the_record_before(
    ready: Cli, nhidel_home: Path
) -> None:
    ready.ok("grant", "reviewer", "--scope", SCOPE)
    log = nhidel_home / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"alice"', b'"mallory"')
    log.write_bytes(b"".join(lines))
    report = verify_json(ready)
    assert report["head"] == {"seq": 2, "hash": line_hash(lines[1].rstrip(b"\n"))}
    assert report["records"] == 2
    assert report["error"]["where"] == "in audit.jsonl line 3"
    error = ready("audit", "verify").stderr.splitlines()[0]
    assert error.startswith("error: audit log integrity failure in audit.jsonl line 3: edited")
