"""The check a gateway runs on every agent action: is this token valid for these scopes?

`Verifier` loads the pinned keys once (one keystore read), keeps the ledger open, and answers
with a `Decision` carrying one reason code from SPEC.md. Nothing is allowed by default: the
caller names the scopes it needs, or says explicitly that any scope will do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .audit import AuditKeys, AuditLog, event
from .audit.group_commit import DecisionLog
from .audit.records import token_fingerprint
from .config import Paths
from .errors import UsageError
from .keys import public_key
from .ledger import Ledger
from .models import GRANT_ID, Grant
from .principal import load_trust
from .scopes import Scope, covered_by_any, parse_scopes
from .tokens import TokenRejected, decode_verified, token_sha256

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .keystore import KeyStore


MAX_LEEWAY = 3600


class Reason(StrEnum):
    """Why a token was denied; the same codes on the command line, in JSON and here."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    WRONG_TYPE = "wrong_type"
    WRONG_ISSUER = "wrong_issuer"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    WRONG_AUDIENCE = "wrong_audience"
    SCOPE_NOT_GRANTED = "scope_not_granted"
    USES_EXHAUSTED = "uses_exhausted"
    UNKNOWN_GRANT = "unknown_grant"
    STATUS_UNAVAILABLE = "status_unavailable"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: Reason | None
    detail: str
    grant: Grant | None = None

    def to_json(self, now: int) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reason": None if self.reason is None else self.reason.value,
            "grant": None if self.grant is None else self.grant.to_json(now),
        }


class _Denied(Exception):  # noqa: N818 - control flow inside `check`
    def __init__(self, reason: Reason, detail: str, grant: Grant | None = None) -> None:
        self.decision = Decision(False, reason, detail, grant)


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
        if leeway < 0:
            raise UsageError("--leeway cannot be negative", "give a duration such as 30s")
        if leeway > MAX_LEEWAY:
            raise UsageError("--leeway is over an hour", "clocks that far apart need fixing")
        self.leeway = leeway
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
        if isinstance(scopes, str):
            scopes = [scopes]
        requested = tuple(s for s in scopes if isinstance(s, Scope)) + parse_scopes(
            s for s in scopes if isinstance(s, str)
        )
        if not requested and not any_scope:
            raise UsageError(
                "verify needs the scopes to check",
                "pass --scope SCOPE (or --any-scope to accept any granted scope)",
            )
        now = int(self.clock())
        verified: dict[str, Any] = {}  # the claims, once the signature has been checked
        try:
            decision = self._decide(token, requested, any_scope, aud, consume, now, verified)
        except _Denied as denied:
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
            raise _Denied(Reason(rejected.reason), rejected.detail) from None
        grant_id = _claims_shape(claims)
        verified.update(claims)
        if claims["iss"] != self.issuer:
            raise _Denied(Reason.WRONG_ISSUER, f"issued by {claims['iss']!r}")
        if now >= claims["exp"] + self.leeway:
            raise _Denied(Reason.EXPIRED, "the grant has expired")
        if now + self.leeway < claims["nbf"]:
            raise _Denied(Reason.NOT_YET_VALID, "the grant is not valid yet")
        found = self.ledger.lookup(grant_id)
        if found is None or found[1] != token_sha256(token.strip()):
            raise _Denied(Reason.UNKNOWN_GRANT, "this ledger never issued that token")
        grant = found[0]
        if grant.revoked_at is not None:
            raise _Denied(Reason.REVOKED, "the grant was revoked", grant)
        if grant.max_uses is not None and grant.uses >= grant.max_uses:
            raise _Denied(Reason.USES_EXHAUSTED, "the grant has no uses left", grant)
        if claims.get("aud") is not None and claims["aud"] != aud:
            raise _Denied(Reason.WRONG_AUDIENCE, "the grant is for another audience", grant)
        if not any_scope:
            try:
                granted = parse_scopes([claims["scope"]])
            except UsageError:
                raise _Denied(Reason.MALFORMED, "claim 'scope' is malformed", grant) from None
            for scope in requested:
                if not covered_by_any(granted, scope):
                    raise _Denied(Reason.SCOPE_NOT_GRANTED, f"{scope} is not granted", grant)
        if consume:
            if not self.ledger.consume(grant_id, now=now - self.leeway):
                # Another process revoked or used it up, or it expired, since the reads above.
                latest = self.ledger.get(grant_id)
                if latest is not None and latest.revoked_at is not None:
                    raise _Denied(Reason.REVOKED, "the grant was revoked", latest)
                if latest is not None and now - self.leeway >= latest.expires_at:
                    raise _Denied(Reason.EXPIRED, "the grant has expired", latest)
                raise _Denied(Reason.USES_EXHAUSTED, "the grant has no uses left", latest)
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


def _claims_shape(claims: dict[str, Any]) -> str:
    """Check the claims nhidel relies on are present and typed; return the grant id."""
    for name in ("iat", "nbf", "exp"):
        if type(claims.get(name)) is not int:
            raise _Denied(Reason.MALFORMED, f"claim {name!r} is not an integer")
    for name in ("iss", "sub", "scope", "jti"):
        if not isinstance(claims.get(name), str):
            raise _Denied(Reason.MALFORMED, f"claim {name!r} is missing")
    act = claims.get("act")
    if not isinstance(act, dict) or not isinstance(act.get("sub"), str):
        raise _Denied(Reason.MALFORMED, "claim 'act' is missing")
    if not GRANT_ID.fullmatch(claims["jti"]):
        raise _Denied(Reason.MALFORMED, "claim 'jti' is not a grant id")
    return str(claims["jti"])


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
