"""What a process killed in the middle of a state change leaves: its records written and
fsynced, the ledger never committed, the keystore's mark never moved."""

from __future__ import annotations

from typing import Any

from nhidel.audit import AuditKeys
from nhidel.audit.writer import AuditLog
from nhidel.keys.keystore import open_keystore
from nhidel.paths import Paths


class Killed(Exception):  # noqa: N818 - stands for the kill, not an error
    """The process dying right after the records reached the disk."""


def crash_after_writing(paths: Paths, *events: dict[str, Any]) -> None:
    """Write `events` as one session would, then die before anything else happens."""
    keys = AuditKeys.of(open_keystore(paths))
    try:
        with AuditLog(paths, keys).session() as session:
            session.write(list(events))
            raise Killed
    except Killed:
        pass
