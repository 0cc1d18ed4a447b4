"""Which `nhidel proxy` is running: the state file each one keeps in the runtime dir while it
accepts requests, and what doctor makes of it.

The file (`proxy-PID.json`, 0600 in the 0700 runtime dir) says the process id, the address
and the nhidel home the daemon serves. It is a claim, not proof: whoever can write the runtime
dir can write one, and a daemon killed with SIGKILL leaves its file behind. So a daemon counts
as running only when its process is alive and its address answers `GET /healthz` with the
daemon's `ok`; an address that is not an IP literal or an absolute path to a socket of this
user's is never probed. A file whose process is gone is stale: the next `nhidel proxy` removes
it, and doctor reports it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nhidel.errors import NhidelError
from nhidel.fsutil import atomic_write, ensure_private_dir, read_private_file
from nhidel.paths import Paths, runtime_dir

PROBE_TIMEOUT = 1.0  # seconds doctor waits for an address to answer /healthz
HEALTHY = b"ok\n"  # what the daemon's /healthz says, and all it says
_PREFIX, _SUFFIX = "proxy-", ".json"


@dataclass(frozen=True, slots=True)
class Daemon:
    """One state file and what was found behind it."""

    file: Path
    pid: int
    url: str
    state: str  # "running", "unresponsive" (alive, not answering) or "stale" (gone)


def record(paths: Paths, url: str, *, pid: int | None = None) -> Path:
    """Say that this process serves `paths`'s home at `url` (call it once it accepts
    requests); stale files of daemons that are gone are removed on the way."""
    directory = ensure_private_dir(runtime_dir())
    for found in _state_files(directory):
        claimed = _read(found)
        if claimed is None or not _alive(claimed[0]):
            with contextlib.suppress(OSError):
                found.unlink()
    pid = os.getpid() if pid is None else pid
    path = directory / f"{_PREFIX}{pid}{_SUFFIX}"
    state = {"pid": pid, "url": url, "home": str(paths.config_dir)}
    atomic_write(path, json.dumps(state).encode())
    return path


def forget(path: Path) -> None:
    """Take the state file back (the daemon stops accepting requests)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def find(paths: Paths) -> list[Daemon]:
    """The daemons whose state files name `paths`'s home, each checked (reads only: no file
    or directory is created)."""
    directory = runtime_dir()
    if not directory.is_dir():
        return []
    found = []
    for path in _state_files(directory):
        claimed = _read(path, home=str(paths.config_dir))
        if claimed is None:
            continue
        pid, url = claimed
        if not _alive(pid):
            state = "stale"
        elif _answers(url):
            state = "running"
        else:
            state = "unresponsive"
        found.append(Daemon(path, pid, url, state))
    return found


def _state_files(directory: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [directory / n for n in names if n.startswith(_PREFIX) and n.endswith(_SUFFIX)]


def _read(path: Path, *, home: str | None = None) -> tuple[int, str] | None:
    """(pid, url) from a state file of the right shape (and for `home`, when given)."""
    try:
        data = json.loads(read_private_file(path) or b"")
    except (NhidelError, OSError, ValueError):  # a link, another's file, not JSON: no claim
        return None
    if not isinstance(data, dict):
        return None
    pid, url = data.get("pid"), data.get("url")
    if type(pid) is not int or pid <= 0 or not isinstance(url, str):
        return None
    if home is not None and data.get("home") != home:
        return None
    return pid, url


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not a daemon of ours
    return True


def _answers(url: str) -> bool:
    """Whether `url` (unix:PATH or http://IP:PORT) answers GET /healthz as the daemon does."""
    try:
        sock = _connect(url)
    except (OSError, ValueError):
        return False
    if sock is None:
        return False
    with sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            answer = b""
            while len(answer) < 4096 and (chunk := sock.recv(4096)):
                answer += chunk
        except OSError:
            return False
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[1] == b"200" and body == HEALTHY


def _connect(url: str) -> socket.socket | None:
    if url.startswith("unix:"):
        path = url[len("unix:") :]
        info = os.lstat(path) if os.path.isabs(path) else None
        if info is None or not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        where: str | tuple[str, int] = path
    else:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            return None
        try:
            address = ipaddress.ip_address(parts.hostname)  # never a name to look up
        except ValueError:
            return None
        if address.is_unspecified:  # listening everywhere: ask on loopback
            address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        where = (str(address), parts.port)
    sock.settimeout(PROBE_TIMEOUT)
    try:
        sock.connect(where)
    except OSError:
        sock.close()
        return None
    return sock
