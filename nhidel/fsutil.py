"""Private files written whole or not at all, and advisory locks between nhidel processes.

nhidel's state directory is assumed writable by the agent it hands grants to (SPEC, "Security
model"), so nothing here trusts what it finds at a name: every file is opened with O_NOFOLLOW,
new ones come from an unpredictable name created O_EXCL, and a link, a FIFO, a directory, a
device, a file of another user's or one others may write, found where nhidel keeps a file, is
refused with one error naming it rather than written through.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from nhidel.errors import IntegrityError, NhidelError, StorageError

FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
DIR_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
LINK_HINT = "remove it; nhidel never writes through a link"

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700, or check the one there: a directory of the user's
    that neither group nor others may write. One readable by others is tightened to 0700."""
    os.close(_open_private_dir(path))
    return path


def _open_private_dir(path: Path) -> int:
    """`ensure_private_dir`, returning a descriptor of the directory checked (for *at calls)."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # something else is at the name (a link to a file, say): described below
    except OSError as exc:
        raise storage_error(path, exc) from exc
    try:
        # O_NOFOLLOW: a link in place of the directory would send every write elsewhere.
        fd = os.open(path, _DIR_FLAGS | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _kind_at(path) == "a symbolic link":
            raise StorageError(
                f"{path} is a symbolic link, not a directory",
                "point NHIDEL_HOME at a real directory of your own (nhidel does not follow a "
                "link to its home)",
            ) from None
        raise storage_error(path, exc) from exc
    try:
        info = os.fstat(fd)
        refusal = _dir_refusal(path, info)
        if refusal is not None:
            raise refusal
        if info.st_mode & 0o077:
            os.fchmod(fd, DIR_MODE)  # only readable by others: ours to tighten
    except NhidelError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise storage_error(path, exc) from exc
    return fd


def _dir_refusal(path: Path, info: os.stat_result) -> StorageError | None:
    """Why nhidel must not keep its files in the directory `info` describes, or None."""
    if info.st_uid != os.getuid():
        return StorageError(
            f"{path} belongs to another user (uid {info.st_uid})",
            "point NHIDEL_HOME at a directory of your own (mode 700)",
        )
    if info.st_mode & 0o022:
        # Whoever may write here may plant links and swap files: never tighten such a
        # directory behind the user's back, since others may already have planted them.
        return StorageError(
            f"{path} is writable by group or others",
            f"check what is in it, then: chmod 700 {path}",
        )
    return None


def storage_error(path: Path, exc: OSError) -> StorageError:
    """Turn an OSError into one line that names the file and what to do."""
    if exc.errno == errno.ENOSPC:
        hint = "free some disk space and run the command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"check the permissions of {path.parent} (nhidel needs to write there)"
    else:
        hint = "check the file system and run the command again"
    return StorageError(f"could not write {path}: {exc.strerror or exc}", hint)


def file_kind(mode: int) -> str:
    """What an lstat mode is, in words, for an error naming what stands at a path."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _kind_at(path: Path) -> str:
    try:
        return file_kind(os.lstat(path).st_mode)
    except OSError:
        return "not usable"


def _refusal(
    path: Path,
    info: os.stat_result,
    *,
    private: bool,
    single_name: bool,
    error: type[NhidelError] = IntegrityError,
) -> NhidelError | None:
    """Why nhidel must not write the file `info` describes, or None.

    `private`: nhidel's own state, which must be the user's and writable by the user alone.
    `single_name`: the file is written in place (appended to, or opened by SQLite), so a
    second name would make the write land in whatever file the planter linked it to.
    """
    if stat.S_ISLNK(info.st_mode):
        return error(f"{path} is a symbolic link", LINK_HINT)
    if not stat.S_ISREG(info.st_mode):
        return error(
            f"{path} is {file_kind(info.st_mode)}, not a regular file",
            "remove it; nhidel writes only regular files",
        )
    if not private:
        return None
    if info.st_uid != os.getuid():
        return error(
            f"{path} belongs to another user (uid {info.st_uid})",
            "remove it (nhidel writes only files of your own)",
        )
    if info.st_mode & 0o022:
        return error(f"{path} is writable by group or others", f"chmod 600 {path}")
    if single_name and info.st_nlink != 1:
        return error(f"{path} has {info.st_nlink} hard links", LINK_HINT)
    return None


