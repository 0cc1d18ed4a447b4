"""The principal's signing key: created once by `init`, read only to sign, pinned for verify."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .audit import AuditLog, event
from .config import Config, Paths, load_config, update_config
from .errors import KeystoreError, PolicyError, UsageError
from .fsutil import exclusive_lock
from .keys import generate_private_key, public_x, thumbprint
from .keystore import SIGNING, TRUST, KeyStore
from .timefmt import rfc3339

_PRINCIPAL = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")
NO_KEY_HINT = "create one with: nhidel init"


@dataclass(frozen=True, slots=True)
class Signer:
    """What signing needs, loaded in one keystore read. Never printed, logged or stored."""

    principal: str
    issuer: str
    kid: str
    seed: bytes

    def __repr__(self) -> str:  # keep the key out of tracebacks and debug output
        return f"Signer(principal={self.principal!r}, kid={self.kid!r})"


@dataclass(frozen=True, slots=True)
class Trust:
    """The issuer and public keys verify accepts, as pinned in the keystore."""

    issuer: str
    keys: dict[str, dict[str, Any]]  # kid -> {"x": ..., "state": ..., "created_at": ...}


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    principal: str
    issuer: str
    kid: str
    x: str
    state: str
    created_at: str | None


def init_principal(
    paths: Paths, keystore: KeyStore, *, principal: str, issuer: str | None, now: int
) -> PublicKeyInfo:
    """Create the signing key and pin its public half; refuse if a key already exists."""
    if not _PRINCIPAL.fullmatch(principal):
        raise UsageError(
            f"invalid principal {principal!r}",
            "use 1-128 printable characters without spaces, e.g. alice@example.com",
        )
    issuer = issuer or f"nhidel:{principal}"
    if not _PRINCIPAL.fullmatch(issuer):
        raise UsageError(f"invalid issuer {issuer!r}", "use printable characters without spaces")
    # One init at a time: the check and both writes must not interleave with another init's.
    with exclusive_lock(paths.init_lock):
        if keystore.read(SIGNING) is not None:
            raise PolicyError(
                f"a signing key already exists in {keystore.description}",
                "nhidel never overwrites a key; see it with: nhidel key show",
            )
        seed = generate_private_key()
        x = public_x(seed)
        kid = thumbprint(x)
        created = rfc3339(now)
        # Pin the public key before the private one exists, so no signed token is ever untrusted.
        keystore.write(
            TRUST,
            {"issuer": issuer, "keys": {kid: {"x": x, "state": "active", "created_at": created}}},
        )
        keystore.write(
            SIGNING,
            {"principal": principal, "issuer": issuer, "kid": kid, "private_key": _b64(seed)},
        )

    def record(config: Config) -> Config:
        keys = {**config.keys, kid: {"x": x, "created_at": created or ""}}
        return Config(principal=principal, issuer=issuer, keys=keys, agents=config.agents)

    update_config(paths, record)
    AuditLog(paths).append([event("key.created", principal=principal, kid=kid)])
    return PublicKeyInfo(principal, issuer, kid, x, "active", created)


def load_signer(keystore: KeyStore) -> Signer:
    entry = keystore.read(SIGNING)
    if entry is None:
        raise KeystoreError(f"no signing key in {keystore.description}", NO_KEY_HINT)
    return Signer(entry["principal"], entry["issuer"], entry["kid"], _unb64(entry["private_key"]))


def load_trust(keystore: KeyStore) -> Trust:
    entry = keystore.read(TRUST)
    if entry is None:
        raise KeystoreError(f"no trusted keys in {keystore.description}", NO_KEY_HINT)
    return Trust(entry["issuer"], dict(entry["keys"]))


def public_keys(paths: Paths, keystore: KeyStore) -> list[PublicKeyInfo]:
    """Every pinned public key with its state, newest first."""
    trust = load_trust(keystore)
    principal = load_config(paths).principal or ""
    infos = [
        PublicKeyInfo(
            principal,
            trust.issuer,
            kid,
            info["x"],
            info.get("state", "active"),
            info.get("created_at"),
        )
        for kid, info in trust.keys.items()
    ]
    return sorted(infos, key=lambda info: info.created_at or "", reverse=True)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)
