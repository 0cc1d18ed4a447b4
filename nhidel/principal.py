"""The principal's signing key: created once by `init`, read only to sign, pinned for verify."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from . import state
from .audit import AuditKeys, event
from .config import Config, Paths, load_config
from .errors import KeystoreError, PolicyError, UsageError
from .fsutil import exclusive_lock
from .keys import b64, generate_private_key, public_x, thumbprint, unb64
from .keystore import NO_KEYRING_HINT, SIGNING, TRUST, KeyStore
from .ledger import Ledger
from .models import Grant, is_plain_text
from .timefmt import rfc3339

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


def init_principal(
    paths: Paths, keystore: KeyStore, *, principal: str, issuer: str | None, now: int
) -> PublicKeyInfo:
    """Create the signing key and pin its public half; refuse if a key already exists."""
    if not 0 < len(principal) <= 128 or not is_plain_text(principal):
        raise UsageError(
            f"invalid principal {principal!r}",
            "use 1-128 printable characters without spaces, e.g. alice@example.com",
        )
    issuer = issuer or f"nhidel:{principal}"
    if not 0 < len(issuer) <= 128 or not is_plain_text(issuer):
        raise UsageError(f"invalid issuer {issuer!r}", "use printable characters without spaces")
    load_config(paths)  # a corrupt config stops init before any key is made
    # One init at a time: the check and both writes must not interleave with another init's.
    with exclusive_lock(paths.init_lock):
        existing = keystore.read(SIGNING)
        if existing is not None and load_config(paths).principal is not None:
            raise PolicyError(
                f"a signing key already exists in {keystore.description}",
                "nhidel never overwrites a key; see it with: nhidel key show",
            )
        if existing is not None:
            # An init that was interrupted after the keystore was written: finish it.
            principal, issuer, kid = existing["principal"], existing["issuer"], existing["kid"]
            trust = load_trust(keystore)
            x, created = trust.keys[kid]["x"], trust.keys[kid].get("created_at") or rfc3339(now)
            audit_key = b64(trust.audit_key)
        else:
            kid, x, created, audit_key = _create_key(keystore, principal, issuer, now)

        def record(config: Config) -> Config:
            keys = {**config.keys, kid: {"x": x, "created_at": created or ""}}
            return replace(config, principal=principal, issuer=issuer, keys=keys)

        keys = AuditKeys(unb64(audit_key), keystore)
        with exclusive_lock(paths.config_lock), Ledger(paths) as ledger:
            with state.change(paths, keys, ledger, now=now) as step:
                config = record(step.config())
                step.write([event("key.created", principal=principal, kid=kid,
                                  config_sha256=state.config_digest(config))])  # fmt: skip
                step.save_config(config)
                step.state.kids = [kid]
    return PublicKeyInfo(principal, issuer, kid, x, "active", created)


def _create_key(
    keystore: KeyStore, principal: str, issuer: str, now: int
) -> tuple[str, str, str, str]:
    """A new signing key, pinned and stored: (kid, public x, created, audit key)."""
    seed = generate_private_key()
    # Seals the audit log. Kept with the public pins (verify seals its decisions) and
    # with the private key (so grant reads one keystore entry).
    audit_key = b64(os.urandom(32))
    x = public_x(seed)
    kid = thumbprint(x)
    created = rfc3339(now) or ""
    # Pin the public key before the private one exists, so no signed token is ever untrusted.
    keystore.write(
        TRUST,
        {
            "issuer": issuer,
            "keys": {kid: {"x": x, "state": "active", "created_at": created}},
            "audit_key": audit_key,
        },
    )
    keystore.write(
        SIGNING,
        {
            "principal": principal,
            "issuer": issuer,
            "kid": kid,
            "private_key": b64(seed),
            "audit_key": audit_key,
        },
    )
    stored = keystore.read(SIGNING)
    if stored is None or stored.get("kid") != kid:
        raise KeystoreError(f"{keystore.description} did not keep the new key", NO_KEYRING_HINT)
    return kid, x, created, audit_key


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


def audit_keys(keystore: KeyStore) -> AuditKeys:
    """The audit key (from the pinned trust entry) and where the high-water mark goes."""
    return AuditKeys(load_trust(keystore).audit_key, keystore)


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
            _state(info, now),
            info.get("created_at"),
            info.get("live_until"),
        )
        for kid, info in trust.keys.items()
    ]
    return sorted(infos, key=lambda info: info.created_at or "", reverse=True)


def _state(info: dict[str, Any], now: int) -> str:
    if info.get("state") == "retired" and int(info.get("live_until", 0)) <= now:
        return "expired"
    return str(info.get("state", "active"))


@dataclass(frozen=True, slots=True)
class Rotation:
    old_kid: str
    new_kid: str
    old_live_until: int | None  # None: the old key verifies nothing any more
    revoked: list[str]  # with --now: the old key's grants, revoked


def rotate_key(paths: Paths, keystore: KeyStore, *, now: int, compromised: bool) -> Rotation:
    """Make a new active signing key; the old private key leaves the keystore.

    Normally the old public key stays pinned (and in the JWKS) until its last live grant
    expires. After a compromise (`compromised`) it is dropped at once and its grants revoked,
    so nothing it signed verifies any more. A grant being minted meanwhile is refused.
    """
    with exclusive_lock(paths.init_lock):
        signer = load_signer(keystore)
        trust = load_trust(keystore)
        seed = generate_private_key()
        x = public_x(seed)
        kid = thumbprint(x)
        keys = AuditKeys(signer.audit_key, keystore)
        with exclusive_lock(paths.config_lock), Ledger(paths) as ledger:
            with state.change(paths, keys, ledger, now=now) as step:
                ledger.bump_revocation_epoch()
                doomed: list[Grant] = []
                live_until = None
                if compromised:
                    live = [g for g in ledger.live_ids(now=now, kid=signer.kid)
                            if g not in step.state.revoked]  # fmt: skip
                    doomed = [g for g in map(ledger.get, live) if g is not None]
                else:
                    live_until = ledger.last_expiry(signer.kid, now=now)
                pinned = {k: v for k, v in trust.keys.items()
                          if k != signer.kid and _state(v, now) != "expired"}  # fmt: skip
                if live_until is not None and signer.kid in trust.keys:
                    pinned[signer.kid] = {**trust.keys[signer.kid], "state": "retired",
                                          "live_until": live_until}  # fmt: skip
                pinned[kid] = {"x": x, "state": "active", "created_at": rfc3339(now)}
                before = step.config()
                kept = {k: v for k, v in before.keys.items() if k in pinned}
                kept[kid] = {"x": x, "created_at": rfc3339(now) or ""}
                config = replace(before, keys=kept)
                reason = "signing key compromised"
                # The rotation names the public pins it makes, so that a crash after the
                # signing entry is written can be finished from the log.
                step.write(
                    [event("key.rotated", principal=signer.principal, old_kid=signer.kid,
                           kid=kid, compromised=compromised, live_until=live_until,
                           trusted=pinned, config_sha256=state.config_digest(config))]
                    + [event("grant.revoked", principal=signer.principal, agent=g.agent,
                             grant=g.id, expires_at=g.expires_at, reason=reason)
                       for g in doomed]
                )  # fmt: skip
                # The private key, then its pin. Nothing signs in between (every grant waits
                # for the log's lock, held here), and a crash in between leaves a record that
                # the next command finishes by pinning the key the signing entry holds.
                keystore.write(SIGNING, {"principal": signer.principal, "issuer": signer.issuer,
                                         "kid": kid, "private_key": b64(seed),
                                         "audit_key": b64(signer.audit_key)})  # fmt: skip
                keystore.write(TRUST, {"issuer": trust.issuer, "keys": pinned,
                                       "audit_key": b64(trust.audit_key)})  # fmt: skip
                step.revoke(doomed, now=now, reason=reason)
                step.state.kids = sorted(pinned)
                step.save_config(config)
    revoked = [g.id for g in doomed]
    return Rotation(signer.kid, kid, live_until, revoked)
