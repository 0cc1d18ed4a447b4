"""A grant's status is defined once (`models.grant_status`): its order and its boundaries."""

from __future__ import annotations

import pytest

from nhidel.models import GrantStatus, grant_status

NBF, EXP = 100, 200


@pytest.mark.parametrize(
    ("now", "revoked_at", "max_uses", "uses", "expected"),
    [
        (NBF - 1, None, None, 0, GrantStatus.PENDING),
        (NBF, None, None, 0, GrantStatus.ACTIVE),
        (EXP - 1, None, None, 0, GrantStatus.ACTIVE),
        (EXP, None, None, 0, GrantStatus.EXPIRED),
        (NBF, None, 2, 1, GrantStatus.ACTIVE),
        (NBF, None, 2, 2, GrantStatus.EXHAUSTED),
        (NBF - 1, None, 2, 2, GrantStatus.EXHAUSTED),  # used up before it starts: exhausted
        (EXP, None, 2, 2, GrantStatus.EXPIRED),  # expiry says more than the uses
        (EXP, 150, 2, 2, GrantStatus.REVOKED),  # and a revocation more than anything
        (NBF - 1, 50, None, 0, GrantStatus.REVOKED),
    ],
)
def test_status_boundaries_and_order(
    now: int, revoked_at: int | None, max_uses: int | None, uses: int, expected: GrantStatus
) -> None:
    assert grant_status(now, revoked_at, EXP, max_uses, uses, NBF) is expected
