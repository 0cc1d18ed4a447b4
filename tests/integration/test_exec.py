"""`nhidel exec` as real processes (issue 17, item 3): the child's environment, its grant
revoked however it ends (kill -9 of nhidel included), signals forwarded once, exit statuses,
and audit records that hold neither the token nor the arguments.

Every nhidel here is the real CLI with a file keystore (its KDF made cheap, as the crash
harness does); every child is a real program (sh, Python).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import Run, claims_of, isolated_env

SCOPE = "repo:read:acme/api"
TIMEOUT = 60
SECRET_VALUE = "upstream-secret-value-4711"

# The real CLI with a cheap scrypt; with $NHIDEL_EXEC_KILL set, it SIGKILLs itself at that
# point of exec (a crash of nhidel, for the orphan tests).
RUNNER = """\
import os, signal, sys
from nhidel.keys import keystore
keystore._SCRYPT = {"n": 2**14, "r": 8, "p": 1}
point = os.environ.pop("NHIDEL_EXEC_KILL", "")
if point:
    from nhidel.actions import grants
    issue, revoke = grants.issue, grants.revoke
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    def issue_then(*args, **kwargs):
        if point == "before-mint":
            die()
        found = issue(*args, **kwargs)
        if point == "after-mint":
            die()
        return found
    def revoke_then(*args, **kwargs):
        if point == "before-revoke" and kwargs.get("reason") == "exec ended":
            die()
        return revoke(*args, **kwargs)
    grants.issue, grants.revoke = issue_then, revoke_then
from nhidel.cli import main
sys.exit(main(sys.argv[1:]))
"""

# A child that writes its environment as JSON to argv[1], then waits until argv[2] exists.
ENV_CHILD = """\
import json, os, sys, time
with open(sys.argv[1] + ".tmp", "w") as out:
    json.dump(dict(os.environ), out)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.01)
"""

# A child that reports the signals it gets to argv[1], one name a line, and ends on SIGTERM.
TRAP_CHILD = """\
import os, signal, sys, time
report = open(sys.argv[1], "a", buffering=1)
def got(signum, frame):
    report.write(signal.Signals(signum).name + "\\n")
    if signum == signal.SIGTERM:
        sys.exit(0)