def private_dir_problem(path: Path) -> NhidelError | None:
    """What is wrong with one of nhidel's directories as it stands, or None (also when it is
    missing): what every write refuses, and one others may read (which the next write
    tightens). Only looks: for `nhidel doctor`, which changes nothing."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _read_error(path, exc)
    if not stat.S_ISDIR(info.st_mode):
        return StorageError(
            f"{path} is {file_kind(info.st_mode)}, not a directory",
            "point NHIDEL_HOME at a real directory of your own (nhidel does not follow a link "
            "to its home)",
        )
    refusal = _dir_refusal(path, info)
    if refusal is None and info.st_mode & 0o077:
        return _readable(path, info, "chmod 700")
    return refusal


def private_file_problem(path: Path, *, in_place: bool) -> NhidelError | None:
    """What is wrong with one of nhidel's own files as it stands, or None (also when it is
    missing): what every write refuses (`in_place`: a file appended to or opened by SQLite,
    where a second name matters), and, stricter than a write needs, a file others may read.
    Only looks: for `nhidel doctor`, which changes nothing."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _read_error(path, exc)
    refusal = _refusal(path, info, private=True, single_name=in_place)
    if refusal is None and info.st_mode & 0o077:
        return _readable(path, info, "chmod 600")
    return refusal


def _readable(path: Path, info: os.stat_result, chmod: str) -> NhidelError:
    # Not refused by writes (nothing others can do to it), but not private either.
    return NhidelError(
        f"{path} is readable by group or others (mode {stat.S_IMODE(info.st_mode):03o})",
        f"{chmod} {path}",
    )


def atomic_write(path: Path, data: bytes, *, public: bool = False) -> None:
    """Replace `path` with `data`: written to a new 0600 file, fsynced, renamed, dir fsynced.

    The new file has an unpredictable name, created O_EXCL|O_NOFOLLOW in the same directory,
    so nothing planted at a guessed name is ever opened; the rename goes through a descriptor
    of the directory, so a link swapped in for the directory meanwhile is not followed. What
    is at `path` now must be a regular file (for nhidel's own state: the user's, writable by
    the user alone); anything else is refused, never replaced.

    `public` is for files meant to be served to anyone (a published JWKS or status list): the
    file becomes 0644 and its directory, which must exist, keeps its mode, so that a web
    server running as another user can read them. Never use it for nhidel's own state.
    """
    if public:
        try:
            # The directory was named by the user (--out, status-dir): following a link to
            # it is what they asked for; the file at the end is what must not be followed.
            dir_fd = os.open(path.parent, _DIR_FLAGS)
        except OSError as exc:
            raise storage_error(path, exc) from exc
    else:
        dir_fd = _open_private_dir(path.parent)
    try:
        _check_replaceable(dir_fd, path, public=public)
        _replace_in(dir_fd, path, data, public=public)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    finally:
        os.close(dir_fd)


def _check_replaceable(dir_fd: int, path: Path, *, public: bool) -> None:
    try:
        info = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    # A hard link is harmless here: the rename replaces this name only, never the other file.
    refusal = _refusal(
        path,
        info,
        private=not public,
        single_name=False,
        error=StorageError if public else IntegrityError,
    )
    if refusal is not None:
        raise refusal


def _replace_in(dir_fd: int, path: Path, data: bytes, *, public: bool) -> None:
    # 128 bits from os.urandom, what secrets.token_hex reads (that module costs `list` startup).
    tmp = f".{path.name}.{os.urandom(16).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, FILE_MODE, dir_fd=dir_fd)
    try:
        try:
            if public:
                os.fchmod(fd, PUBLIC_FILE_MODE)  # after open: the umask would mask it
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_sqlite_files(db_path: Path) -> None:
    """Refuse a ledger whose database or side files are links or not plain files of the user's.

    SQLite opens `-wal`, `-shm` and `-journal` itself, following links and writing in place, so
    they are checked by name before each open. A missing file is fine: SQLite creates it.
    """
    for path in (db_path, *(db_path.with_name(db_path.name + s) for s in SQLITE_SIDE_FILES)):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise storage_error(path, exc) from exc
        refusal = _refusal(path, info, private=True, single_name=True)
        if refusal is not None:
            raise refusal


