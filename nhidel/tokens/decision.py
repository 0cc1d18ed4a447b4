"""A verifier's verdict: allowed or not, and why, in SPEC.md's reason codes.

Every verifier (local, remote) and every refusal on the way (a token that is not a JWS, a
claim out of place) speaks these codes as `Reason` members from the moment it decides to the
JSON it prints: one enum, end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nhidel.models import Grant


class Reason(StrEnum):
    """Why a token was denied; the same codes on the command line, in JSON and here."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    WRONG_TYPE = "wrong_type"
    WRONG_ISSUER = "wrong_issuer"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    WRONG_AUDIENCE = "wrong_audience"
    SCOPE_NOT_GRANTED = "scope_not_granted"
    USES_EXHAUSTED = "uses_exhausted"
    UNKNOWN_GRANT = "unknown_grant"
    STATUS_UNAVAILABLE = "status_unavailable"
    # nhidel's own state failed an integrity check: nothing is allowed until it is repaired.
    INTEGRITY = "integrity"
    # At enforcement points only: a call an approval mark covers, and the human's answer.
    APPROVAL_PENDING = "approval_pending"
    APPROVAL_DENIED = "approval_denied"
    APPROVAL_TIMEOUT = "approval_timeout"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: Reason | None
    detail: str
    grant: Grant | None = None

    def to_json(self, now: int) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reason": None if self.reason is None else self.reason.value,
            "detail": self.detail,
            "grant": None if self.grant is None else self.grant.to_json(now),
        }
