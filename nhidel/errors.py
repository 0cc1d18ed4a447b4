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


class StorageError(NhidelError):
    """A file could not be written (disk full, permissions, lock timeout); nothing was changed."""

    exit_status = ExitStatus.DENIED
