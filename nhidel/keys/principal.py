"""The principal's keys as the keystore holds them: what signing loads, what verify pins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nhidel.config import load_config
from nhidel.errors import KeystoreError
from nhidel.keys.keystore import SIGNING, TRUST, KeyStore
from nhidel.keys.material import unb64
from nhidel.paths import Paths

NO_KEY_HINT = "create one with: nhidel init"


@dataclass(frozen=True, slots=True)
class Signer:
    """What signing needs, loaded in one keystore read. Never printed, logged or stored."""

    principal: str
    issuer: str
    kid: str
    seed: bytes
    audit_key: bytes

    def __repr__(self) -> str:  # keep the key out of tracebacks and debug output
        return f"Signer(principal={self.principal!r}, kid={self.kid!r})"


@dataclass(frozen=True, slots=True)
class Trust:
    """The issuer and public keys verify accepts, as pinned in the keystore."""

    issuer: str
    keys: dict[str, dict[str, Any]]  # kid -> {"x": ..., "state": ..., "created_at": ...}
    audit_key: bytes

    def __repr__(self) -> str:  # the audit key is a secret
        return f"Trust(issuer={self.issuer!r}, keys={sorted(self.keys)!r})"


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    principal: str
    issuer: str
    kid: str
    x: str
    state: str
    created_at: str | None
    live_until: int | None = None


def load_signer(keystore: KeyStore) -> Signer:
    entry = keystore.read(SIGNING)
    if entry is None:
        raise KeystoreError(f"no signing key in {keystore.description}", NO_KEY_HINT)
    return Signer(
        entry["principal"],
        entry["issuer"],
        entry["kid"],
        unb64(entry["private_key"]),
        unb64(entry["audit_key"]),
    )


def load_trust(keystore: KeyStore) -> Trust:
    entry = keystore.read(TRUST)
    if entry is None:
        raise KeystoreError(f"no trusted keys in {keystore.description}", NO_KEY_HINT)
    return Trust(entry["issuer"], dict(entry["keys"]), unb64(entry["audit_key"]))


def public_keys(paths: Paths, keystore: KeyStore, *, now: int) -> list[PublicKeyInfo]:
    """Every pinned public key with its state, newest first.

    States: `active` (signs new grants), `retired` (rotated out; verifies its grants until the
    last of them expires, `live_until`), `expired` (retired, and none of its grants is live:
    it leaves the JWKS and, at the next rotation, the keystore).
    """
    trust = load_trust(keystore)
    principal = load_config(paths).principal or ""
    infos = [
        PublicKeyInfo(
            principal,
            trust.issuer,
            kid,
            info["x"],
            key_state(info, now),
            info.get("created_at"),
            info.get("live_until"),
        )
        for kid, info in trust.keys.items()
    ]
    return sorted(infos, key=lambda info: info.created_at or "", reverse=True)


def key_state(info: dict[str, Any], now: int) -> str:
    """A pinned key's state now: `active`, `retired`, or `expired` once its grants are."""
    if info.get("state") == "retired" and int(info.get("live_until", 0)) <= now:
        return "expired"
    return str(info.get("state", "active"))
