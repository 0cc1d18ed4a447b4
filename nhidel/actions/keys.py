"""Creating the principal's signing key (`init`) and replacing it (`key rotate`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from nhidel.audit import AuditKeys, event
from nhidel.config import Config, load_config
from nhidel.errors import KeystoreError, PolicyError, UsageError
from nhidel.fsutil import exclusive_lock
from nhidel.integrity import state
from nhidel.keys.keystore import NO_KEYRING_HINT, SIGNING, TRUST, KeyStore
from nhidel.keys.material import b64, generate_private_key, public_x, thumbprint, unb64
from nhidel.keys.principal import PublicKeyInfo, key_state, load_signer, load_trust
from nhidel.ledger.store import Ledger
from nhidel.models import Grant, is_plain_text
from nhidel.paths import Paths
from nhidel.timefmt import rfc3339


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


def compromise_revokes(paths: Paths, keystore: KeyStore, *, now: int) -> list[Grant]:
    """The live grants `key rotate --now` would revoke (those the active key signed), changing
    nothing: to say how many before asking."""
    from nhidel.actions.grants import live_grants

    pinned = load_trust(keystore).keys
    active = [kid for kid, info in pinned.items() if key_state(info, now) == "active"]
    return [grant for kid in active for grant in live_grants(paths, keystore, now=now, kid=kid)]


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
                    doomed = state.live_grants(ledger, step.state, signer.audit_key, now=now,
                                               kid=signer.kid)  # fmt: skip
                else:
                    live_until = ledger.last_expiry(signer.kid, now=now)
                pinned = {k: v for k, v in trust.keys.items()
                          if k != signer.kid and key_state(v, now) != "expired"}  # fmt: skip
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
                    + [state.revocation(g, principal=signer.principal, reason=reason)
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
