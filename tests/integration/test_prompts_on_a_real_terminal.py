"""A destructive command asks on a real terminal (a pseudo-terminal on stdin), and a script's
stdin never gets a prompt: what tests/cli/test_destructive_commands_ask_first.py simulates
in-process, here with real processes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
from helpers.processes import TIMEOUT, command, isolated_env, ok, run


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A home with one agent, bot, holding one live grant."""
    env = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE="prompt tests")
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "bot", "--allow", "a:b")
    ok(env, "grant", "bot", "--scope", "a:b")
    return env


def on_a_terminal(
    env: dict[str, str], typed: bytes, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run nhidel with a pseudo-terminal on stdin, `typed` already typed into it."""
    typing, terminal = pty.openpty()
    try:
        os.write(typing, typed)
        return subprocess.run(
            command(*args),
            env=env,
            cwd=env["HOME"],
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(typing)


def live(env: dict[str, str]) -> int:
    return len(json.loads(ok(env, "list", "--json").stdout))


def test_no_at_the_prompt_of_a_terminal_changes_nothing_and_exits_1(env: dict[str, str]) -> None:
    done = on_a_terminal(env, b"n\n", "revoke", "--agent", "bot")
    assert done.returncode == 1
    assert done.stderr == (
        "this revokes 1 live grant of agent bot. Continue? [y/N] not confirmed: nothing changed\n"
    )
    assert live(env) == 1


def test_yes_at_the_prompt_of_a_terminal_goes_on(env: dict[str, str]) -> None:
    done = on_a_terminal(env, b"y\n", "agent", "remove", "bot")
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith("removed agent bot; revoked 1 grant\n")
    assert live(env) == 0


def test_a_script_is_never_asked(env: dict[str, str]) -> None:
    refused = run(env, "key", "rotate", "--now")  # stdin /dev/null, no controlling terminal
    assert refused.code == 2 and "--yes" in refused.stderr and "Continue?" not in refused.stderr
    assert live(env) == 1
    assert run(env, "key", "rotate", "--now", "--yes").code == 0
    assert live(env) == 0
