"""Noticing, exactly and cheaply, that some connection committed to the ledger.

A verifier that remembers what the ledger said about a grant must forget it the moment anything
in the ledger changes (a revocation or a use by another process). SQLite's answer is
`PRAGMA data_version`, about 3 us a call from Python. The ledger runs in WAL mode, where every
commit rewrites the wal-index header at the start of the `-shm` file (its change counter, frame
count, salts and checksums; https://sqlite.org/walformat.html, "The WAL-Index Header"), so a
96-byte `pread` of both header copies is the same signal for about 0.5 us. When that header
cannot be read or does not look like one, the probe falls back to `data_version`.
"""

from __future__ import annotations

import os
import struct
import threading

from nhidel.ledger.store import Ledger

_HEADER_BYTES = 96  # the two copies of the 48-byte WalIndexHdr
_WAL_INDEX_VERSION = 3007000


class CommitProbe:
    """Call it for a value that differs from the last one whenever the ledger has changed.

    Take the value before reading the ledger, so whatever is read is at least that new. The
    verifier's own writes change it too; that only forgets a little more than it must.
    """

    def __init__(self, ledger: Ledger, *, use_wal_index: bool = True) -> None:
        self.ledger = ledger
        ledger.data_version()  # a first read makes SQLite open (and initialise) the wal-index
        self._fd: int | None = None
        if use_wal_index:
            self._fd = _open_wal_index(f"{ledger.path}-shm")

    @property
    def reads_wal_index(self) -> bool:
        return self._fd is not None

    def __call__(self) -> object:
        if self._fd is not None:
            return os.pread(self._fd, _HEADER_BYTES, 0)
        return self.ledger.data_version()

    def close(self) -> None:
        self._fd = None  # the descriptor stays open: see _wal_index_fd


# (device, inode) of each `-shm` file read here -> its descriptor. Closing a descriptor of a file
# drops every POSIX lock this process holds on it, SQLite's included: with its lock on the
# wal-index gone, a connection still open here could be taken for the last one by another
# process, which would then delete the WAL under it. So a descriptor is closed only once its
# file is gone (SQLite unlinks it when the last connection closes), never while SQLite uses it.
_WAL_INDEXES: dict[tuple[int, int], int] = {}
_SPARE: list[int] = []  # a second descriptor of a file already open here (a race), kept open
_LOCK = threading.Lock()


def _wal_index_fd(path: str) -> int | None:
    with _LOCK:
        try:
            status = os.stat(path)
        except OSError:
            return None
        fd = _WAL_INDEXES.get((status.st_dev, status.st_ino))
        if fd is not None:
            return fd
        for key, old in list(_WAL_INDEXES.items()):
            if os.fstat(old).st_nlink == 0:
                os.close(old)
                del _WAL_INDEXES[key]
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        opened = os.fstat(fd)
        key = (opened.st_dev, opened.st_ino)
        if key in _WAL_INDEXES:
            _SPARE.append(fd)
            return _WAL_INDEXES[key]
        _WAL_INDEXES[key] = fd
        return fd


def _open_wal_index(path: str) -> int | None:
    fd = _wal_index_fd(path)
    if fd is None:
        return None
    try:
        header = os.pread(fd, _HEADER_BYTES, 0)
    except OSError:
        return None
    if len(header) == _HEADER_BYTES and _looks_initialised(header):
        return fd
    return None


def _looks_initialised(header: bytes) -> bool:
    # iVersion (u32, native order) and isInit (u8 at offset 12), in both copies.
    for start in (0, 48):
        version, _, _, is_init = struct.unpack_from("=IIIB", header, start)
        if version != _WAL_INDEX_VERSION or is_init != 1:
            return False
    return True
