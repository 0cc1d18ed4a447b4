"""The check a gateway runs on every agent action: is this token valid for these scopes?

`Verifier` loads the pinned keys once (one keystore read), keeps the ledger open, and answers
with a `Decision` carrying one reason code from SPEC.md. Nothing is allowed by default: the
caller names the scopes it needs, or says explicitly that any scope will do.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
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
    claims_shape,
    requested_scopes,
)
from .config import Paths
from .keys import public_key
from .ledger import Ledger
from .ledger_probe import CommitProbe
from .models import Grant
from .principal import load_trust
from .scopes import Scope
from .tokens import TokenDecoder, TokenRejected, token_sha256

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .keystore import KeyStore


CACHE_SIZE = 4096  # tokens whose verified claims and ledger verdict are kept
_MAX_REQUESTS = 256  # distinct scope lists remembered parsed
_MAX_OUTCOMES = 64  # per token: distinct (scopes, audience, time) questions remembered
_VALID, _EXPIRED, _NOT_YET_VALID = 0, 1, 2


class Verifier:
    """Checks tokens against the keys pinned in the keystore and the local ledger.

    A gateway sees the same token on every call, so the verifier remembers, per token (up to
    `cache_size`, least recently used first out), what never changes (the signature and claims
    checks) and what the ledger said (the grant, or why it denies). The ledger part is forgotten
    the moment anything commits to the ledger (`CommitProbe`), so a revocation or use by any
    process is seen on the very next check. Times are checked against the clock on every call,
    and the scopes and audience of each call are decided for that call. `consume=True` never
    uses the cache: every use is a state change in the ledger.
    """

    def __init__(
        self,
        paths: Paths | None = None,
        keystore: KeyStore | None = None,
        *,
        leeway: int = 0,
        clock: Callable[[], float] = time.time,
        audit: bool = True,
        cache_size: int = CACHE_SIZE,
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
        self.cache_size = cache_size
        self._decoder = TokenDecoder(self.keys)
        self._probe = CommitProbe(self.ledger)
        self._probed = self._probe()
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._requests: dict[tuple[Hashable, ...], _Request] = {}

    def close(self) -> None:
        """Write any buffered decisions, then release the ledger."""
        try:
            if self.decisions is not None:
                self.decisions.close()
        finally:
            self._probe.close()
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
        return self._check(token, self._request(scopes, any_scope), aud, consume)

    def checker(
        self,
        scopes: Sequence[str | Scope] = (),
        *,
        any_scope: bool = False,
        aud: str | None = None,
        consume: bool = False,
    ) -> Callable[[str], Decision]:
        """`check` with everything but the token fixed (and the scopes parsed once), for a
        stream of tokens such as `verify --batch`."""
        request = self._request(scopes, any_scope)
        check = self._check

        def check_one(token: str) -> Decision:  # (a partial with keywords costs 0.1 us more)
            return check(token, request, aud, consume)

        return check_one

    def _check(self, token: str, request: _Request, aud: str | None, consume: bool) -> Decision:
        now = int(self.clock())
        if consume:
            return self._consume(token, request, aud, now)
        probed = self._probe()
        if probed != self._probed:
            self._known.clear()  # the ledger changed: forget what it said
            self._probed = probed
        known = self._known.get(token) if isinstance(token, str) else None
        if known is None:
            try:
                known = self._learn(token)  # (a token that is not a str is unknowable)
            except _Unknowable as unknowable:
                return self._record_once(unknowable, request, aud)
            self._known[token] = known
            if len(self._known) > self.cache_size:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(token)
        leeway = self.leeway
        if now >= known.exp + leeway:
            state = _EXPIRED
        elif now + leeway < known.nbf:
            state = _NOT_YET_VALID
        else:
            state = _VALID
        question = (request, aud, state)
        outcome = known.outcomes.get(question)
        if outcome is None:
            outcome = self._outcome(known, request, aud, state)
            if len(known.outcomes) >= _MAX_OUTCOMES:
                known.outcomes.clear()
            known.outcomes[question] = outcome
        if self.decisions is not None:
            self.decisions.decide(outcome.key, outcome.content)
        return outcome.decision

    def _request(self, scopes: Sequence[str | Scope] | str, any_scope: bool) -> _Request:
        """The parsed scopes for a call, remembered per distinct argument."""
        key = ((scopes,) if isinstance(scopes, str) else tuple(scopes), any_scope)
        request = self._requests.get(key)
        if request is None:
            parsed = requested_scopes(scopes, any_scope)
            if len(self._requests) >= _MAX_REQUESTS:
                self._requests.clear()
            request = self._requests[key] = _Request(parsed, any_scope)
        return request

    def _learn(self, token: str) -> _Known:
        """What the token's signature, claims and ledger row say, before this call's questions;
        raise `_Unknowable` for a token denied before the ledger is asked."""
        fingerprint = token_fingerprint(self.audit_key, token) if isinstance(token, str) else None
        try:
            claims = self._decoder.decode(token)
        except TokenRejected as rejected:
            denied = Decision(False, Reason(rejected.reason), rejected.detail)
            raise _Unknowable(denied, {}, fingerprint) from None
        try:
            grant_id = claims_shape(claims)
        except Denied as shapeless:
            raise _Unknowable(shapeless.decision, {}, fingerprint) from None
        if claims["iss"] != self.issuer:
            foreign = Decision(False, Reason.WRONG_ISSUER, f"issued by {claims['iss']!r}")
            raise _Unknowable(foreign, claims, fingerprint)
        found = self.ledger.lookup(grant_id)
        denial: Decision | None
        if found is None or found[1] != token_sha256(token.strip()):
            denial = Decision(False, Reason.UNKNOWN_GRANT, "this ledger never issued that token")
            return _Known(claims, None, denial, fingerprint)
        grant = found[0]
        if grant.revoked_at is not None:
            denial = Decision(False, Reason.REVOKED, "the grant was revoked", grant)
        elif grant.max_uses is not None and grant.uses >= grant.max_uses:
            denial = Decision(False, Reason.USES_EXHAUSTED, "the grant has no uses left", grant)
        else:
            denial = None
        return _Known(claims, grant, denial, fingerprint)

    def _outcome(self, known: _Known, request: _Request, aud: str | None, state: int) -> _Outcome:
        """Decide one question about a known token, in the order of SPEC.md's checks: times,
        then the ledger, then audience and scopes."""
        if state == _EXPIRED:
            decision = Decision(False, Reason.EXPIRED, "the grant has expired")
        elif state == _NOT_YET_VALID:
            decision = Decision(False, Reason.NOT_YET_VALID, "the grant is not valid yet")
        elif known.denial is not None:
            decision = known.denial
        else:
            try:
                check_audience_and_scopes(
                    known.claims, aud, request.scopes, request.any_scope, known.grant
                )
                decision = Decision(True, None, "allowed", known.grant)
            except Denied as denied:
                decision = denied.decision
        return _Outcome(decision, request, aud, known.claims, known.fingerprint)

    def _consume(self, token: str, request: _Request, aud: str | None, now: int) -> Decision:
        """A check that counts a use: always against the ledger as it is now, never the cache."""
        try:
            known = self._learn(token)
        except _Unknowable as unknowable:
            return self._record_once(unknowable, request, aud)
        state = (
            _EXPIRED
            if now >= known.exp + self.leeway
            else _NOT_YET_VALID
            if now + self.leeway < known.nbf
            else _VALID
        )
        decision = self._outcome(known, request, aud, state).decision
        if decision.allowed:
            decision = self._use(decision, known.claims["jti"], now)
        outcome = _Outcome(decision, request, aud, known.claims, known.fingerprint)
        if self.decisions is not None:
            records = [outcome.content]
            grant = decision.grant
            if decision.allowed and grant is not None:
                used = {name: outcome.content[name] for name in _COMMON}
                records.append(event("grant.used", uses=grant.uses, max_uses=grant.max_uses,
                                     **used))  # fmt: skip
            # A use is a state change and must be on disk; a denial may be group-committed.
            self.decisions.add(records, state_change=decision.allowed)
        return decision

    def _use(self, allowed: Decision, grant_id: str, now: int) -> Decision:
        # Our own commits do not change `PRAGMA data_version`: forget what the ledger said.
        self._known.clear()
        if self.ledger.consume(grant_id, now=now - self.leeway):
            return Decision(True, None, "allowed", self.ledger.get(grant_id) or allowed.grant)
        # Another process revoked or used it up, or it expired, since the reads above.
        latest = self.ledger.get(grant_id)
        if latest is not None and latest.revoked_at is not None:
            return Decision(False, Reason.REVOKED, "the grant was revoked", latest)
        if latest is not None and now - self.leeway >= latest.expires_at:
            return Decision(False, Reason.EXPIRED, "the grant has expired", latest)
        return Decision(False, Reason.USES_EXHAUSTED, "the grant has no uses left", latest)

    def _record_once(self, unknowable: _Unknowable, request: _Request, aud: str | None) -> Decision:
        outcome = _Outcome(
            unknowable.decision, request, aud, unknowable.claims, unknowable.fingerprint
        )
        if self.decisions is not None:
            self.decisions.decide(outcome.key, outcome.content)
        return unknowable.decision


_COMMON = ("principal", "agent", "grant", "expires_at", "token_fp")


class _Request:
    """One distinct scope list a caller asks about, parsed, with its audit form."""

    __slots__ = ("any_scope", "listed", "names", "scopes")

    def __init__(self, scopes: tuple[Scope, ...], any_scope: bool) -> None:
        self.scopes = scopes
        self.any_scope = any_scope
        self.names = tuple(str(scope) for scope in scopes)
        self.listed = list(self.names)  # shared by the records that name it; never changed


class _Known:
    """A token whose signature and claims passed, and what the ledger said about it."""

    __slots__ = ("claims", "denial", "exp", "fingerprint", "grant", "nbf", "outcomes")

    def __init__(
        self,
        claims: dict[str, Any],
        grant: Grant | None,
        denial: Decision | None,
        fingerprint: str | None,
    ) -> None:
        self.claims = claims
        self.exp: int = claims["exp"]
        self.nbf: int = claims["nbf"]
        self.grant = grant
        self.denial = denial  # unknown_grant, revoked or uses_exhausted; None when it holds
        self.fingerprint = fingerprint
        self.outcomes: dict[tuple[_Request, str | None, int], _Outcome] = {}


class _Unknowable(Exception):  # noqa: N818 - control flow: denied before the ledger is asked
    def __init__(
        self, decision: Decision, claims: dict[str, Any], fingerprint: str | None
    ) -> None:
        self.decision = decision
        self.claims = claims
        self.fingerprint = fingerprint


class _Outcome:
    """A decision and its audit record's content; `key` is equal exactly when content is."""

    __slots__ = ("content", "decision", "key")

    def __init__(
        self,
        decision: Decision,
        request: _Request,
        aud: str | None,
        claims: dict[str, Any],
        fingerprint: str | None,
    ) -> None:
        grant = decision.grant
        # Denials decided before the ledger lookup still name what the signed claims say.
        act = claims.get("act") or {}
        outcome = "allowed" if decision.reason is None else decision.reason.value
        self.decision = decision
        # The fields of event(); built here because a busy gateway builds one per decision.
        self.content = {
            "event": "verify.allowed" if decision.allowed else "verify.denied",
            "principal": claims.get("sub"),
            "agent": grant.agent if grant else act.get("sub"),
            "grant": grant.id if grant else claims.get("jti"),
            "scopes": None,
            "expires_at": grant.expires_at if grant else claims.get("exp"),
            "reason": None,
            # Lets `audit find-token` find this decision; the token itself is never logged.
            "token_fp": fingerprint,
            "requested": request.listed,
            "aud": aud,
            "outcome": outcome,
        }
        self.key = (
            outcome, fingerprint, request.names, aud, self.content["principal"],
            self.content["agent"], self.content["grant"], self.content["expires_at"],
        )  # fmt: skip


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
