"""Ed25519 key material: generation, public forms (JWK, PEM) and the RFC 7638 kid."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any

from nhidel.base64url import b64url_decode, b64url_encode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


ED25519_KEY_BYTES = 32


def b64(data: bytes) -> str:
    """Standard base64, for secrets at rest in the keystore."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Strict standard base64: anything else raises ValueError."""
    return base64.b64decode(text, validate=True)


def generate_private_key() -> bytes:
    """32 random bytes: an Ed25519 private key (its seed)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    return Ed25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )


def private_key(seed: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed)


def public_x(seed: bytes) -> str:
    """The public key of a private seed, as the JWK `x` member (base64url)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = private_key(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return b64url_encode(raw)


def verifying_key(x: str) -> bytes:
    """The raw 32 bytes of the Ed25519 public key a JWK `x` member spells: what signatures are
    checked against (nhidel/tokens/jws.py, with libsodium). ValueError for any other length:
    libsodium reads 32 bytes whatever it is given, so the length is checked here, once."""
    raw = b64url_decode(x)
    if len(raw) != ED25519_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {ED25519_KEY_BYTES} bytes")
    return raw


def public_key(x: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(b64url_decode(x))


def thumbprint(x: str) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an Ed25519 public key: nhidel's kid."""
    # The required members of an OKP key, in lexicographic order, with no whitespace.
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def public_jwk(x: str) -> dict[str, Any]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": x,
        "kid": thumbprint(x),
        "alg": "EdDSA",
        "use": "sig",
    }


def public_pem(x: str) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key(x).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
