"""Every failure nhidel reports: one tree, each class carrying its exit code and a hint.

The exit codes are the contract in SPEC.md; the CLI maps an error to a status in exactly one
place (`nhidel/cli/errors.py`), so a new error only has to pick its class here.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    DENIED = 1  # verify said no; also any other failed operation (disk full, ...)
    USAGE = 2
    NOT_FOUND = 3
    KEYSTORE = 4
    INTEGRITY = 5
    POLICY = 6
    # `exec` ends with its child's status, so its own failures take the statuses `env` and
    # `timeout` use: nhidel failed (any of 1-6 above), CMD found but not runnable, CMD not found.
    EXEC_FAILED = 125
    CANNOT_RUN = 126
    COMMAND_NOT_FOUND = 127
    INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it


def signal_exit_status(signum: int) -> int:
    """The status of a process ended by signal `signum`, as shells report it: 128 + N."""
    return 128 + signum


class NhidelError(Exception):
    """Base error: a message saying what went wrong and a hint saying how to fix it."""

    exit_status = ExitStatus.DENIED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(NhidelError):
    """A bad flag or value: malformed scope, duration, time or name."""

    exit_status = ExitStatus.USAGE


class NotFoundError(NhidelError):
    """An unknown or ambiguous grant id, or an unknown agent."""

    exit_status = ExitStatus.NOT_FOUND


class KeystoreError(NhidelError):
    """The keystore is unavailable, locked, undecryptable, or holds no key."""

    exit_status = ExitStatus.KEYSTORE


class IntegrityError(NhidelError):
    """A file nhidel keeps is corrupt or was tampered with."""

    exit_status = ExitStatus.INTEGRITY


class PolicyError(NhidelError):
    """A request the rules refuse: beyond an agent's ceiling, over its max TTL, ..."""

    exit_status = ExitStatus.POLICY


class CannotRunError(NhidelError):
    """`exec`'s command exists but cannot be run (not executable, not a program)."""

    exit_status = ExitStatus.CANNOT_RUN


class CommandNotFoundError(NhidelError):
    """`exec`'s command is not a file, nor found on PATH."""

    exit_status = ExitStatus.COMMAND_NOT_FOUND


class StorageError(NhidelError):
    """A file could not be written (disk full, permissions, lock timeout); nothing was changed."""

    exit_status = ExitStatus.DENIED
