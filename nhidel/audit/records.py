"""One audit record on disk: its content, its seal, and the chain hash that links the next one.

A line is the canonical JSON of the record's body (sorted keys, no spaces, UTF-8) with one more
member appended last: `"seal"`, an HMAC-SHA256 of the body bytes under the audit key from the
keystore. The body's `prev` is the SHA-256 of the previous line, so the seal covers the whole
chain before it. Checking a line needs no re-serialisation: the seal is a fixed-length tail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

FORMAT_VERSION = 1
GENESIS = "0" * 64

EVENTS = (
    "key.created", "key.rotated", "agent.added", "agent.removed", "grant.issued",
    "grant.revoked", "grant.used", "verify.allowed", "verify.denied", "status.published",
    "log.recovered", "log.rotated", "log.pruned", "state.repaired", "log.loss_accepted",
    "config.updated", "agent.updated", "secret.added", "secret.removed", "mcp.added",
    "mcp.removed", "route.added", "route.removed", "exec.started", "exec.ended",
    "secret.redacted", "tool.allowed", "tool.denied", "http.allowed", "http.denied",
    "approval.requested", "approval.granted", "approval.denied", "approval.lapsed",
    "approval.used", "grant.requested",
)  # fmt: skip

_SEAL_HEAD = b',"seal":"'
_SEAL_TAIL_LENGTH = len(_SEAL_HEAD) + 64 + len(b'"}')


class BadRecord(Exception):  # noqa: N818 - a finding about the data, not a crash
    """A line that is not a well-formed sealed record; `why` says what is wrong."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def event(name: str, **fields: Any) -> dict[str, Any]:
    """A record's content before it is chained: the event and what it is about."""
    if name not in EVENTS:
        raise ValueError(f"unknown audit event {name!r}")
    content: dict[str, Any] = {
        "event": name, "principal": None, "agent": None, "grant": None, "scopes": None,
        "expires_at": None, "reason": None,
    }  # fmt: skip
    content.update(fields)
    return content


def canonical(value: Mapping[str, Any]) -> bytes:
    return _CANONICAL.encode(value).encode()


# What json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) builds per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def seal_line(body: bytes, key: bytes) -> bytes:
    """The line for a canonical body: the body with its HMAC appended as the last member."""
    mac = hmac.digest(key, body, "sha256").hex().encode("ascii")
    return body[:-1] + _SEAL_HEAD + mac + b'"}'


def line_hash(line: bytes) -> str:
    """What the next record's `prev` holds: the SHA-256 of this line (without its newline)."""
    return hashlib.sha256(line).hexdigest()


def check_seal(line: bytes, key: bytes) -> bytes:
    """Return the sealed body of `line`; raise BadRecord if the seal does not match it."""
    if len(line) <= _SEAL_TAIL_LENGTH or not line.endswith(b'"}'):
        raise BadRecord("not a sealed record")
    tail = line[-_SEAL_TAIL_LENGTH:]
    if not tail.startswith(_SEAL_HEAD):
        raise BadRecord("not a sealed record")
    body = line[:-_SEAL_TAIL_LENGTH] + b"}"
    expected = hmac.digest(key, body, "sha256").hex().encode("ascii")
    if not hmac.compare_digest(expected, tail[len(_SEAL_HEAD) : -2]):
        raise BadRecord("its seal does not match")
    return body


def open_line(line: bytes, key: bytes) -> dict[str, Any]:
    """Check a line's seal and return its record; raise BadRecord naming what is wrong."""
    try:
        record = json.loads(check_seal(line, key))
    except ValueError:
        raise BadRecord("sealed but not JSON") from None
    if not isinstance(record, dict) or type(record.get("seq")) is not int:
        raise BadRecord("sealed but not a record")
    return record


# `prev` and `seq` of a sealed body, found without parsing it. Sound only for bodies nhidel
# serialised (the seal proves that): keys are sorted ("prev" before "seq"), and inside a JSON
# string every quote is escaped, so `,"seq":` occurs only where the member itself starts.
# `audit verify` reads far more records a second this way; records whose event matters are
# still parsed in full.
_PREV_AND_SEQ = re.compile(rb',"prev":"([0-9a-f]{64})",.*?,"seq":([0-9]{1,18})[,}]', re.DOTALL)


def sealed_fields(body: bytes) -> tuple[bytes, bytes] | None:
    """(prev, seq) of a sealed body, as bytes, or None when the body has no such members."""
    found = _PREV_AND_SEQ.search(body)
    return None if found is None else (found.group(1), found.group(2))


def parse_unchecked(line: bytes) -> dict[str, Any] | None:
    """A record's fields without checking its seal (for tail and filters), or None."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "seq" in record else None


def token_fingerprint(key: bytes, token: str) -> str:
    """A keyed fingerprint that finds a token's records without storing the token.

    Any str has one, even one holding lone surrogates (undecodable input): that is no token,
    and verify refuses it as malformed, recording it under this fingerprint.
    """
    data = token.strip().encode("utf-8", "surrogatepass")
    return hmac.digest(key, b"nhidel-token:" + data, "sha256").hex()[:32]
