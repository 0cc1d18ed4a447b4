"""Private files written whole or not at all, and advisory locks between nhidel processes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import StorageError

FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700; tighten it if it already exists and is ours."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        info = path.stat()
        if info.st_mode & 0o077:
            # Tighten our own directory; never a shared one such as /tmp.
            if info.st_uid != os.getuid() or info.st_mode & stat.S_ISVTX:
                raise StorageError(
                    f"{path} is shared with other users",
                    "point NHIDEL_HOME at a private directory (mode 700)",
                )
            path.chmod(DIR_MODE)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    return path


def storage_error(path: Path, exc: OSError) -> StorageError:
    """Turn an OSError into one line that names the file and what to do."""
    if exc.errno == errno.ENOSPC:
        hint = "free some disk space and run the command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"check the permissions of {path.parent} (nhidel needs to write there)"
    else:
        hint = "check the file system and run the command again"
    return StorageError(f"could not write {path}: {exc.strerror or exc}", hint)


def atomic_write(path: Path, data: bytes, *, public: bool = False) -> None:
    """Replace `path` with `data`: written to a 0600 temp file, fsynced, renamed, dir fsynced.

    `public` is for files meant to be served to anyone (a published JWKS or status list): the
    file becomes 0644 and its directory, which must exist, keeps its mode, so that a web
    server running as another user can read them. Never use it for nhidel's own state.
    """
    if not public:
        ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            if public:
                os.fchmod(fd, PUBLIC_FILE_MODE)  # after open: the umask would mask it
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_error(path, exc) from exc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private_file(path: Path) -> None:
    """Make sure `path` exists as a 0600 file before a library (SQLite) opens it.

    An existing file is never opened here: closing any descriptor of a file drops every POSIX
    lock this process holds on it, SQLite's included, and another process could then take a
    connection still open here for the last one (and checkpoint and delete the WAL under it).
    """
    ensure_private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass


@contextlib.contextmanager
def exclusive_lock(path: Path, *, timeout: float = 10.0) -> Iterator[None]:
    """Hold an exclusive flock on `path` (a lock file that is never replaced) for the block."""
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"timed out waiting for the lock on {path}",
                        "another nhidel process holds it; wait for it to finish and retry",
                    ) from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)
