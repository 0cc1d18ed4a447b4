"""Every reason code the verifier can give maps to the status SPEC's table gives it."""

from __future__ import annotations

from nhidel.enforce.broker import status_for
from nhidel.tokens.decision import Reason

SPEC_TABLE = {
    401: {
        "malformed", "bad_signature", "unknown_key", "wrong_type", "wrong_issuer", "expired",
        "not_yet_valid", "revoked", "uses_exhausted", "unknown_grant",
    },
    403: {"scope_not_granted", "wrong_audience", "approval_denied", "approval_timeout",
          "approval_pending"},
    503: {"integrity", "status_unavailable"},
}  # fmt: skip


def test_each_reason_has_the_status_of_specs_table() -> None:
    for reason in Reason:
        (status,) = [s for s, reasons in SPEC_TABLE.items() if reason.value in reasons]
        assert status_for(reason) == status, reason
