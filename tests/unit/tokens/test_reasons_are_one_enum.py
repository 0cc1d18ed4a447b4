"""Reason codes are one enum end to end: from the JWS check that refuses a token, through the
verifiers, to the public API."""

from __future__ import annotations

import pytest
from helpers.token_world import World, claims_of, forge

import nhidel
from nhidel.keys.material import public_x, verifying_key
from nhidel.tokens import decision
from nhidel.tokens.decision import Reason
from nhidel.tokens.jws import TokenDecoder, TokenRejected


def test_the_public_api_names_the_one_enum_and_verdict() -> None:
    assert nhidel.Reason is decision.Reason
    assert nhidel.Decision is decision.Decision


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"kid": "somebody-else"}, Reason.UNKNOWN_KEY),
        ({"typ": "JWT"}, Reason.WRONG_TYPE),
        ({"alg": "HS256"}, Reason.BAD_SIGNATURE),
        ({"crit": ["exp"]}, Reason.MALFORMED),
    ],
)
def test_a_rejected_token_carries_a_reason_member_not_a_string(
    world: World, header: dict[str, object], expected: Reason
) -> None:
    claims = claims_of(world.issue(ttl="15m")[1])
    token = forge(world.header(**header), claims, world.sign)
    decoder = TokenDecoder({world.signer.kid: verifying_key(public_x(world.signer.seed))})
    for _ in range(2):  # the first verdict on a header, then the remembered one
        with pytest.raises(TokenRejected) as rejected:
            decoder.decode(token)
        assert rejected.value.reason is expected
