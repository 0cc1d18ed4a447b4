"""Where the audit log's records live: rotated segments, oldest first, then the current one."""

from __future__ import annotations

import re
from pathlib import Path

from nhidel.paths import Paths

_ROTATED = re.compile(r"audit\.(\d{12})\.jsonl")


def segment_name(first_seq: int) -> str:
    return f"audit.{first_seq:012d}.jsonl"


def segment_first_seq(path: Path) -> int:
    """The first sequence number a rotated segment holds, from its name."""
    match = _ROTATED.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a rotated segment")
    return int(match.group(1))


def rotated_segments(paths: Paths) -> list[Path]:
    """Rotated segments in chain order (their names carry their first sequence number)."""
    found = [p for p in paths.state_dir.glob("audit.*.jsonl") if _ROTATED.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.name)


def all_segments(paths: Paths) -> list[Path]:
    current = [paths.audit_file] if paths.audit_file.exists() else []
    return rotated_segments(paths) + current
