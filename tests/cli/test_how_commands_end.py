"""Every way a command ends goes through the one error tree (`nhidel/cli/errors.py`): errors,
reported outcomes, Ctrl-C (130) and terminating signals (128 + N), never a number in a command.
"""

from __future__ import annotations

import ast
import json
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.processes import command, isolated_env, ok

from nhidel.errors import ExitStatus, signal_exit_status

ROOT = Path(__file__).resolve().parents[2]
SCOPE = "repo:read:acme/app"
COMMAND_MODULES = sorted((ROOT / "nhidel" / "cli").glob("*_cmds.py"))


def _exits_outside_the_tree(path: Path) -> list[str]:
    """Calls in `path` that end the process by themselves: typer.Exit, sys.exit, SystemExit,
    os._exit, or an exit status written as a number."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("typer.Exit", "sys.exit", "SystemExit", "os._exit", "exit", "quit"):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
            if name == "ExitQuietly" and any(isinstance(a, ast.Constant) for a in node.args):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_command_modules_are_all_checked() -> None:
    assert {p.name for p in COMMAND_MODULES} >= {"grant_cmds.py", "verify_cmds.py", "audit_cmds.py"}


@pytest.mark.parametrize("path", COMMAND_MODULES, ids=lambda p: p.name)
def test_no_command_ends_the_process_by_itself(path: Path) -> None:
    assert _exits_outside_the_tree(path) == []


def test_the_check_finds_an_exit_that_bypasses_the_tree(tmp_path: Path) -> None:
    sample = tmp_path / "sample_cmds.py"
    sample.write_text("import typer\ndef f():\n    raise typer.Exit(5)\n", "utf-8")
    assert _exits_outside_the_tree(sample) == ["sample_cmds.py:3: typer.Exit(5)"]


def test_interrupted_is_ctrl_c_as_a_shell_reports_it() -> None:
    assert ExitStatus.INTERRUPTED == signal_exit_status(signal.SIGINT) == 130
    assert signal_exit_status(signal.SIGTERM) == 143


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = isolated_env(
        tmp_path_factory.mktemp("ending"), NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE="p4ss-w0rd"
    )
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "bot", "--allow", SCOPE, "--max-ttl", "1h")
    return env


@pytest.mark.parametrize(
    ("stop", "status", "said"),
    [
        (signal.SIGINT, 130, ""),
        (signal.SIGTERM, 143, ""),
        (signal.SIGHUP, 129, ""),
    ],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_a_signalled_command_exits_128_plus_the_signal_quietly(
    env: dict[str, str], stop: signal.Signals, status: int, said: str
) -> None:
    """A long-running verifier (a gateway's `verify --batch`) stopped by Ctrl-C, a service
    manager or a closed terminal: the status says which, and no traceback."""
    token = ok(env, "grant", "bot", "--scope", SCOPE).stdout.strip()
    batch = subprocess.Popen(
        command("verify", "--batch", "--scope", SCOPE), env=env, cwd=env["HOME"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert batch.stdin is not None and batch.stdout is not None
    try:
        batch.stdin.write(token + "\n")
        batch.stdin.flush()
        assert json.loads(batch.stdout.readline())["allowed"] is True  # running: past start-up
        batch.send_signal(stop)
        _, stderr = batch.communicate(timeout=30)
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.communicate()
    assert (batch.returncode, stderr) == (status, said)
