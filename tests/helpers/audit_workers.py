"""Child-process bodies for the audit log's concurrency and crash tests.

Kept in a module of their own with light imports, so a spawned child imports only nhidel's
audit writer, not pytest or the CLI. The high-water mark goes to `FileMark`, a stand-in for the
keystore entry that every process shares through one file (the writer moves it under the audit
lock, exactly as it does with the real keystore).
"""

# ruff: noqa: S311 - seeded random, for reproducible runs
from __future__ import annotations

import json
import os
import resource
import signal
from pathlib import Path
from typing import Any

from nhidel.audit import AuditKeys, AuditLog, event
from nhidel.errors import StorageError
from nhidel.paths import Paths


class FileMark:
    """A KeyStore with one entry, the audit mark, in a JSON file replaced atomically."""

    description = "a test mark file"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self, entry: str) -> dict[str, Any] | None:
        assert entry == "audit-mark", entry
        try:
            value: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        return value

    def write(self, entry: str, value: dict[str, Any]) -> None:
        assert entry == "audit-mark", entry
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self.path)


def home_paths(home: str) -> Paths:
    return Paths(Path(home), Path(home))


def append_many(home: str, key: bytes, mark: str, ready: Any, writer: int, count: int) -> None:
    """Append `count` records one at a time (durable, marked), after all writers are ready."""
    log = AuditLog(home_paths(home), AuditKeys(key, FileMark(Path(mark))))
    ready.wait(timeout=60)
    for number in range(count):
        log.append([event("verify.allowed", agent=f"writer-{writer}", reason=str(number))])


def append_until_killed(
    home: str, key: bytes, mark: str, seed: int, segment_bytes: int | None
) -> None:
    """Append large-ish records forever; the parent kills this process with SIGKILL."""
    import random

    if segment_bytes is not None:
        os.environ["NHIDEL_AUDIT_SEGMENT_BYTES"] = str(segment_bytes)
    rng = random.Random(seed)
    log = AuditLog(home_paths(home), AuditKeys(key, FileMark(Path(mark))))
    number = 0
    while True:
        sizes = [rng.randrange(1_000, 64_000) for _ in range(rng.randrange(1, 4))]
        batch = [event("verify.allowed", agent="crasher", reason=f"{number}:" + "x" * size)
                 for size in sizes]  # fmt: skip
        log.append(batch, durable=rng.random() < 0.5)
        number += 1


def append_until_the_file_limit(home: str, key: bytes, mark: str, limit: int, seed: int) -> None:
    """Append until a write crosses RLIMIT_FSIZE at byte `limit`, then die by SIGKILL.

    The kernel writes what fits below the limit and refuses the rest: the file ends in a torn
    line cut at an exact byte, as a crash mid-write leaves it. The process then dies without
    cleaning up, as a crashed one does.
    """
    import random

    rng = random.Random(seed)
    log = AuditLog(home_paths(home), AuditKeys(key, FileMark(Path(mark))))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        while True:
            size = rng.randrange(100, 20_000)
            log.append([event("verify.denied", agent="crasher", reason="y" * size)])
    except StorageError:
        os.kill(os.getpid(), signal.SIGKILL)
