"""The check a gateway runs on every agent action: is this token valid for these scopes?

`Verifier` loads the pinned keys once (one keystore read), keeps the ledger open, and answers
with a `Decision` carrying one reason code from SPEC.md. Nothing is allowed by default: the
caller names the scopes it needs, or says explicitly that any scope will do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .audit import AuditKeys, AuditLog, event
from .audit.group_commit import DecisionLog
from .audit.records import token_fingerprint
from .claims import (
    Decision,
    Denied,
    Reason,
    check_audience_and_scopes,
    check_leeway,
    check_times,
    claims_shape,
    requested_scopes,
)
from .config import Paths
from .keys import public_key
from .ledger import Ledger
from .principal import load_trust
from .scopes import Scope
from .tokens import TokenRejected, decode_verified, token_sha256

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .keystore import KeyStore


class Verifier:
    """Checks tokens against the keys pinned in the keystore and the local ledger."""

    def __init__(
        self,
        paths: Paths | None = None,
        keystore: KeyStore | None = None,
        *,
        leeway: int = 0,
        clock: Callable[[], float] = time.time,
        audit: bool = True,
    ) -> None:
        from .keystore import open_keystore

        self.paths = paths or Paths.from_env()
        store = keystore or open_keystore(self.paths)
        trust = load_trust(store)
        self.issuer = trust.issuer
        self.keys: dict[str, Ed25519PublicKey] = {
            kid: public_key(info["x"]) for kid, info in trust.keys.items()
        }
        self.leeway = check_leeway(leeway)
        self.clock = clock
        self.ledger = Ledger(self.paths)
        self.audit_key = trust.audit_key
        keys = AuditKeys(trust.audit_key, store)
        self.decisions = DecisionLog(AuditLog(self.paths, keys)) if audit else None

    def close(self) -> None:
        """Write any buffered decisions, then release the ledger."""
        try:
            if self.decisions is not None:
                self.decisions.close()
        finally:
            self.ledger.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(
        self,
        token: str,
        scopes: Sequence[str | Scope] = (),
        *,
        any_scope: bool = False,
        aud: str | None = None,
        consume: bool = False,
    ) -> Decision:
        """Decide on `token`; `consume` counts one use when (and only when) it is allowed."""
        requested = requested_scopes(scopes, any_scope)
        now = int(self.clock())
        verified: dict[str, Any] = {}  # the claims, once the signature has been checked
        try:
            decision = self._decide(token, requested, any_scope, aud, consume, now, verified)
        except Denied as denied:
            decision = denied.decision
        self._record(decision, token, requested, aud, consume, verified)
        return decision

    def _decide(
        self,
        token: str,
        requested: Sequence[Scope],
        any_scope: bool,
        aud: str | None,
        consume: bool,
        now: int,
        verified: dict[str, Any],
    ) -> Decision:
        try:
            claims = decode_verified(token, self.keys)
        except TokenRejected as rejected:
            raise Denied(Reason(rejected.reason), rejected.detail) from None
        grant_id = claims_shape(claims)
        verified.update(claims)
        if claims["iss"] != self.issuer:
            raise Denied(Reason.WRONG_ISSUER, f"issued by {claims['iss']!r}")
        check_times(claims, now, self.leeway)
        found = self.ledger.lookup(grant_id)
        if found is None or found[1] != token_sha256(token.strip()):
            raise Denied(Reason.UNKNOWN_GRANT, "this ledger never issued that token")
        grant = found[0]
        if grant.revoked_at is not None:
            raise Denied(Reason.REVOKED, "the grant was revoked", grant)
        if grant.max_uses is not None and grant.uses >= grant.max_uses:
            raise Denied(Reason.USES_EXHAUSTED, "the grant has no uses left", grant)
        check_audience_and_scopes(claims, aud, requested, any_scope, grant)
        if consume:
            if not self.ledger.consume(grant_id, now=now - self.leeway):
                # Another process revoked or used it up, or it expired, since the reads above.
                latest = self.ledger.get(grant_id)
                if latest is not None and latest.revoked_at is not None:
                    raise Denied(Reason.REVOKED, "the grant was revoked", latest)
                if latest is not None and now - self.leeway >= latest.expires_at:
                    raise Denied(Reason.EXPIRED, "the grant has expired", latest)
                raise Denied(Reason.USES_EXHAUSTED, "the grant has no uses left", latest)
            grant = self.ledger.get(grant_id) or grant
        return Decision(True, None, "allowed", grant)

    def _record(
        self,
        decision: Decision,
        token: str,
        requested: Sequence[Scope],
        aud: str | None,
        consume: bool,
        verified: dict[str, Any],
    ) -> None:
        if self.decisions is None:
            return
        grant = decision.grant
        # Denials decided before the ledger lookup still name what the signed claims say.
        act = verified.get("act") or {}
        common = {
            "principal": verified.get("sub"),
            "agent": grant.agent if grant else act.get("sub"),
            "grant": grant.id if grant else verified.get("jti"),
            "expires_at": grant.expires_at if grant else verified.get("exp"),
            # Lets `audit find-token` find this decision; the token itself is never logged.
            "token_fp": token_fingerprint(self.audit_key, token)
            if isinstance(token, str)
            else None,
        }
        records = [
            event(
                "verify.allowed" if decision.allowed else "verify.denied",
                requested=[str(s) for s in requested],
                aud=aud,
                outcome="allowed" if decision.allowed else decision.reason,
                **common,
            )
        ]
        if consume and decision.allowed and grant is not None:
            records.append(event("grant.used", uses=grant.uses, max_uses=grant.max_uses, **common))
        # A use is a state change and must be on disk; a plain decision may be group-committed.
        self.decisions.add(records, state_change=consume and decision.allowed)


def verify(
    token: str,
    scopes: Sequence[str] = (),
    *,
    any_scope: bool = False,
    aud: str | None = None,
    consume: bool = False,
    leeway: int = 0,
    paths: Paths | None = None,
) -> Decision:
    """One-shot check with the environment's nhidel home and keystore (see `Verifier`)."""
    with Verifier(paths, leeway=leeway) as verifier:
        return verifier.check(token, scopes, any_scope=any_scope, aud=aud, consume=consume)
