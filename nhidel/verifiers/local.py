"""The check a gateway runs on every agent action: is this token valid for these scopes?

`Verifier` loads the pinned keys once (one keystore read), keeps the ledger open, and answers
with a `Decision` carrying one reason code from SPEC.md. Nothing is allowed by default: the
caller names the scopes it needs, or says explicitly that any scope will do.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nhidel.audit import AuditKeys, event
from nhidel.audit.decision_log import DecisionLog
from nhidel.audit.records import token_fingerprint
from nhidel.audit.writer import log_head, read_mark
from nhidel.errors import IntegrityError
from nhidel.integrity import state
from nhidel.keys.material import verifying_key
from nhidel.keys.principal import load_trust
from nhidel.ledger.commit_probe import CommitProbe
from nhidel.ledger.store import Ledger
from nhidel.models import Grant
from nhidel.paths import Paths
from nhidel.scopes import Scope
from nhidel.tokens.claims import (
    Denied,
    check_audience_and_scopes,
    check_leeway,
    claims_shape,
    requested_scopes,
    time_detail,
    time_fault,
)
from nhidel.tokens.decision import Decision, Reason
from nhidel.tokens.jws import TokenDecoder, TokenRejected, token_sha256

if TYPE_CHECKING:
    from nhidel.keys.keystore import KeyStore


CACHE_SIZE = 4096  # tokens whose verified claims and ledger verdict are kept
_MAX_REQUESTS = 256  # distinct scope lists remembered parsed
_MAX_OUTCOMES = 64  # per token: distinct (scopes, audience, time fault) questions remembered


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
        from nhidel.keys.keystore import open_keystore

        self.paths = paths or Paths.from_env()
        store = keystore or open_keystore(self.paths)
        trust = load_trust(store)
        self.store = store
        self.issuer = trust.issuer
        self.keys = {kid: verifying_key(info["x"]) for kid, info in trust.keys.items()}
        self.leeway = check_leeway(leeway)
        self.clock = clock
        self.audit_key = trust.audit_key
        self.audit_keys = AuditKeys(trust.audit_key, store)
        self.decisions = (
            DecisionLog(state.audit_log(self.paths, self.audit_keys)) if audit else None
        )
        self.cache_size = cache_size
        self._decoder = TokenDecoder(self.keys)
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._requests: dict[tuple[Hashable, ...], _Request] = {}
        self._open_ledger()

    def _open_ledger(self) -> None:
        self.ledger = Ledger(self.paths)
        self._probe = CommitProbe(self.ledger)
        # The files whose replacement or removal would hide other processes' commits from
        # this connection (paths as text: a Path would be rebuilt per check).
        self._watched = (str(self.paths.ledger_file), f"{self.paths.ledger_file}-shm")
        self._inodes = _inodes(self._watched)
        self._probed: object = None  # nothing read yet: the first check reads the state
        self._state = state.SealedState()
        self._state_seq = 0  # the newest sealed state seen: it never goes back
        self._failure: Decision | None = None

    def _sync(self) -> None:
        """Before deciding: if anything committed to the ledger (or the file was replaced),
        forget what the ledger said and read the sealed state again, checked against the
        keystore's mark and the log. Any inconsistency makes every check deny (`integrity`)
        until it is repaired; nothing is allowed on state that might have been rolled back."""
        if _inodes(self._watched) != self._inodes:
            seen = self._state_seq
            self._probe.close()
            self.ledger.close()
            self._open_ledger()  # replaced or removed: read the ledger now at the path
            self._state_seq = seen
        probed = self._probe()
        if probed == self._probed:
            return
        self._known.clear()
        self._probed = probed  # taken before reading: what is read is at least this new
        try:
            self._state = self._read_state()
            self._failure = None
        except IntegrityError as exc:
            self._failure = Decision(False, Reason.INTEGRITY, exc.message)

    def _read_state(self) -> state.SealedState:
        mark = read_mark(self.store)
        head = log_head(self.paths)
        if mark is not None and head != mark.seq:
            # Behind the mark is a loss; ahead of it, a writer in flight or a crash's
            # residue: the log session waits for the writer, checks, and finishes residue.
            with state.change(self.paths, self.audit_keys, self.ledger, now=int(self.clock())):
                pass
            self._probed = self._probe()
            mark = read_mark(self.store)
            head = log_head(self.paths)
        if mark is None:
            current = state.open_state(self.ledger.sealed_state(), self.audit_key)
            if current.legacy:
                current.kids = sorted(self.keys)  # a new home: nothing issued yet
        else:
            current = state.read_checked(
                self.paths, self.audit_keys, self.ledger, mark=mark, head=head
            )
        if not current.legacy and set(current.kids) != set(self.keys):
            if not self._pins_agree(current):
                return self._read_state()  # a key change was in flight: read what it made
        if current.seq < self._state_seq:
            raise IntegrityError(
                "the ledger's sealed state went back to an older one: rolled back or replaced",
                state.REPAIR_HINT,
            )
        self._state_seq = current.seq
        return current

    def _pins_agree(self, current: state.SealedState) -> bool:
        """The sealed state trusts other keys than this verifier loaded. After a rotation,
        load the keystore's pins again (True); while one is being committed, wait for it
        (False: read again); a keystore put back from an older copy is IntegrityError."""
        if state.pinned_kids(self.store) != set(current.kids):
            with state.change(self.paths, self.audit_keys, self.ledger, now=int(self.clock())):
                pass  # waits for the writer in flight; raises if they still differ
            return False
        trust = load_trust(self.store)
        self.keys = {kid: verifying_key(info["x"]) for kid, info in trust.keys.items()}
        self._decoder = TokenDecoder(self.keys)
        return True

    def current_state(self) -> state.SealedState:
        """The sealed state as of now (read again after any commit), for callers that trust
        more than grants with it (an enforcement point's registrations); IntegrityError when
        it cannot be trusted."""
        self._sync()
        if self._failure is not None:
            raise IntegrityError(self._failure.detail, state.REPAIR_HINT)
        return self._state

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
        self._sync()
        if self._failure is not None:
            return self._failure
        if consume:
            return self._consume(token, request, aud, now)
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
        fault = time_fault(known.exp, known.nbf, now, self.leeway)
        question = (request, aud, fault)
        outcome = known.outcomes.get(question)
        if outcome is None:
            outcome = self._outcome(known, request, aud, fault)
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
            denied = Decision(False, rejected.reason, rejected.detail)
            raise _Unknowable(denied, {}, fingerprint) from None
        try:
            grant_id = claims_shape(claims)
        except Denied as shapeless:
            raise _Unknowable(shapeless.decision, {}, fingerprint) from None
        if claims["iss"] != self.issuer:
            foreign = Decision(False, Reason.WRONG_ISSUER, f"issued by {claims['iss']!r}")
            raise _Unknowable(foreign, claims, fingerprint)
        max_uses = claims.get("max_uses")
        if max_uses is not None and (type(max_uses) is not int or max_uses < 1):
            uncounted = Decision(False, Reason.MALFORMED, "claim 'max_uses' is not a count")
            raise _Unknowable(uncounted, claims, fingerprint)
        grant, denial = self._ledger_verdict(grant_id, token, max_uses)
        return _Known(claims, grant, denial, fingerprint)

    def _ledger_verdict(
        self, grant_id: str, token: str, max_uses: int | None
    ) -> tuple[Grant | None, Decision | None]:
        """The grant behind a well-signed token and why it is denied (None when it holds).

        What decides is signed (the token: expiry, scopes, max_uses) or sealed (the row's
        seal, the sealed state: revocations, uses, keys): never a column an agent could edit.
        """
        try:
            found = self.ledger.lookup(grant_id)
        except IntegrityError as damaged:
            return None, Decision(False, Reason.INTEGRITY, damaged.message)
        token_hash = token_sha256(token.strip())
        if found is None or found[1] != token_hash:
            return None, Decision(
                False, Reason.UNKNOWN_GRANT, "this ledger never issued that token"
            )
        grant, _, seal = found
        sealed = self._state
        if not state.row_is_sealed(self.audit_key, grant, token_hash, seal):
            return None, Decision(
                False, Reason.INTEGRITY, f"the ledger row of {grant_id} was edited"
            )
        uses = sealed.uses(grant_id)
        if uses > grant.uses:
            grant = replace(grant, uses=uses)
        if grant_id in sealed.revoked or grant.revoked_at is not None:
            return grant, Decision(False, Reason.REVOKED, "the grant was revoked", grant)
        if max_uses is not None and uses >= max_uses:
            return grant, Decision(
                False, Reason.USES_EXHAUSTED, "the grant has no uses left", grant
            )
        if grant.kid not in sealed.kids:
            # Pinned in the keystore but dropped by the sealed state: an older keystore.
            untrusted = f"key {grant.kid} is not one the sealed state trusts"
            return None, Decision(False, Reason.INTEGRITY, untrusted)
        return grant, None

    def _outcome(
        self, known: _Known, request: _Request, aud: str | None, fault: Reason | None
    ) -> _Outcome:
        """Decide one question about a known token, in the order of SPEC.md's checks: times
        (`fault`, from `time_fault`), then the ledger, then audience and scopes."""
        if fault is not None:
            # With the grant when the ledger knows it (None for an unknown or damaged one).
            decision = Decision(False, fault, time_detail(fault, known.nbf), known.grant)
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
        fault = time_fault(known.exp, known.nbf, now, self.leeway)
        decision = self._outcome(known, request, aud, fault).decision
        outcome = _Outcome(decision, request, aud, known.claims, known.fingerprint)
        if not decision.allowed:
            if self.decisions is not None:
                self.decisions.add([outcome.content], state_change=False)
            return decision
        if self.decisions is not None:
            self.decisions.flush()  # the decisions before this one stay first in the log
        return self._use(known, request, aud, now)

    def _use(self, known: _Known, request: _Request, aud: str | None, now: int) -> Decision:
        """Spend one use: checked and counted under the log's and the ledger's locks, against
        the sealed state as it is now (another process may have revoked or spent it)."""
        grant = known.grant
        if grant is None:  # (an allowed decision always carries its grant)
            raise TypeError("no grant to use")
        max_uses = known.claims.get("max_uses")
        self._known.clear()
        with state.change(self.paths, self.audit_keys, self.ledger, now=now) as step:
            sealed = step.state
            uses = sealed.uses(grant.id)
            fault = time_fault(grant.expires_at, grant.not_before, now, self.leeway)
            if grant.id in sealed.revoked:
                decision = Decision(False, Reason.REVOKED, "the grant was revoked", grant)
            elif fault is not None:
                decision = Decision(False, fault, time_detail(fault, grant.not_before), grant)
            elif max_uses is not None and uses >= max_uses:
                decision = Decision(False, Reason.USES_EXHAUSTED, "the grant has no uses left",
                                    replace(grant, uses=uses))  # fmt: skip
            else:
                used = replace(grant, uses=uses + 1)
                decision = Decision(True, None, "allowed", used)
            outcome = _Outcome(decision, request, aud, known.claims, known.fingerprint)
            records = [outcome.content]
            if decision.allowed:
                common = {name: outcome.content[name] for name in _COMMON}
                records.append(event("grant.used", uses=uses + 1, max_uses=max_uses, **common))
            step.write(records)
            if decision.allowed:
                step.use(grant)
            step.commit(now=now)
            # Every ledger writer holds the log's lock, so nothing else committed since.
            self._state, self._state_seq = step.state, step.state.seq
            self._probed = self._probe()
        return decision

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
        self.outcomes: dict[tuple[_Request, str | None, Reason | None], _Outcome] = {}


class _Unknowable(Exception):  # noqa: N818 - control flow: denied before the ledger is asked
    def __init__(self, decision: Decision, claims: dict[str, Any], fingerprint: str | None) -> None:
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
        self.content = event(
            "verify.allowed" if decision.allowed else "verify.denied",
            principal=claims.get("sub"),
            agent=grant.agent if grant else act.get("sub"),
            grant=grant.id if grant else claims.get("jti"),
            expires_at=grant.expires_at if grant else claims.get("exp"),
            # Lets `audit find-token` find this decision; the token itself is never logged.
            token_fp=fingerprint,
            requested=request.listed,
            aud=aud,
            outcome=outcome,
        )
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


def _inodes(paths: tuple[str, str]) -> tuple[int | None, int | None, bool]:
    """The files' inode numbers, and whether the first is empty: a file replaced, removed or
    emptied under an open verifier has another inode, none, or no pages left."""
    found: list[int | None] = []
    empty = False
    for path in paths:
        try:
            status = os.stat(path)
        except FileNotFoundError:
            found.append(None)
            continue
        found.append(status.st_ino)
        empty = empty or (path == paths[0] and status.st_size == 0)
    return found[0], found[1], empty