for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, got)
report.write("ready\\n")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(9)
"""


def nhidel_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", RUNNER, *args]


def run(env: dict[str, str], *args: str) -> Run:
    done = subprocess.run(nhidel_argv(*args), env=env, cwd=env["HOME"], text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT,
                          check=False, start_new_session=True)  # fmt: skip
    return Run(tuple(args), done.returncode, done.stdout, done.stderr)


def ok(env: dict[str, str], *args: str, input: str | None = None) -> Run:
    done = subprocess.run(nhidel_argv(*args), env=env, cwd=env["HOME"], text=True, input=input,
                          capture_output=True, timeout=TIMEOUT, check=False)  # fmt: skip
    result = Run(tuple(args), done.returncode, done.stdout, done.stderr)
    assert result.code == 0, str(result)
    return result


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(nhidel_argv(*args), env=env, cwd=env["HOME"], text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip


def finish(process: subprocess.Popen[str]) -> Run:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"nhidel exec hung:\n{stdout}\n{stderr}") from None
    return Run(("exec",), process.returncode, stdout, stderr)


def await_true(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def grants(env: dict[str, str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(ok(env, "list", "--all", "--json").stdout)
    return found


def audit_lines(env: dict[str, str]) -> list[str]:
    return (Path(env["NHIDEL_HOME"]) / "audit.jsonl").read_text("utf-8").splitlines()


def verify(env: dict[str, str], token: str) -> Run:
    return run(env, "verify", token, "--any-scope", "--json")


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A principal, the agent `bot` (ceiling repo:read:acme/*), a registered upstream secret,
    and a file keystore whose passphrase is in a file."""
    secret = tmp_path / "passphrase"
    secret.touch(mode=0o600)
    secret.write_text("exec test passphrase\n")
    env = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(secret))
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "bot", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    ok(env, "secret", "add", "github", input=SECRET_VALUE + "\n")
    return env


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started: none is left running after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def test_the_child_holds_a_valid_grant_and_nothing_that_unlocks_the_keystore(
    env: dict[str, str], tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    env = {**env, "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    seen, go = tmp_path / "child-env.json", tmp_path / "go"
    spawned.append(start(env, "exec", "bot", "--scope", SCOPE, "--",
                         sys.executable, "-c", ENV_CHILD, str(seen), str(go)))  # fmt: skip
    await_true(seen.exists, "the child's environment")
    child_env = json.loads(seen.read_text())
    token, grant_id = child_env["NHIDEL_TOKEN"], child_env["NHIDEL_GRANT_ID"]
    assert claims_of(token)["jti"] == grant_id
    for withheld in ("DBUS_SESSION_BUS_ADDRESS", "NHIDEL_PASSPHRASE", "NHIDEL_PASSPHRASE_FILE"):
        assert withheld not in child_env
    assert not any(SECRET_VALUE in value for value in child_env.values())
    assert child_env["NHIDEL_HOME"] == env["NHIDEL_HOME"]  # where, not how to unlock

    live = verify(env, token)
    assert live.code == 0, str(live)
    assert json.loads(live.stdout)["grant"]["id"] == grant_id

    go.touch()
    done = finish(spawned[0])
    assert done.code == 0, str(done)
    after = verify(env, token)
    assert after.code == 1
    assert json.loads(after.stdout)["reason"] == "revoked"


@pytest.mark.parametrize(
    ("script", "status"),
    [
        ("exit 0", 0),
        ("exit 7", 7),
        ("kill -TERM $$", 128 + signal.SIGTERM),
        ("kill -KILL $$", 128 + signal.SIGKILL),
    ],  # fmt: skip
    ids=["exit-0", "exit-7", "sigterm", "sigkill"],
)
def test_exec_exits_with_the_childs_status_and_revokes_the_grant(
    env: dict[str, str], script: str, status: int
) -> None:
    done = run(env, "exec", "bot", "--scope", SCOPE, "--", "sh", "-c", script)
    assert done.code == status, str(done)
    (grant,) = grants(env)
    assert grant["status"] == "revoked"
    assert not (Path(env["NHIDEL_HOME"]) / "runs" / grant["id"]).exists()
    revoked = [json.loads(line) for line in audit_lines(env) if '"grant.revoked"' in line]
    assert [r["reason"] for r in revoked] == ["exec ended"]


def test_options_after_the_command_are_the_childs(env: dict[str, str]) -> None:
    # No `--`: from CMD on, `-c` and even `--scope` are the child's.
    done = run(env, "exec", "bot", "--scope", SCOPE, "sh", "-c",
               'echo "$NHIDEL_GRANT_ID" "$1"', "sh", "--scope")  # fmt: skip
    assert done.code == 0, str(done)
    (grant,) = grants(env)
    assert done.stdout == f"{grant['id']} --scope\n"


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (("exec", "nobody", "--scope", SCOPE, "--", "true"), 125, "no agent named 'nobody'"),
        (
            ("exec", "bot", "--scope", "repo:write:acme/api", "--", "true"),
            125,
            "beyond agent bot's ceiling",
        ),
        (("exec", "bot", "--scope", SCOPE, "--bogus", "--", "true"), 125, "no such option"),
        (("exec", "bot", "--", "true"), 125, "missing option '--scope'"),
        (("exec", "bot", "--scope", SCOPE, "--ttl", "2h", "--", "true"), 125, "maximum"),
        (("exec", "bot", "--scope", SCOPE, "--", "/nonexistent/tool"), 127, "/nonexistent/tool"),
        (("exec", "bot", "--scope", SCOPE, "--", "no-such-command-here"), 127, "not found"),
    ],  # fmt: skip
    ids=[
        "unknown-agent",
        "over-ceiling",
        "bad-flag",
        "no-scope",
        "over-max-ttl",
        "missing-path",
        "not-on-path",
    ],  # fmt: skip
)
def test_nhidels_own_failures_are_125_and_a_missing_command_127(
    env: dict[str, str], args: tuple[str, ...], status: int, says: str
) -> None:
    done = run(env, *args)
    assert done.code == status, str(done)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0], str(done)
    assert any(line.startswith("hint: ") for line in done.stderr.splitlines())
    assert grants(env) == []  # nothing minted


