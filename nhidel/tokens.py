"""Grant tokens: EdDSA-signed JWTs with `typ: nhidel+jwt`, minted and checked with pinned rules.

Both minting and checking are written here, short and strict. Checking decides everything
before any cryptography runs: the algorithm is EdDSA and nothing else, `typ` must be
`nhidel+jwt`, the `kid` must name a key the caller trusts, and headers that would let a token
choose its own key (`jwk`, `jku`, `x5u`, `x5c`) or demand extensions (`crit`) are refused.
Nothing the token says is used to pick how it is verified.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .keys import b64url_decode, b64url_encode, private_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TOKEN_TYPE = "nhidel+jwt"  # noqa: S105 - a media type, not a secret
ALGORITHM = "EdDSA"
MAX_TOKEN_LENGTH = 16384
_KEY_CHOOSING_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c"})
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


class TokenRejected(Exception):  # noqa: N818 - a verdict, not a crash
    """A token failed a structural or cryptographic check; `reason` is a SPEC.md reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def token_sha256(token: str) -> str:
    """What the ledger keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mint(claims: dict[str, Any], seed: bytes, kid: str, *, typ: str = TOKEN_TYPE) -> str:
    """Sign `claims` with the private key `seed` (EdDSA), typed (`typ`) and keyed per SPEC.md.

    A JWS compact serialisation is three base64url parts and one signature, so it is built here:
    PyJWT would add ~25 ms to every grant just by being imported (it loads the X.509 stack).
    Tests check that PyJWT and joserfc verify what this makes.
    """
    header = {"alg": ALGORITHM, "kid": kid, "typ": typ}
    signing_input = f"{_json_b64url(header, sort_keys=True)}.{_json_b64url(claims)}"
    signature = private_key(seed).sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def _json_b64url(value: dict[str, Any], *, sort_keys: bool = False) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":"), sort_keys=sort_keys).encode())


def decode_verified(
    token: str, trusted: Mapping[str, Ed25519PublicKey], *, typ: str = TOKEN_TYPE
) -> dict[str, Any]:
    """Return the claims of a well-formed token of type `typ` signed by one of `trusted`."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected("malformed", "not a token")
    parts = token.strip().split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise TokenRejected("malformed", "a token is three dot-separated base64url parts")
    header = _json_object(parts[0], "header")
    if header.get("alg") != ALGORITHM:
        raise TokenRejected("bad_signature", f"algorithm {header.get('alg')!r} is not EdDSA")
    chosen = _KEY_CHOOSING_HEADERS.intersection(header)
    if chosen:
        raise TokenRejected("bad_signature", f"refused header {sorted(chosen)[0]!r}")
    if "crit" in header:
        raise TokenRejected("malformed", "refused header 'crit'")
    if not isinstance(header.get("typ"), str) or header["typ"].lower() != typ:
        raise TokenRejected("wrong_type", f"typ {header.get('typ')!r} is not {typ}")
    kid = header.get("kid")
    key = trusted.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenRejected("unknown_key", "signed by a key this verifier does not trust")
    try:
        signature = b64url_decode(parts[2])
    except ValueError:
        raise TokenRejected("malformed", "the signature is not base64url") from None
    try:
        key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        raise TokenRejected("bad_signature", "the signature does not match") from None
    return _json_object(parts[1], "payload")


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(segment))
    except (ValueError, RecursionError):
        raise TokenRejected("malformed", f"the {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise TokenRejected("malformed", f"the {what} is not a JSON object")
    return value
