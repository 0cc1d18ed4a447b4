"""`nhidel.enforce.exec.run` in this process: what the parent keeps (not dumpable, its own
signal handling and mask back as they were), and the exit status as a shell reports it."""

from __future__ import annotations

import signal
import sys

import pytest
from helpers.token_world import SCOPE, T, World

from nhidel.actions.grants import GrantRequest
from nhidel.enforce import exec as exec_module
from nhidel.enforce.exec import child_environment, resolve_command, run
from nhidel.errors import CannotRunError, CommandNotFoundError
from nhidel.hardening import is_dumpable


def run_sh(world: World, script: str) -> int:
    program = resolve_command("sh", {"PATH": "/usr/bin:/bin"})
    request = GrantRequest("reviewer", [SCOPE])
    return run(world.paths, world.keystore, request, ["sh", "-c", script], program=program,
               clock=lambda: T)  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_GET_DUMPABLE is Linux's")
def test_nhidel_is_not_dumpable_once_it_has_run_a_child(world: World) -> None:
    # The child is reset to dumpable by exec (it holds no key); nhidel, which has read the
    # signing key, stays closed to ptrace and /proc/PID/mem of the user's other processes.
    assert run_sh(world, "exit 0") == 0
    assert is_dumpable() is False


def test_signal_handling_is_given_back_after_the_child(world: World) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    assert run_sh(world, "kill -USR1 $$") == 128 + signal.SIGUSR1
    assert {s: signal.getsignal(s) for s in before} == before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask


def test_the_childs_environment_has_the_grant_and_not_the_keystores_keys() -> None:
    given = {"PATH": "/bin", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/bus",
             "NHIDEL_PASSPHRASE": "pass", "NHIDEL_PASSPHRASE_FILE": "/p",
             "NHIDEL_TOKEN": "old"}  # fmt: skip
    env = child_environment(given, token="tok", grant_id="gid")
    assert env == {"PATH": "/bin", "NHIDEL_TOKEN": "tok", "NHIDEL_GRANT_ID": "gid"}


def test_a_command_is_resolved_as_a_shell_would() -> None:
    assert resolve_command("sh", {"PATH": "/nonexistent:/bin:/usr/bin"}).endswith("/sh")
    with pytest.raises(CommandNotFoundError):
        resolve_command("sh", {"PATH": "/nonexistent"})
    with pytest.raises(CannotRunError):
        resolve_command("/", {})
    with pytest.raises(CommandNotFoundError):
        resolve_command("", {})


# The child traps SIGTERM (exit 42), sends SIGTERM to nhidel (this process), and otherwise
# ends by itself with 0 after a few seconds.
SENDS_TERM_TO_NHIDEL = "trap 'exit 42' TERM; kill -TERM $PPID; i=0; " \
    "while [ $i -lt 100 ]; do sleep 0.01; i=$((i+1)); done; exit 0"  # fmt: skip


def test_a_signal_the_child_sent_to_nhidel_is_not_sent_back(world: World) -> None:
    assert run_sh(world, SENDS_TERM_TO_NHIDEL) == 0


def test_without_sigwaitinfo_handlers_forward_what_comes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # macOS's way, run here: no siginfo, so nhidel cannot tell who sent SIGTERM, and forwards it.
    monkeypatch.setattr(exec_module, "SIGINFO", False)
    handlers = {s: signal.getsignal(s) for s in exec_module.FORWARDED}
    assert run_sh(world, SENDS_TERM_TO_NHIDEL) == 42
    assert run_sh(world, "kill -KILL $$") == 128 + signal.SIGKILL
    assert {s: signal.getsignal(s) for s in handlers} == handlers
