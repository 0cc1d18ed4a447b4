"""The fast path of `audit verify`: check the seals of a large log on every core.

Each worker checks one byte range of a segment: every line sealed, its `seq` one more than the
last, its `prev` the hash of the line before. It returns only a summary (first and last seq and
hash, the few records that matter to the ledger check, the hash at the mark). The parent then
checks that the ranges join up. Anything irregular in a range (a bad seal, a gap, a torn line)
returns None, and the caller falls back to the sequential check, which finds and names the
first problem exactly: the fast path only ever says "all of this is fine".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nhidel.audit.records import BadRecord, check_seal, line_hash, sealed_fields

MIN_PARALLEL_BYTES = 8 * 1024 * 1024
_CHUNK_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class Summary:
    first_seq: int
    first_prev: str
    last_seq: int
    last_hash: str
    count: int
    noteworthy: list[bytes] = field(default_factory=list)  # bodies to parse in the parent
    hash_at_mark: str | None = None


def ranges(segments: list[Path]) -> list[tuple[str, int, int]]:
    """Split segments into (path, start, end) ranges that begin and end on line boundaries."""
    found = []
    for segment in segments:
        size = segment.stat().st_size
        with segment.open("rb") as handle:
            start = 0
            while start < size:
                end = min(size, start + _CHUNK_BYTES)
                if end < size:
                    handle.seek(end)
                    rest = handle.readline()
                    end += len(rest)
                found.append((str(segment), start, end))
                start = end
    return found


def check_range(
    job: tuple[str, int, int, bytes, int | None, bytes],
) -> Summary | None:
    """Check one range; None if anything in it is irregular (see the module docstring)."""
    path, start, end, key, mark_seq, noteworthy_pattern = job
    import re

    noteworthy = re.compile(noteworthy_pattern)
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, end - start, start)
    finally:
        os.close(fd)
    if not data.endswith(b"\n"):
        return None
    summary: Summary | None = None
    expected: int | None = None
    prev: str | None = None
    for raw in data[:-1].split(b"\n"):
        try:
            body = check_seal(raw, key)
        except BadRecord:
            return None
        found = sealed_fields(body)
        if found is None:
            return None
        seq, record_prev = int(found[1]), found[0].decode("ascii")
        if summary is None:
            summary = Summary(seq, record_prev, seq, "", 0)
        elif seq != expected or record_prev != prev:
            return None
        prev = line_hash(raw)
        expected = seq + 1
        if seq == mark_seq:
            summary.hash_at_mark = prev
        if noteworthy.search(body):
            summary.noteworthy.append(body)
        summary.count += 1
        summary.last_seq, summary.last_hash = seq, prev
    return summary


def check_in_parallel(
    segments: list[Path], key: bytes, mark_seq: int | None, noteworthy_pattern: bytes
) -> list[Summary] | None:
    """Summaries of every range in order, or None when the sequential check must decide."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from nhidel.hardening import (
        PASSPHRASE_VARIABLES,
        protect_secrets_in_memory,
        withheld_from_environment,
    )

    jobs = [(p, s, e, key, mark_seq, noteworthy_pattern) for p, s, e in ranges(segments)]
    workers = min(len(jobs), os.cpu_count() or 1)
    # The workers hold the audit key: forked after this, they inherit the parent's protection
    # (no core file, no same-user ptrace) whoever called us.
    protect_secrets_in_memory()
    # A fork copies the parent's environment; there is none to pass instead. The CLI took
    # NHIDEL_PASSPHRASE out when it opened the keystore, but the Python API may have opened it
    # from a mapping of its own and left the variable in os.environ: withhold the passphrase
    # variables while the workers start (all of them start at the first submit, inside this
    # block), so that no child of nhidel holds a passphrase (SPEC, "Keystore").
    with (
        withheld_from_environment(PASSPHRASE_VARIABLES),
        ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool,
    ):
        summaries = list(pool.map(check_range, jobs))
    if any(summary is None for summary in summaries):
        return None
    return [s for s in summaries if s is not None]
