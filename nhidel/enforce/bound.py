"""A grant bound to a process's life: minted for it, revoked when it ends, and revoked by the
next nhidel command should the process die without revoking it (SPEC, "Letting an agent act").

Before the grant is minted, a marker names it: a 0600 file `runs/<grant id>` (in a 0700
directory of the state directory) holding the pid of the process that will revoke it, that
process's start time, the boot and the PID namespace, so a reused pid is never mistaken for it.
The process removes its marker once the grant is revoked. A marker whose process is gone is an
orphan: `revoke_orphans` (run by every command that opens the keystore) revokes its grant.

What an agent that can write the state directory can do with markers: delete one (the grant then
lives until its TTL: keep TTLs short), or plant one naming a grant of its choice (that grant is
revoked: more restrictive, never less). A marker is read without following a link, only as a
regular file of the user's; anything else under a grant's name is removed unread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nhidel.errors import NhidelError
from nhidel.names import GRANT_ID

if TYPE_CHECKING:
    from nhidel.actions.grants import GrantRequest
    from nhidel.keys.keystore import KeyStore
    from nhidel.models import Grant
    from nhidel.paths import Paths

ORPHAN_REASON = "its process ended without revoking it"  # (exec, mcp run)
MAX_MARKER = 4096  # bytes: a marker is a few dozen; anything longer was not written by nhidel
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def runs_dir(paths: Paths) -> Path:
    """Where the markers of grants bound to running processes are."""
    return paths.runs_dir


@dataclass(frozen=True, slots=True)
class Marker:
    """Which process revokes `grant`: its pid and, where the platform says, when it started
    (clock ticks since boot), which boot and which PID namespace that was."""

    grant: str
    pid: int
    start: int | None
    boot: str | None
    pidns: str | None

    @classmethod
    def of_this_process(cls, grant: str) -> Marker:
        pid = os.getpid()
        return cls(grant, pid, _start_time(pid), _boot_id(), _pid_namespace())

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Marker | None:
        """The marker `data` holds, or None when it is not one nhidel wrote."""
        try:
            fields = json.loads(data)
            marker = cls(**fields)
        except (ValueError, TypeError):
            return None
        typed = (
            isinstance(marker.grant, str) and type(marker.pid) is int and marker.pid > 0
            and (marker.start is None or type(marker.start) is int)
            and all(v is None or isinstance(v, str) for v in (marker.boot, marker.pidns))
        )  # fmt: skip
        return marker if typed and GRANT_ID.fullmatch(marker.grant) else None

    def process_gone(self) -> bool:
        """Whether the process that wrote this marker has ended. When that cannot be told (a
        process in another PID namespace), it is taken as alive: its grant lives until its
        TTL rather than being revoked under a running command."""
        if self.boot is not None and self.boot != _boot_id():
            return True  # the machine rebooted since
        if self.pidns is not None and self.pidns != _pid_namespace():
            return False
        if sys.platform.startswith("linux"):
            state = _process_state(self.pid)
            if state is None or state[0] == "Z":  # gone, or dead and not yet reaped
                return True
            return self.start is not None and state[1] != self.start
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # another user's process now: not ours, but cannot be sure
        return False


@dataclass(frozen=True, slots=True)
class Orphan:
    """A grant revoked because the process bound to it ended without revoking it."""

    grant: str
    pid: int


@dataclass(slots=True)
class BoundGrant:
    """A live grant bound to this process (see `bound_grant`)."""

    paths: Paths
    keystore: KeyStore
    grant: Grant
    token: str
    principal: str | None

    def record(self, name: str, **fields: Any) -> None:
        """Write one durable audit record about this grant (`exec.started`, `exec.ended`).

        Never pass arguments, tokens or secrets in `fields`."""
        from nhidel.audit import AuditKeys, event
        from nhidel.integrity import state

        content = event(name, principal=self.principal, agent=self.grant.agent,
                        grant=self.grant.id, scopes=[str(s) for s in self.grant.scopes],
                        expires_at=self.grant.expires_at, **fields)  # fmt: skip
        state.audit_log(self.paths, AuditKeys.of(self.keystore)).append([content], durable=True)


@contextlib.contextmanager
def bound_grant(
    paths: Paths,
    keystore: KeyStore,
    request: GrantRequest,
    *,
    clock: Callable[[], int],
    reason: str,
) -> Iterator[BoundGrant]:
    """Mint the grant `request` asks for (every check `nhidel grant` makes) for the life of
    the block, and revoke it (`reason`) however the block ends.

    Its marker is written before it is minted, so a kill at any point leaves the grant for the
    next command to revoke; it is removed only once the revocation is durable. A refused grant
    leaves no marker. A failure to revoke is raised, and the marker stays for the next command.
    """
    from nhidel.actions import grants
    from nhidel.config import load_config
    from nhidel.fsutil import atomic_write
    from nhidel.models import new_grant_id

    marker = Marker.of_this_process(new_grant_id())
    atomic_write(runs_dir(paths) / marker.grant, marker.to_bytes())
    try:
        grant, token = grants.issue(
            paths, keystore, dataclasses.replace(request, grant_id=marker.grant), now=clock()
        )
    except NhidelError:
        _remove_marker(paths, marker.grant)  # refused: nothing was issued
        raise
    # (Any other exception, a signal say, leaves the marker: the grant may exist.)
    try:
        yield BoundGrant(paths, keystore, grant, token, load_config(paths).principal)
    finally:
        grants.revoke(paths, ids=[grant.id], reason=reason, now=clock(), keystore=keystore)
        _remove_marker(paths, grant.id)


def revoke_orphans(paths: Paths, keystore: KeyStore, *, now: int) -> list[Orphan]:
    """Revoke the grants whose bound process ended without revoking them (killed with
    SIGKILL, a crash, a power cut), remove their markers, and return those it revoked.

    Cheap when there is nothing to do (no `runs/` directory, or only live processes' markers).
    A marker of a grant the ledger never recorded (killed before minting) is only removed.
    """
    from nhidel.actions import grants
    from nhidel.ledger.store import Ledger

    dead = [marker for marker in _markers(paths) if marker.process_gone()]
    if not dead:
        return []
    with Ledger(paths) as ledger:
        known = [m for m in dead if ledger.get(m.grant) is not None]
    revoked: set[str] = set()
    if known:
        done = grants.revoke(paths, ids=[m.grant for m in known], reason=ORPHAN_REASON,
                             now=now, keystore=keystore)  # fmt: skip
        revoked = set(done.revoked)  # (one killed after revoking, before its marker went: not)
    for marker in dead:
        _remove_marker(paths, marker.grant)
    return [Orphan(m.grant, m.pid) for m in known if m.grant in revoked]


def _markers(paths: Paths) -> list[Marker]:
    """The markers in `runs/`, read without following links; what is not a marker under a
    grant's name is removed (nhidel never writes one), other names are left alone."""
    try:
        fd = os.open(runs_dir(paths), _DIR_FLAGS)
    except OSError:
        return []  # none yet (the usual case), or not a directory: nothing nhidel made
    try:
        found = []
        for name in os.listdir(fd):
            if not GRANT_ID.fullmatch(name):
                continue
            marker = _read_marker(fd, name)
            if marker is None or marker.grant != name:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)
                continue
            found.append(marker)
        return found
    finally:
        os.close(fd)


def _read_marker(dir_fd: int, name: str) -> Marker | None:
    from nhidel.fsutil import read_dropped_file

    data = read_dropped_file(dir_fd, name, MAX_MARKER)
    return None if data is None else Marker.from_bytes(data)


def _remove_marker(paths: Paths, grant_id: str) -> None:
    try:
        fd = os.open(runs_dir(paths), _DIR_FLAGS)
    except OSError:
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(grant_id, dir_fd=fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def _process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of process `pid`, or None when no
    such process exists (Linux: /proc/PID/stat, fields 3 and 22)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
        fields = data.rsplit(b")", 1)[1].split()
        return fields[0].decode("ascii", "replace"), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _start_time(pid: int) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    state = _process_state(pid)
    return None if state is None else state[1]


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
