"""Grant tokens: EdDSA-signed JWTs with `typ: nhidel+jwt`, minted and checked with pinned rules.

Both minting and checking are written here, short and strict. Checking decides everything
before any cryptography runs: the algorithm is EdDSA and nothing else, `typ` must be
`nhidel+jwt`, the `kid` must name a key the caller trusts, and headers that would let a token
choose its own key (`jwk`, `jku`, `x5u`, `x5c`) or demand extensions (`crit`) are refused.
Nothing the token says is used to pick how it is verified.

Signatures are checked with libsodium (PyNaCl), twice as fast as OpenSSL's Ed25519 and
stricter: it refuses small-order and non-canonical public keys and signature points, which
OpenSSL accepts (with the all-zero "identity" key, OpenSSL takes one signature for every
message). `cryptography` still signs and handles keys; a signature libsodium refuses is a
denial, so the stricter rules can only deny.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from nhidel.base64url import b64url_encode
from nhidel.keys.material import ED25519_KEY_BYTES, private_key
from nhidel.tokens.decision import Reason

TOKEN_TYPE = "nhidel+jwt"  # noqa: S105 - a media type, not a secret
ALGORITHM = "EdDSA"
MAX_TOKEN_LENGTH = 16384
_KEY_CHOOSING_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c"})
_TOKEN = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_TO_STANDARD_B64 = bytes.maketrans(b"-_", b"+/")
_MAX_HEADERS = 16
_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The characters that may end a segment of 4n+2 (4 unused bits) or 4n+3 (2 unused bits)
# characters: those whose unused bits are zero.
_CANONICAL_LAST = {
    2: frozenset(_B64URL_ALPHABET[::16]),
    3: frozenset(_B64URL_ALPHABET[::4]),
}


class TokenRejected(Exception):  # noqa: N818 - a verdict, not a crash
    """A token failed a structural or cryptographic check; `reason` says which (SPEC.md)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def token_sha256(token: str) -> str:
    """What the ledger keeps instead of the token.

    Any str hashes, even one holding lone surrogates (undecodable bytes from argv, the
    environment or stdin): such a text is no token, and is refused as malformed, never a crash.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


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
    token: str, trusted: Mapping[str, bytes], *, typ: str = TOKEN_TYPE
) -> dict[str, Any]:
    """Return the claims of a well-formed token of type `typ` signed by one of `trusted` (kid ->
    the raw 32-byte public key, `nhidel.keys.material.verifying_key`)."""
    return TokenDecoder(trusted, typ=typ).decode(token)


class TokenDecoder:
    """`decode_verified` for a verifier that checks many tokens against the same keys.

    A signer's tokens all share one header segment, so the header's verdict (the key it names,
    or why it is refused) is a pure function of that segment and `trusted`, and is remembered
    for the few distinct headers seen. Every token still has its own signature checked.
    """

    def __init__(self, trusted: Mapping[str, bytes], *, typ: str = TOKEN_TYPE) -> None:
        if any(len(key) != ED25519_KEY_BYTES for key in trusted.values()):
            raise ValueError("an Ed25519 public key is 32 bytes")  # libsodium would read past
        self.trusted = dict(trusted)
        self.typ = typ
        self._headers: dict[str, bytes | TokenRejected] = {}
        self._open = _sodium_open()

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of `token`, or TokenRejected with its reason code (see the module doc)."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise TokenRejected(Reason.MALFORMED, "not a token")
        parts = _TOKEN.fullmatch(token.strip())
        if parts is None:
            raise TokenRejected(Reason.MALFORMED, "a token is three dot-separated base64url parts")
        head, payload, signature = parts.groups()
        key = self._headers.get(head)
        if key is None:
            key = self._header_verdict(head)
            if len(self._headers) >= _MAX_HEADERS:
                # Tokens choose headers: bounded, and never full of junk for good.
                self._headers.clear()
            self._headers[head] = key
        if isinstance(key, TokenRejected):
            raise TokenRejected(key.reason, key.detail)
        open_signed, forged = self._open
        try:
            open_signed(_b64url(signature) + f"{head}.{payload}".encode("ascii"), key)
        except (ValueError, forged):
            # ValueError: the signature is not base64url (nothing was verified)
            raise _signature_rejection(signature) from None
        return _json_object(payload, "payload")

    def _header_verdict(self, head: str) -> bytes | TokenRejected:
        try:
            header = _json_object(head, "header")
        except TokenRejected as rejected:
            return rejected
        if header.get("alg") != ALGORITHM:
            alg = header.get("alg")
            return TokenRejected(Reason.BAD_SIGNATURE, f"algorithm {alg!r} is not EdDSA")
        chosen = _KEY_CHOOSING_HEADERS.intersection(header)
        if chosen:
            return TokenRejected(Reason.BAD_SIGNATURE, f"refused header {sorted(chosen)[0]!r}")
        if "crit" in header:
            return TokenRejected(Reason.MALFORMED, "refused header 'crit'")
        if not isinstance(header.get("typ"), str) or header["typ"].lower() != self.typ:
            return TokenRejected(Reason.WRONG_TYPE, f"typ {header.get('typ')!r} is not {self.typ}")
        kid = header.get("kid")
        key = self.trusted.get(kid) if isinstance(kid, str) else None
        if key is None:
            return TokenRejected(Reason.UNKNOWN_KEY, "signed by a key this verifier does not trust")
        return key


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of `token` as it spells them, checking nothing but its shape
    (three canonical base64url parts, the first two JSON objects); TokenRejected (malformed)
    otherwise. For reading a token (`nhidel inspect`), never for trusting one."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected(Reason.MALFORMED, f"it is longer than {MAX_TOKEN_LENGTH} characters")
    parts = _TOKEN.fullmatch(token.strip())
    if parts is None:
        raise TokenRejected(Reason.MALFORMED, "a token is three dot-separated base64url parts")
    head, payload, _ = parts.groups()
    decoded = _json_object(head, "header"), _json_object(payload, "payload")
    for value, what in zip(decoded, ("header", "payload"), strict=True):
        try:  # NaN and Infinity parse, but are not JSON: they could not be printed back as JSON
            json.dumps(value, allow_nan=False)
        except (ValueError, RecursionError):
            raise TokenRejected(Reason.MALFORMED, f"the {what} is not strict JSON") from None
    return decoded


@cache
def _sodium_open() -> tuple[Callable[[bytes, bytes], bytes], type[Exception]]:
    """libsodium's `crypto_sign_open` (signature + message, public key), and what it raises
    for a signature that does not verify (a short one included). PyNaCl binds no detached
    verify; the concatenation costs less than a microsecond."""
    from nacl.bindings import crypto_sign_open
    from nacl.exceptions import BadSignatureError

    return crypto_sign_open, BadSignatureError


def _signature_rejection(signature: str) -> TokenRejected:
    try:
        _b64url(signature)
    except ValueError:
        return TokenRejected(Reason.MALFORMED, "the signature is not canonical base64url")
    return TokenRejected(Reason.BAD_SIGNATURE, "the signature does not match")


def _b64url(segment: str) -> bytes:
    """Strict, canonical base64url without padding, for a segment `_TOKEN` matched (alphabet
    checked). The last character of a segment whose length is not a multiple of 4 carries
    unused low bits (4 or 2); they must be zero, so that a token has one spelling only: a
    signature respelled in those bits is not the one that was signed (and hashed into the
    ledger), and is refused as malformed."""
    remainder = len(segment) % 4
    if remainder == 1 or (remainder and segment[-1] not in _CANONICAL_LAST[remainder]):
        raise ValueError("not canonical base64url")
    padded = segment.encode("ascii").translate(_TO_STANDARD_B64) + b"=" * (-len(segment) % 4)
    return binascii.a2b_base64(padded, strict_mode=True)


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64url(segment).decode("utf-8"))
    except (ValueError, RecursionError):
        garbled = f"the {what} is not canonical base64url JSON"
        raise TokenRejected(Reason.MALFORMED, garbled) from None
    if not isinstance(value, dict):
        raise TokenRejected(Reason.MALFORMED, f"the {what} is not a JSON object")
    return value
