"""Issue 13, what trips a daily user: each slip as the user meets it at the terminal or in a pipe.

`nhidel` alone (or a group alone) is help on stdout, exit 0; a closed output pipe is quiet and
never exit 1 (verdicts keep their status, grant still revokes an undelivered token); a segment
size out of range is refused by name; a --scope with whitespace is a usage error; key and log
records say what they are about in `audit tail`; the environment table names every variable
nhidel reads; an `audit verify` failure names a real place and its JSON gives the head it
verified. (Completion's slips are in test_completion.py.)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import command, isolated_env, list_all, ok
from helpers.support import Cli

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
