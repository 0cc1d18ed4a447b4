"""Reading the audit log's lines the way an auditor would, independently of nhidel's reader.

A line is canonical JSON (sorted keys, no spaces) with `"seal"` (HMAC-SHA256 of the body under
the audit key) appended as its last member; each record's `prev` is the SHA-256 of the line
before it. These helpers recompute both with hashlib/hmac only, so a test built on them does not
just ask nhidel's own checker whether nhidel's own writer agrees with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def audit_lines(path: Path) -> list[bytes]:
    """The complete lines of one segment, without their newlines."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends in a torn line"
    return data.splitlines()


def body_of(line: bytes) -> tuple[dict[str, Any], bytes, str]:
    """(record without its seal, the sealed body bytes, the seal) of one line."""
    record = json.loads(line)
    seal = record.pop("seal")
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert line == body[:-1] + b',"seal":"' + seal.encode() + b'"}', "seal is not the last member"
    return record, body, seal


def line_sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def assert_sealed(line: bytes, key: bytes) -> dict[str, Any]:
    record, body, seal = body_of(line)
    assert hmac.new(key, body, hashlib.sha256).hexdigest() == seal, record
    return record


def assert_chained(
    lines: list[bytes], *, first_seq: int = 1, first_prev: str = GENESIS, key: bytes | None = None
) -> list[dict[str, Any]]:
    """Every record sealed (when `key` is given), numbered from `first_seq` without gaps, and
    each `prev` the SHA-256 of the line before it. Returns the records (without seals)."""
    records = []
    prev = first_prev
    for number, line in enumerate(lines):
        record = assert_sealed(line, key) if key is not None else body_of(line)[0]
        assert record["seq"] == first_seq + number, (number, record)
        assert record["prev"] == prev, (number, record)
        prev = line_sha256(line)
        records.append(record)
    return records