def open_private_read(path: Path) -> int:
    """Open one of nhidel's own files for reading; return the descriptor (the caller closes it).

    A link is refused, not followed, and a FIFO planted at the name is refused, not waited on
    (a plain open would block until someone writes to it). A missing file raises
    FileNotFoundError, as open() does.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        with contextlib.suppress(OSError):
            refusal = _refusal(path, os.lstat(path), private=True, single_name=False)
            if refusal is not None:
                raise refusal from None
        raise _read_error(path, exc) from None
    try:
        refusal = _refusal(path, os.fstat(fd), private=True, single_name=False)
        if refusal is not None:
            raise refusal
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except NhidelError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise _read_error(path, exc) from None
    return fd


def read_private_file(path: Path) -> bytes | None:
    """The bytes of one of nhidel's own files (config.toml, keystore.json); None if missing.

    Checked as `open_private_read` checks it.
    """
    try:
        fd = open_private_read(path)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise _read_error(path, exc) from None
    finally:
        os.close(fd)


def read_dropped_file(dir_fd: int, name: str, limit: int) -> bytes | None:
    """The bytes of file `name` in the directory `dir_fd`, where another process may drop files
    (`runs/` markers, `requests/`): read without following a link, only from a regular file of
    this user's that others cannot write, at most `limit` bytes; None for anything else."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)  # fmt: skip
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            return None
        data = os.read(fd, limit + 1)
        return None if len(data) > limit else data
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_error(path: Path, exc: OSError) -> StorageError:
    return StorageError(f"could not read {path}: {exc.strerror or exc}", "check its permissions")


def create_private_file(path: Path) -> None:
    """Make sure `path` exists as a 0600 file of the user's before a library (SQLite) opens it.

    An existing file is never opened here: closing any descriptor of a file drops every POSIX
    lock this process holds on it, SQLite's included, and another process could then take a
    connection still open here for the last one (and checkpoint and delete the WAL under it).
    So an existing one is checked by lstat, and a new one is created O_EXCL|O_NOFOLLOW.
    """
    ensure_private_dir(path.parent)
    while True:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, FILE_MODE))
                return
            except FileExistsError:
                continue  # another process made it first: check what it made
            except OSError as exc:
                raise storage_error(path, exc) from exc
        except OSError as exc:
            raise storage_error(path, exc) from exc
        refusal = _refusal(path, info, private=True, single_name=True)
        if refusal is not None:
            raise refusal
        return


def open_private_append(path: Path) -> int:
    """Open `path` (created 0600 if missing) for reading and appending; return the descriptor.

    Refuses a link, a hard-linked file, anything but a regular file, a file of another user's
    or one group or others may write. The caller closes the descriptor.
    """
    return _open_in_place(path, os.O_RDWR | os.O_APPEND)


def _open_in_place(path: Path, flags: int) -> int:
    """Open a file nhidel writes in place (a log, a lock), created 0600 if it is missing."""
    ensure_private_dir(path.parent)
    try:
        # lstat first: a device or FIFO is refused before it is ever opened (an open can
        # have side effects); the fstat below decides, the lstat only spares that open.
        refusal = _refusal(path, os.lstat(path), private=True, single_name=True)
    except FileNotFoundError:
        refusal = None
    except OSError as exc:
        raise storage_error(path, exc) from exc
    if refusal is not None:
        raise refusal
    try:
        # O_NONBLOCK: a FIFO swapped in since the lstat must not hang the open.
        fd = os.open(path, flags | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW, FILE_MODE)
    except OSError as exc:
        # Something was swapped in since the lstat (ELOOP: a link, EISDIR: a directory).
        with contextlib.suppress(OSError):
            refusal = _refusal(path, os.lstat(path), private=True, single_name=True)
        if refusal is not None:
            raise refusal from None
        raise storage_error(path, exc) from exc
    try:
        refusal = _refusal(path, os.fstat(fd), private=True, single_name=True)
        if refusal is not None:
            raise refusal
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except NhidelError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise storage_error(path, exc) from exc
    return fd


@contextlib.contextmanager
def exclusive_lock(path: Path, *, timeout: float = 10.0) -> Iterator[None]:
    """Hold an exclusive flock on `path` (a lock file that is never replaced) for the block."""
    fd = _open_in_place(path, os.O_RDWR)
    try:
        if not _flock(fd, fcntl.LOCK_EX, timeout):
            raise StorageError(
                f"timed out waiting for the lock on {path}",
                "another nhidel process holds it; wait for it to finish and retry",
            )
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared_lock(path: Path, *, timeout: float) -> Iterator[bool]:
    """Hold a shared flock on the lock file `path` for the block, if it is there and free
    within `timeout`: writers, who take it exclusively, wait meanwhile. Yields whether it is
    held. Creates nothing and writes nothing (for `nhidel doctor`, which only reads)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except OSError:
        yield False  # none yet, or not a plain name: doctor's file check says which
        return
    try:
        yield stat.S_ISREG(os.fstat(fd).st_mode) and _flock(fd, fcntl.LOCK_SH, timeout)
    finally:
        os.close(fd)


def _flock(fd: int, kind: int, timeout: float) -> bool:
    """Take flock `kind` on `fd`, waiting up to `timeout` seconds; whether it was taken."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