def test_a_file_that_is_not_executable_is_126(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    done = run(env, "exec", "bot", "--scope", SCOPE, "--", str(script))
    assert done.code == 126, str(done)
    assert "ran" not in done.stdout
    assert grants(env) == []


def test_a_program_the_kernel_cannot_run_is_126_and_its_grant_revoked(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Executable but no program (no #! line, not ELF): execve itself refuses it (ENOEXEC).
    script = tmp_path / "no-interpreter"
    script.write_bytes(b"\x00\x01 not a program\n")
    script.chmod(0o755)
    done = run(env, "exec", "bot", "--scope", SCOPE, "--", str(script))
    assert done.code == 126, str(done)
    (grant,) = grants(env)
    assert grant["status"] == "revoked"


def test_signals_sent_to_nhidel_reach_the_child_once(
    env: dict[str, str], tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    report = tmp_path / "signals"
    nhidel = start(env, "exec", "bot", "--scope", SCOPE, "--",
                   sys.executable, "-c", TRAP_CHILD, str(report))  # fmt: skip
    spawned.append(nhidel)

    def lines() -> list[str]:
        return report.read_text().splitlines() if report.exists() else []

    await_true(lambda: lines() == ["ready"], "the child to trap its signals")
    os.kill(nhidel.pid, signal.SIGUSR1)
    await_true(lambda: "SIGUSR1" in lines(), "SIGUSR1 at the child")
    os.kill(nhidel.pid, signal.SIGHUP)
    await_true(lambda: "SIGHUP" in lines(), "SIGHUP at the child")
    os.kill(nhidel.pid, signal.SIGTERM)
    done = finish(nhidel)
    assert done.code == 0, str(done)  # the child's: it ended itself on SIGTERM
    assert lines() == ["ready", "SIGUSR1", "SIGHUP", "SIGTERM"]
    (grant,) = grants(env)
    assert grant["status"] == "revoked"


def test_kill_9_of_nhidel_kills_the_child_and_the_next_command_revokes_the_grant(
    env: dict[str, str], tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    seen, never = tmp_path / "child-env.json", tmp_path / "never"
    nhidel = start(env, "exec", "bot", "--scope", SCOPE, "--",
                   sys.executable, "-c", ENV_CHILD, str(seen), str(never))  # fmt: skip
    spawned.append(nhidel)
    await_true(seen.exists, "the child's environment")
    token = json.loads(seen.read_text())["NHIDEL_TOKEN"]
    grant_id = claims_of(token)["jti"]
    child_pid = int(Path(f"/proc/{nhidel.pid}/task/{nhidel.pid}/children").read_text().split()[0])
    nhidel.kill()
    nhidel.wait(timeout=TIMEOUT)
    await_true(lambda: process_gone(child_pid), "the kernel to kill the child")

    still = [g for g in grants(env) if g["id"] == grant_id]
    assert still[0]["status"] == "active"  # list opens no keystore: nothing revoked yet
    after = verify(env, token)  # the next command that opens the keystore
    assert after.code == 1, str(after)
    assert json.loads(after.stdout)["reason"] == "revoked"
    assert (
        f"note: revoked grant {grant_id} of a command (exec, mcp run) that ended without "
        "revoking it "
        f"(pid {nhidel.pid})"
    ) in after.stderr
    assert not (Path(env["NHIDEL_HOME"]) / "runs" / grant_id).exists()
    again = verify(env, token)
    assert "note:" not in again.stderr  # revoked once, said once
    assert run(env, "audit", "verify").code == 0


@pytest.mark.parametrize("point", ["before-mint", "after-mint", "before-revoke"])
def test_a_kill_anywhere_in_exec_leaves_nothing_live_after_the_next_command(
    env: dict[str, str], point: str
) -> None:
    crashed = run({**env, "NHIDEL_EXEC_KILL": point}, "exec", "bot", "--scope", SCOPE, "--", "true")
    assert crashed.code == -signal.SIGKILL, str(crashed)
    after = run(env, "key", "show")  # opens the keystore
    assert after.code == 0, str(after)
    assert all(grant["status"] != "active" for grant in grants(env))
    assert os.listdir(Path(env["NHIDEL_HOME"]) / "runs") == []
    if point != "before-mint":
        assert "note: revoked grant" in after.stderr
    assert run(env, "audit", "verify").code == 0


@pytest.mark.parametrize("variable", ["NHIDEL_PASSPHRASE_FILE", "NHIDEL_PASSPHRASE"])
def test_a_passphrase_variable_given_to_nhidel_is_warned_of_and_kept_from_the_child(
    env: dict[str, str], variable: str
) -> None:
    if variable == "NHIDEL_PASSPHRASE":
        passphrase = Path(env.pop("NHIDEL_PASSPHRASE_FILE")).read_text().strip()
        env = {**env, "NHIDEL_PASSPHRASE": passphrase}
    done = run(env, "exec", "bot", "--scope", SCOPE, "--", "sh", "-c",
               'echo "[${NHIDEL_PASSPHRASE-}${NHIDEL_PASSPHRASE_FILE-}]"')  # fmt: skip
    assert done.code == 0, str(done)
    assert done.stdout == "[]\n"
    assert f"warning: nhidel was given {variable}" in done.stderr


def test_exec_records_name_the_program_and_never_the_token_or_arguments(
    env: dict[str, str],
) -> None:
    done = run(env, "exec", "bot", "--scope", SCOPE, "--", "sh", "-c",
               'echo "$NHIDEL_TOKEN"; exit 3', "sh", "argument-never-logged")  # fmt: skip
    assert done.code == 3, str(done)
    token = done.stdout.strip()
    lines = audit_lines(env)
    assert not any(token in line or "argument-never-logged" in line or "echo" in line
                   for line in lines)  # fmt: skip
    records = [json.loads(line) for line in lines]
    started = next(r for r in records if r["event"] == "exec.started")
    ended = next(r for r in records if r["event"] == "exec.ended")
    (grant,) = grants(env)
    assert (started["program"], started["agent"], started["grant"]) == ("sh", "bot", grant["id"])
    assert (ended["exit_status"], ended["pid"]) == (3, started["pid"])
    events = [r["event"] for r in records if r.get("grant") == grant["id"]]
    assert events == ["grant.issued", "exec.started", "grant.revoked", "exec.ended"]


def test_ctrl_c_on_a_terminal_reaches_the_child_once_and_nhidel_waits_for_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Ctrl-C makes the terminal signal its whole foreground process group, nhidel and the
    # child alike: nhidel must not send it a second time, and must not end before the child.
    import pty

    report = tmp_path / "signals"
    pid, terminal = pty.fork()
    if pid == 0:  # the child: a session of its own, the pty its controlling terminal
        argv = nhidel_argv("exec", "bot", "--scope", SCOPE, "--",
                           sys.executable, "-c", TRAP_CHILD, str(report))  # fmt: skip
        try:
            os.chdir(env["HOME"])
            os.execve(sys.executable, argv, env)  # noqa: S606 - the real CLI, on the pty
        finally:
            os._exit(127)  # never back into pytest from a forked child
    try:

        def lines() -> list[str]:
            return report.read_text().splitlines() if report.exists() else []

        await_true(lambda: lines() == ["ready"], "the child to trap its signals")
        os.write(terminal, b"\x03")
        await_true(lambda: "SIGINT" in lines(), "the terminal's SIGINT at the child")
        # Signals are handled in number order: a second SIGINT forwarded by nhidel would be
        # reported before this SIGUSR1.
        os.kill(pid, signal.SIGUSR1)
        await_true(lambda: "SIGUSR1" in lines(), "SIGUSR1 at the child")
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lines() == ["ready", "SIGINT", "SIGUSR1", "SIGTERM"]
    (grant,) = grants(env)
    assert grant["status"] == "revoked"


def test_a_signal_ignored_when_nhidel_started_stays_ignored_for_the_child(
    env: dict[str, str],
) -> None:
    # `nohup nhidel exec ...`: the child must not die of the hangup nohup guards against.
    probe = "import signal; print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN)"
    done = subprocess.run(
        nhidel_argv("exec", "bot", "--scope", SCOPE, "--", sys.executable, "-c", probe),
        env=env, cwd=env["HOME"], text=True, stdin=subprocess.DEVNULL, capture_output=True,
        timeout=TIMEOUT, check=False,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # as nohup does
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n"


def test_audit_tail_shows_what_exec_ran_and_how_it_ended(env: dict[str, str]) -> None:
    assert run(env, "exec", "bot", "--scope", SCOPE, "--", "sh", "-c", "exit 4").code == 4
    tail = ok(env, "audit", "tail", "--event", "exec.ended").stdout.splitlines()
    assert len(tail) == 1 and "sh (pid " in tail[0] and tail[0].endswith(" exited 4")


def test_exec_proxy_points_the_child_at_a_broker_that_lives_as_long_as_it_does(
    env: dict[str, str], tmp_path: Path
) -> None:
    from helpers.upstream import SECRET_HEADER, curl, https_upstream

    with https_upstream(tmp_path / "ca") as upstream:
        ok(env, "route", "add", "gh", upstream.url, "--secret", "github", "--header",
           SECRET_HEADER, "--format", "{secret}", "--ca-file", str(upstream.ca),
           "--url-var", "GITHUB_API_URL")  # fmt: skip
        ok(env, "agent", "update", "bot", "--allow", "gh:get:*")
        seen = tmp_path / "seen"
        script = (
            f'env > "{seen}.env"; '
            f'{curl()} -sS -o "{seen}" -w "%{{http_code}}" '
            '-H "Authorization: Bearer $NHIDEL_TOKEN" "$GITHUB_API_URL/echo" > "{0}.code"; '
            'printf %s "$NHIDEL_PROXY_URL" > "{0}.url"'
        ).replace("{0}", str(seen))
        done = run(env, "exec", "bot", "--scope", "gh:get:*", "--proxy", "--", "sh", "-c", script)
        assert done.code == 0, str(done)
        child_env = dict(
            line.split("=", 1)
            for line in Path(f"{seen}.env").read_text().splitlines()
            if "=" in line
        )
        proxy = Path(f"{seen}.url").read_text()
        assert proxy.startswith("http://127.0.0.1:")
        assert child_env["NHIDEL_ROUTE_GH_URL"] == child_env["GITHUB_API_URL"] == f"{proxy}/gh"
        assert Path(f"{seen}.code").read_text() == "200"
        # The upstream got the secret, the child only ever held its grant.
        (request,) = [r for r in upstream.received if r["path"] == "/v1/echo"]
        headers = {name.lower(): value for name, value in request["headers"]}
        assert headers[SECRET_HEADER.lower()] == SECRET_VALUE
        assert "authorization" not in headers
        assert not any(SECRET_VALUE in value for value in child_env.values())
        assert SECRET_VALUE not in Path(seen).read_text()  # echoed back: redacted
        # The broker ended with the child.
        port = int(proxy.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
