"""Signatures are checked with libsodium: every token nhidel mints still verifies, two JOSE
libraries that share no code with it agree, and where libsodium is stricter than OpenSSL
(small-order or non-canonical points, S past the group order) it only ever denies."""

from __future__ import annotations

import json

import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwk as joserfc_jwk
from joserfc import jws as joserfc_jws

from nhidel.base64url import b64url_decode, b64url_encode
from nhidel.keys.material import (
    generate_private_key,
    public_jwk,
    public_x,
    thumbprint,
    verifying_key,
)
from nhidel.tokens.decision import Reason
from nhidel.tokens.jws import TokenDecoder, TokenRejected, mint
from nhidel.verifiers.remote import RemoteVerifier

# joserfc warns that RFC 9864 deprecates "EdDSA" for "Ed25519"; SPEC.md names EdDSA.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

SEED = generate_private_key()
X = public_x(SEED)
KID = thumbprint(X)
# The order of Ed25519's prime-order subgroup: a signature's S must be below it.
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
# The identity point (y = 1): of order 1, so [k]A vanishes from the verification equation.
IDENTITY = bytes([1]) + bytes(31)
# A point of order 8 other than the identity (y = 0 is not on the curve; y = -1 has order 2).
ORDER_TWO = bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")

claims_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
any_claims = st.fixed_dictionaries(
    {"iss": claims_text, "sub": claims_text, "jti": claims_text},
    optional={
        "scope": claims_text,
        "exp": st.integers(min_value=0, max_value=2**53),
        "nested": st.dictionaries(claims_text, st.integers() | claims_text, max_size=3),
    },
)


def openssl_accepts(key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def nhidel_accepts(key: bytes, token: str) -> bool:
    try:
        TokenDecoder({KID: key}).decode(token)
    except TokenRejected:
        return False
    return True


def signed_with(header_and_payload: str, signature: bytes) -> str:
    return f"{header_and_payload}.{b64url_encode(signature)}"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(claims=any_claims)
def test_every_token_nhidel_mints_verifies_here_and_in_two_jose_libraries(
    claims: dict[str, object],
) -> None:
    token = mint(claims, SEED, KID)
    assert TokenDecoder({KID: verifying_key(X)}).decode(token) == claims
    pyjwt_key = jwt.PyJWK(public_jwk(X))
    header = jwt.get_unverified_header(token)
    assert header["kid"] == KID
    assert json.loads(jwt.api_jws.decode(token, pyjwt_key.key, algorithms=["EdDSA"])) == claims
    joserfc_key = joserfc_jwk.OKPKey.import_key(public_jwk(X))
    verified = joserfc_jws.deserialize_compact(token, joserfc_key, algorithms=["EdDSA"])
    assert json.loads(verified.payload) == claims


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    claims=any_claims,
    position=st.integers(min_value=0, max_value=63),
    flip=st.integers(min_value=1, max_value=255),
)
def test_a_signature_libsodium_accepts_openssl_accepts_too(
    claims: dict[str, object], position: int, flip: int
) -> None:
    token = mint(claims, SEED, KID)
    signing_input, _, encoded = token.rpartition(".")
    signature = bytearray(b64url_decode(encoded))
    signature[position] ^= flip
    changed = signed_with(signing_input, bytes(signature))
    key = verifying_key(X)
    if nhidel_accepts(key, changed):
        assert openssl_accepts(key, bytes(signature), signing_input.encode())
    assert not nhidel_accepts(key, changed)  # (any changed byte: a forgery)


def test_s_past_the_group_order_is_refused_though_it_is_the_same_equation() -> None:
    token = mint({"iss": "i", "sub": "s", "jti": "j"}, SEED, KID)
    signing_input, _, encoded = token.rpartition(".")
    signature = b64url_decode(encoded)
    s = int.from_bytes(signature[32:], "little") + GROUP_ORDER
    malleated = signature[:32] + s.to_bytes(32, "little")
    assert not nhidel_accepts(verifying_key(X), signed_with(signing_input, malleated))


@pytest.mark.parametrize("small_order_key", [IDENTITY, ORDER_TWO])
def test_a_small_order_key_forges_nothing(small_order_key: bytes) -> None:
    """With the identity as public key and (R, S) = (identity, 0), OpenSSL's check holds for
    every message: a JWKS holding such a key would let anyone sign anything. libsodium
    refuses small-order keys, so the forgery is a bad signature here."""
    signing_input = mint({"iss": "i", "sub": "s", "jti": "j"}, SEED, KID).rpartition(".")[0]
    forged = IDENTITY + bytes(32)
    if small_order_key == IDENTITY:
        assert openssl_accepts(small_order_key, forged, signing_input.encode())
    with pytest.raises(TokenRejected) as rejected:
        TokenDecoder({KID: small_order_key}).decode(signed_with(signing_input, forged))
    assert rejected.value.reason is Reason.BAD_SIGNATURE


def test_a_remote_verifier_refuses_the_identity_key_forgery_end_to_end() -> None:
    x = b64url_encode(IDENTITY)
    jwks = json.dumps({"keys": [public_jwk(x)]}).encode()
    claims = {"iss": "nhidel:mallory", "sub": "mallory", "act": {"sub": "bot"},
              "scope": "repo:write:acme/api", "iat": 0, "nbf": 0, "exp": 2**40,
              "jti": "g" + "a" * 26}  # fmt: skip
    header = {"alg": "EdDSA", "kid": thumbprint(x), "typ": "nhidel+jwt"}
    encode = lambda value: b64url_encode(json.dumps(value).encode())  # noqa: E731
    forged = f"{encode(header)}.{encode(claims)}.{b64url_encode(IDENTITY + bytes(32))}"
    remote = RemoteVerifier("jwks.json", fetcher=lambda _: jwks)
    decision = remote.check(forged, ["repo:write:acme/api"])
    assert not decision.allowed and decision.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_a_key_of_another_length_is_refused_before_libsodium_reads_it(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        verifying_key(b64url_encode(b"\x01" * length))
    with pytest.raises(ValueError, match="32 bytes"):
        TokenDecoder({KID: b"\x01" * length})
