"""Verification pins everything: one test per way a token is denied, with a fixed clock.

Adversarial tokens are assembled by hand (base64url JSON + signature), so these tests hold
whatever PyJWT would or would not refuse.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from helpers.token_world import (
    SCOPE,
    T,
    World,
    assert_denied,
    attacker_key,
    b64url,
    claims_of,
    forge,
    segment,
    unsegment,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhidel.actions.grants import new_grant_id, revoke
from nhidel.errors import UsageError
from nhidel.keys.material import private_key, public_x, thumbprint, verifying_key
from nhidel.keys.principal import load_trust
from nhidel.models import Grant
from nhidel.tokens.decision import Reason
from nhidel.tokens.jws import TokenRejected, mint
from nhidel.tokens.jws import decode_verified as check
from nhidel.verifiers.local import Verifier

# -- the baseline every denial is measured against -----------------------------------------


def test_a_genuine_grant_is_allowed_for_its_scope(world: World, granted: tuple[Grant, str]) -> None:
    grant, token = granted
    decision = world.decide(token)
    assert decision.allowed is True
    assert decision.reason is None
    assert decision.grant is not None and decision.grant.id == grant.id


def test_a_hand_assembled_token_signed_by_the_real_key_is_not_in_the_ledger(
    world: World, granted: tuple[Grant, str]
) -> None:
    # Proves forge() builds tokens the verifier parses and checks the signature of: the same
    # claims re-signed by hand differ from the issued token only in bytes, so the ledger's
    # token hash says it never issued them.
    _, token = granted
    reforged = forge(world.header(), claims_of(token), world.sign)
    assert reforged != token
    assert_denied(world.decide(reforged), Reason.UNKNOWN_GRANT)


# -- structural and cryptographic denials ---------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(world: World, granted: tuple[Grant, str], alg: str) -> None:
    # With some signature bytes, the header's algorithm is what gets it refused.
    token = forge(world.header(alg=alg), claims_of(granted[1]), lambda _: b"\x00" * 64)
    assert_denied(world.decide(token), Reason.BAD_SIGNATURE)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_with_the_usual_empty_signature_is_refused_as_malformed(
    world: World, granted: tuple[Grant, str], alg: str
) -> None:
    # `header.payload.` (an empty third part) is not three base64url parts.
    token = forge(world.header(alg=alg), claims_of(granted[1]))
    assert token.endswith(".")
    assert_denied(world.decide(token), Reason.MALFORMED)


@pytest.mark.parametrize("form", ["raw", "pem", "jwk_x"])
def test_hs256_signed_with_the_public_key_as_hmac_secret_is_refused(
    world: World, granted: tuple[Grant, str], form: str
) -> None:
    x = load_trust(world.keystore).keys[world.signer.kid]["x"]
    public = private_key(world.signer.seed).public_key()
    secret = {
        "raw": public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        "pem": public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "jwk_x": x.encode(),
    }[form]
    token = forge(
        world.header(alg="HS256"),
        claims_of(granted[1]),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )
    assert_denied(world.decide(token), Reason.BAD_SIGNATURE)


@pytest.mark.parametrize("kid_owner", ["attacker", "principal"])
def test_embedded_jwk_header_with_the_attackers_own_key_is_refused(
    world: World, granted: tuple[Grant, str], kid_owner: str
) -> None:
    key, jwk = attacker_key()
    kid = thumbprint(jwk["x"]) if kid_owner == "attacker" else world.signer.kid
    token = forge(world.header(kid=kid, jwk=jwk), claims_of(granted[1]), key.sign)
    assert_denied(world.decide(token), Reason.BAD_SIGNATURE)


@pytest.mark.parametrize("header", ["jku", "x5u"])
def test_key_url_headers_are_refused(world: World, granted: tuple[Grant, str], header: str) -> None:
    key, jwk = attacker_key()
    token = forge(
        world.header(kid=thumbprint(jwk["x"]), **{header: "https://evil.test/jwks"}),
        claims_of(granted[1]),
        key.sign,
    )
    assert_denied(world.decide(token), Reason.BAD_SIGNATURE)


def test_crit_header_is_refused_even_when_signed_by_the_real_key(
    world: World, granted: tuple[Grant, str]
) -> None:
    token = forge(world.header(crit=["exp"]), claims_of(granted[1]), world.sign)
    assert_denied(world.decide(token), Reason.MALFORMED)


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "nhidel", None, 7])
def test_wrong_typ_is_refused_even_when_signed_by_the_real_key(
    world: World, granted: tuple[Grant, str], typ: object
) -> None:
    header = world.header(typ=typ)
    if typ is None:
        del header["typ"]
    token = forge(header, claims_of(granted[1]), world.sign)
    assert_denied(world.decide(token), Reason.WRONG_TYPE)


@pytest.mark.parametrize("kid", ["unknown", "", None, ["x"]])
def test_unknown_kid_is_refused_even_when_signed_by_the_real_key(
    world: World, granted: tuple[Grant, str], kid: object
) -> None:
    header = world.header(kid=kid)
    if kid is None:
        del header["kid"]
    token = forge(header, claims_of(granted[1]), world.sign)
    assert_denied(world.decide(token), Reason.UNKNOWN_KEY)


def test_attackers_own_key_under_its_own_kid_is_an_unknown_key(
    world: World, granted: tuple[Grant, str]
) -> None:
    key, jwk = attacker_key()
    token = forge(world.header(kid=thumbprint(jwk["x"])), claims_of(granted[1]), key.sign)
    assert_denied(world.decide(token), Reason.UNKNOWN_KEY)


def test_attackers_key_under_the_principals_kid_is_a_bad_signature(
    world: World, granted: tuple[Grant, str]
) -> None:
    key, _ = attacker_key()
    token = forge(world.header(), claims_of(granted[1]), key.sign)
    assert_denied(world.decide(token), Reason.BAD_SIGNATURE)


def test_a_widened_payload_under_the_original_signature_is_a_bad_signature(
    world: World, granted: tuple[Grant, str]
) -> None:
    _, token = granted
    head, _, signature = token.split(".")
    widened = {**claims_of(token), "scope": "repo:*:*"}
    tampered = f"{head}.{segment(widened)}.{signature}"
    assert_denied(world.decide(tampered, ("repo:write:acme/api",)), Reason.BAD_SIGNATURE)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "....",
        "W10.e30.AA",
        "bnVsbA.e30.AA",
        "!!!.e30.AA",
        "e30",
        "\x00\x01",
        "x" * 20000,
    ],
)
def test_malformed_garbage_is_refused(world: World, token: str) -> None:
    assert_denied(world.decide(token), Reason.MALFORMED)


def test_a_signature_that_is_not_base64url_is_malformed(
    world: World, granted: tuple[Grant, str]
) -> None:
    head, body, _ = granted[1].split(".")
    assert_denied(world.decide(f"{head}.{body}.not+base64/=="), Reason.MALFORMED)


@pytest.mark.parametrize(
    "change",
    [
        {"exp": "soon"},
        {"exp": 1.5},
        {"nbf": True},
        {"jti": "not-a-grant-id"},
        {"act": "reviewer"},
        {"scope": 5},
        {"iss": None},
    ],
)
def test_well_signed_claims_of_the_wrong_shape_are_malformed(
    world: World, granted: tuple[Grant, str], change: dict[str, Any]
) -> None:
    token = forge(world.header(), {**claims_of(granted[1]), **change}, world.sign)
    assert_denied(world.decide(token), Reason.MALFORMED)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(token=st.text(max_size=300))
def test_token_check_on_arbitrary_text_only_ever_rejects(world: World, token: str) -> None:
    trusted = {world.signer.kid: verifying_key(public_x(world.signer.seed))}
    with pytest.raises(TokenRejected) as caught:
        check(token, trusted)
    assert type(caught.value.reason) is Reason  # the enum itself, never a look-alike string


# -- denials that need the claims or the ledger ---------------------------------------------


def test_well_signed_token_the_ledger_never_issued_is_unknown_grant(
    world: World, granted: tuple[Grant, str]
) -> None:
    claims = {**claims_of(granted[1]), "jti": new_grant_id()}
    token = mint(claims, world.signer.seed, world.signer.kid)
    assert_denied(world.decide(token), Reason.UNKNOWN_GRANT)


def test_well_signed_token_with_a_real_jti_but_other_claims_is_unknown_grant(
    world: World, granted: tuple[Grant, str]
) -> None:
    claims = {**claims_of(granted[1]), "scope": "repo:read:acme/*"}
    token = mint(claims, world.signer.seed, world.signer.kid)
    assert_denied(world.decide(token, ("repo:read:acme/secret",)), Reason.UNKNOWN_GRANT)


def test_wrong_issuer_is_refused(world: World, granted: tuple[Grant, str]) -> None:
    claims = {**claims_of(granted[1]), "iss": "nhidel:mallory"}
    token = mint(claims, world.signer.seed, world.signer.kid)
    assert_denied(world.decide(token), Reason.WRONG_ISSUER)


def test_expired_at_exp_and_allowed_one_second_before(
    world: World, granted: tuple[Grant, str]
) -> None:
    grant, token = granted
    assert world.decide(token, at=grant.expires_at - 1).allowed is True
    assert_denied(world.decide(token, at=grant.expires_at), Reason.EXPIRED)
    assert_denied(world.decide(token, at=grant.expires_at + 86400), Reason.EXPIRED)


def test_not_before_in_five_minutes_is_not_yet_valid_until_then(world: World) -> None:
    grant, token = world.issue(ttl="15m", not_before="+5m")
    assert grant.not_before == T + 300
    assert_denied(world.decide(token, at=T), Reason.NOT_YET_VALID)
    assert_denied(world.decide(token, at=T + 299), Reason.NOT_YET_VALID)
    assert world.decide(token, at=T + 300).allowed is True


def test_revoked_grant_is_refused(world: World, granted: tuple[Grant, str]) -> None:
    grant, token = granted
    revoke(world.paths, ids=[grant.id], reason="test", now=T)
    assert_denied(world.decide(token), Reason.REVOKED)


def test_revoked_grant_cannot_be_consumed(world: World) -> None:
    grant, token = world.issue(ttl="15m", uses=3)
    revoke(world.paths, ids=[grant.id], reason="test", now=T)
    assert_denied(world.decide(token, consume=True), Reason.REVOKED)
    assert world.uses(grant.id) == 0


@pytest.mark.parametrize("asked", [None, "other.example.com", "API.example.com"])
def test_wrong_audience_is_refused(world: World, asked: str | None) -> None:
    _, token = world.issue(ttl="15m", aud="api.example.com")
    assert_denied(world.decide(token, aud=asked), Reason.WRONG_AUDIENCE)
    assert world.decide(token, aud="api.example.com").allowed is True


@pytest.mark.parametrize(
    "asked",
    [
        ("repo:write:acme/api",),
        ("repo:read:acme/other",),
        ("repo:read:acme/*",),
        ("repo:*:acme/api",),
        ("ticket:create:queue/x",),
        (SCOPE, "repo:read:acme/other"),
    ],
)
def test_scope_not_granted_is_refused(
    world: World, granted: tuple[Grant, str], asked: tuple[str, ...]
) -> None:
    assert_denied(world.decide(granted[1], asked), Reason.SCOPE_NOT_GRANTED)


def test_any_scope_allows_what_was_granted_and_no_scope_at_all_is_a_usage_error(
    world: World, granted: tuple[Grant, str]
) -> None:
    assert world.decide(granted[1], (), any_scope=True).allowed is True
    with pytest.raises(UsageError):
        world.decide(granted[1], ())


def test_uses_exhausted_after_max_uses_consumes(world: World) -> None:
    grant, token = world.issue(ttl="15m", uses=2)
    assert world.decide(token, consume=True).allowed is True
    assert world.decide(token, consume=True).allowed is True
    assert_denied(world.decide(token, consume=True), Reason.USES_EXHAUSTED)
    assert_denied(world.decide(token), Reason.USES_EXHAUSTED)
    assert world.uses(grant.id) == 2


# -- uses and leeway ------------------------------------------------------------------------


def test_plain_verify_never_spends_a_use(world: World) -> None:
    grant, token = world.issue(ttl="15m", uses=1)
    for _ in range(5):
        assert world.decide(token).allowed is True
    assert world.uses(grant.id) == 0
    assert world.decide(token, consume=True).allowed is True
    assert world.uses(grant.id) == 1


def test_consume_counts_exactly_one_use_per_allowed_check(
    world: World, granted: tuple[Grant, str]
) -> None:
    grant, token = granted
    for expected in (1, 2, 3):
        decision = world.decide(token, consume=True)
        assert decision.allowed is True
        assert decision.grant is not None and decision.grant.uses == expected
        assert world.uses(grant.id) == expected


def test_a_denied_consume_spends_no_use(world: World) -> None:
    grant, token = world.issue(ttl="15m", uses=5)
    assert_denied(
        world.decide(token, ("repo:write:acme/api",), consume=True), Reason.SCOPE_NOT_GRANTED
    )
    assert_denied(world.decide(token, consume=True, at=grant.expires_at), Reason.EXPIRED)
    assert world.uses(grant.id) == 0


def test_leeway_accepts_a_token_just_past_exp_and_not_beyond(
    world: World, granted: tuple[Grant, str]
) -> None:
    grant, token = granted
    assert world.decide(token, at=grant.expires_at + 29, leeway=30).allowed is True
    assert_denied(world.decide(token, at=grant.expires_at + 30, leeway=30), Reason.EXPIRED)
    assert_denied(world.decide(token, at=grant.expires_at + 29, leeway=0), Reason.EXPIRED)


def test_leeway_accepts_a_token_just_before_nbf_and_not_earlier(world: World) -> None:
    _, token = world.issue(ttl="15m", not_before="+5m")
    assert world.decide(token, at=T + 300 - 30, leeway=30).allowed is True
    assert_denied(world.decide(token, at=T + 300 - 31, leeway=30), Reason.NOT_YET_VALID)


def test_negative_leeway_is_a_usage_error(world: World) -> None:
    with pytest.raises(UsageError):
        Verifier(world.paths, world.keystore, leeway=-1, clock=lambda: T)


def test_consume_within_leeway_past_exp_agrees_with_plain_verify(
    world: World, granted: tuple[Grant, str]
) -> None:
    grant, token = granted
    at = grant.expires_at + 10
    assert world.decide(token, at=at, leeway=30).allowed is True
    decision = world.decide(token, at=at, leeway=30, consume=True)
    assert decision.allowed is True, decision.reason
    assert world.uses(grant.id) == 1


# -- the token itself -----------------------------------------------------------------------


def test_issued_token_header_and_claims_follow_the_spec(world: World) -> None:
    grant, token = world.issue(ttl="15m", aud="api.example.com", uses=3)
    header = unsegment(token.split(".")[0])
    assert header == {"alg": "EdDSA", "typ": "nhidel+jwt", "kid": world.signer.kid}
    claims = claims_of(token)
    assert claims["iss"] == "nhidel:alice"
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": "reviewer"}
    assert claims["aud"] == "api.example.com"
    assert claims["scope"] == SCOPE
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (T, T, T + 900)
    assert claims["jti"] == grant.id
    assert claims["max_uses"] == 3


def test_junk_headers_do_not_crowd_the_real_one_out_of_the_decoders_memory(
    world: World, granted: tuple[Grant, str]
) -> None:
    """The decoder remembers header verdicts; a flood of made-up headers must not leave the
    signer's own header out of that memory for good (a slower gateway, not a wrong one)."""
    from nhidel.tokens.jws import TokenDecoder

    _, token = granted
    decoder = TokenDecoder({world.signer.kid: verifying_key(public_x(world.signer.seed))})
    for n in range(100):
        junk = b64url(json.dumps({"alg": "EdDSA", "n": n}).encode())
        with pytest.raises(TokenRejected):
            decoder.decode(f"{junk}.e30.AAAA")
    assert decoder.decode(token)["jti"]
    assert token.split(".")[0] in decoder._headers
