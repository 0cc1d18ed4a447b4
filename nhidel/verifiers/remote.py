"""Verifying on another machine: no ledger, no keystore, only what the principal published.

A `RemoteVerifier` trusts the Ed25519 keys of a JWKS (a file or a URL) and, optionally, learns
revocations from a signed status list (draft-ietf-oauth-status-list). Both documents are
fetched once and kept for their time to live. Anything it cannot fetch, parse or trust is a
denial with a reason, never a silent pass: a JWKS holding any key but Ed25519 is refused whole;
a status list that is stale, expired, for another URI or wrongly signed is `status_unavailable`,
and so is a token without a `status` claim when a list was given. A remote verifier cannot
count uses, so it denies every grant with a use limit.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhidel.keys.material import thumbprint, verifying_key
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
from nhidel.tokens.jws import TokenRejected, decode_verified

STATUS_LIST_TYPE = "statuslist+jwt"
MAX_DOCUMENT = 1024 * 1024
FETCH_TIMEOUT = 5.0
JWKS_TTL = 300  # seconds a fetched JWKS is kept
MIN_REFRESH_INTERVAL = 10  # seconds between fetches forced by an unknown kid
LIST_CLOCK_SKEW = 60  # seconds a status list's iat may be ahead of this clock


class Unavailable(Exception):  # noqa: N818 - a document that cannot be had or trusted
    pass


def fetch(source: str) -> bytes:
    """A document from an https URL (http only on this machine) or a file, at most 1 MiB.

    The JWKS is the root of trust and is not itself signed, so it must come over TLS, and a
    redirect may not downgrade it.
    """
    from http.client import HTTPException

    try:
        if "://" in source:
            data = _fetch_url(source)
        else:
            with Path(source).open("rb") as handle:
                data = handle.read(MAX_DOCUMENT + 1)
    except (OSError, ValueError, HTTPException) as exc:
        raise Unavailable(f"could not fetch {source}: {exc}") from None
    if len(data) > MAX_DOCUMENT:
        raise Unavailable(f"{source} is larger than {MAX_DOCUMENT} bytes")
    return data


def _fetch_url(url: str) -> bytes:
    import urllib.request

    _check_url(url)

    class SecureRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
            _check_url(newurl)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.build_opener(SecureRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": "nhidel"})  # noqa: S310
    with opener.open(request, timeout=FETCH_TIMEOUT) as response:
        data: bytes = response.read(MAX_DOCUMENT + 1)
    return data


def _check_url(url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    local = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise Unavailable(f"{url} is not an https URL (plain http only for this machine)")


def parse_jwks(data: bytes) -> dict[str, bytes]:
    """kid -> key for an Ed25519-only JWKS whose kids are the keys' RFC 7638 thumbprints."""
    try:
        keys = json.loads(data)["keys"]
        if not isinstance(keys, list) or not keys:
            raise ValueError("no keys")
    except (ValueError, KeyError, TypeError, RecursionError):
        raise Unavailable("the JWKS is not a JSON key set") from None
    trusted = {}
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
            kind = key.get("kty") if isinstance(key, dict) else type(key).__name__
            raise Unavailable(f"the JWKS holds a {kind} key; only Ed25519 (OKP) keys are trusted")
        if "d" in key:
            raise Unavailable("the JWKS holds a private key; refusing it")
        if (
            key.get("alg", "EdDSA") != "EdDSA"
            or key.get("use", "sig") != "sig"
            or (key.get("key_ops", ["verify"]) != ["verify"])
        ):
            raise Unavailable("the JWKS holds a key not meant for EdDSA signatures")
        x = key.get("x")
        try:
            if not isinstance(x, str):
                raise ValueError
            verifier_key = verifying_key(x)
        except ValueError:
            raise Unavailable("the JWKS holds a malformed Ed25519 key") from None
        if key.get("kid") != thumbprint(x):
            raise Unavailable("a JWKS kid is not its key's RFC 7638 thumbprint")
        trusted[thumbprint(x)] = verifier_key
    return trusted


@dataclass(slots=True)
class _Cached:
    value: Any
    until: float


MEMORY_SIZE = 4096  # tokens whose verified claims are remembered
_MAX_REQUESTS = 256  # distinct scope lists remembered parsed
_MAX_OUTCOMES = 64  # per token: distinct (scopes, audience) questions remembered


class RemoteVerifier:
    """Checks tokens against a published JWKS and (optionally) a published status list.

    A gateway sees the same token on every call, so the verifier remembers, per token (up to
    `memory_size`, least recently used first out), what cannot change while the documents it
    was checked against stay the same: that the signature, claims and issuer hold, what the
    status list says of it, and the answer to each (scopes, audience) question. Times, the use
    limit and the status list's own expiry are checked on every call; a status is asked again
    of every status list fetched, and everything is forgotten whenever the JWKS is.
    """

    def __init__(
        self,
        jwks: str,
        status_list: str | None = None,
        *,
        issuer: str | None = None,
        leeway: int = 0,
        clock: Callable[[], float] = time.time,
        fetcher: Callable[[str], bytes] = fetch,
        memory_size: int = MEMORY_SIZE,
    ) -> None:
        self.jwks_source = jwks
        self.status_source = status_list
        self.issuer = issuer
        self.leeway = check_leeway(leeway)
        self.clock = clock
        self.fetcher = fetcher
        self.memory_size = memory_size
        self._jwks: _Cached | None = None
        self._jwks_fetched_at: float | None = None
        self._status: _Cached | None = None
        self._memory: OrderedDict[str, _Verified] = OrderedDict()
        self._requests: dict[tuple[Hashable, ...], tuple[Scope, ...]] = {}

    def check(
        self,
        token: str,
        scopes: Sequence[str | Scope] | str = (),
        *,
        any_scope: bool = False,
        aud: str | None = None,
    ) -> Decision:
        requested = self._request(scopes, any_scope)
        now = int(self.clock())
        try:
            return self._decide(token, requested, any_scope, aud, now)
        except Denied as denied:
            return denied.decision

    def _request(self, scopes: Sequence[str | Scope] | str, any_scope: bool) -> tuple[Scope, ...]:
        """The parsed scopes for a call, remembered per distinct argument."""
        key = ((scopes,) if isinstance(scopes, str) else tuple(scopes), any_scope)
        requested = self._requests.get(key)
        if requested is None:
            requested = requested_scopes(scopes, any_scope)
            if len(self._requests) >= _MAX_REQUESTS:
                self._requests.clear()
            self._requests[key] = requested
        return requested

    def _decide(
        self, token: str, requested: tuple[Scope, ...], any_scope: bool, aud: str | None, now: int
    ) -> Decision:
        keys = self._keys_or_denied(now)  # (a JWKS fetched again clears the memory)
        known = self._memory.get(token) if isinstance(token, str) else None
        if known is None:
            known = self._learn(token, keys, now)
            self._memory[token] = known
            if len(self._memory) > self.memory_size:
                self._memory.popitem(last=False)
        else:
            self._memory.move_to_end(token)
        fault = time_fault(known.exp, known.nbf, now, self.leeway)
        if fault is not None:
            raise Denied(fault, time_detail(fault, known.nbf))
        if known.use_limited:
            raise Denied(
                Reason.STATUS_UNAVAILABLE,
                "a grant with a use limit can only be verified against its ledger",
            )
        if self.status_source is not None:
            status = self._listed_status(known, keys, now)
            if status is not _ALLOWED:
                return status
        question = (requested, any_scope, aud)
        decision = known.outcomes.get(question)
        if decision is None:
            try:
                check_audience_and_scopes(known.claims, aud, requested, any_scope)
                decision = _ALLOWED
            except Denied as denied:
                decision = denied.decision
            if len(known.outcomes) >= _MAX_OUTCOMES:
                known.outcomes.clear()
            known.outcomes[question] = decision
        return decision

    def _keys_or_denied(self, now: int) -> dict[str, bytes]:
        try:
            return self._keys(now)
        except Unavailable as exc:
            raise Denied(Reason.UNKNOWN_KEY, str(exc)) from None

    def _learn(self, token: str, keys: dict[str, bytes], now: int) -> _Verified:
        """What holds of `token` whatever the time and the question: its signature under the
        JWKS, its claims' shape and its issuer; Denied otherwise (and nothing remembered)."""
        try:
            try:
                claims = decode_verified(token, keys)
            except TokenRejected as rejected:
                if rejected.reason is not Reason.UNKNOWN_KEY or not self._may_refresh(now):
                    raise
                # Signed by a key newer than our copy of the JWKS (a rotation): fetch it again.
                claims = decode_verified(token, self._keys(now, refresh=True))
        except Unavailable as exc:
            raise Denied(Reason.UNKNOWN_KEY, str(exc)) from None
        except TokenRejected as rejected:
            raise Denied(rejected.reason, rejected.detail) from None
        claims_shape(claims)
        if self.issuer is not None and claims["iss"] != self.issuer:
            raise Denied(Reason.WRONG_ISSUER, f"issued by {claims['iss']!r}")
        return _Verified(claims)

    def _may_refresh(self, now: float) -> bool:
        """At most one early JWKS fetch every few seconds, so tokens naming made-up kids
        cannot turn this verifier into a flood of requests to the key host."""
        fetched = self._jwks_fetched_at
        return fetched is None or now - fetched >= MIN_REFRESH_INTERVAL

    def _keys(self, now: float, *, refresh: bool = False) -> dict[str, bytes]:
        if refresh or self._jwks is None or now >= self._jwks.until:
            # Forgotten before the fetch, which may fail; a failed early fetch keeps the keys
            # it was meant to refresh, and counts for `_may_refresh` like one that worked.
            self._memory.clear()
            self._jwks_fetched_at = now
            self._jwks = _Cached(parse_jwks(self.fetcher(self.jwks_source)), now + JWKS_TTL)
        keys: dict[str, bytes] = self._jwks.value
        return keys

    def _listed_status(self, known: _Verified, keys: dict[str, bytes], now: int) -> Decision:
        """What the status list, usable now, says of the grant (`_ALLOWED` when valid), asked
        once per token and list."""
        if known.status_entry is None:
            raise Denied(
                Reason.STATUS_UNAVAILABLE,
                "the token has no status claim, and a status list was given",
            )
        listed = self._status_list(keys, now)
        if known.status_list is not listed:
            try:
                known.status = _status_verdict(known.claims, known.status_entry, listed)
            except Denied as denied:
                known.status = denied.decision
            known.status_list = listed
        return known.status

    def _status_list(self, keys: dict[str, bytes], now: int) -> dict[str, Any]:
        """The status list as fetched (again once its time to live is over: a new object, so
        every remembered status is asked again), or Denied when it cannot be had, trusted or
        used now."""
        try:
            if self._status is None or now >= self._status.until:
                self._status = None
                listed = self._fetch_status_list(keys, now)
                self._status = _Cached(listed, _usable_until(listed, now))
            current: dict[str, Any] = self._status.value
            # No leeway here: it would let revocations arrive that much later.
            if "exp" in current and now >= current["exp"]:
                raise Unavailable("it has expired")
        except Unavailable as exc:
            raise Denied(Reason.STATUS_UNAVAILABLE, f"status list: {exc}") from None
        return current

    def _fetch_status_list(self, keys: dict[str, bytes], now: int) -> dict[str, Any]:
        assert self.status_source is not None  # noqa: S101 - only called with a list
        raw = self.fetcher(self.status_source).decode("ascii", "replace").strip()
        try:
            try:
                return decode_verified(raw, keys, typ=STATUS_LIST_TYPE)
            except TokenRejected as rejected:
                if rejected.reason is not Reason.UNKNOWN_KEY or not self._may_refresh(now):
                    raise
                return decode_verified(raw, self._keys(now, refresh=True), typ=STATUS_LIST_TYPE)
        except TokenRejected as rejected:
            raise Unavailable(f"not a trusted status list ({rejected.detail})") from None


_ALLOWED = Decision(True, None, "allowed")


class _Verified:
    """A token whose signature, claims and issuer held against the current JWKS."""

    __slots__ = (
        "claims", "exp", "nbf", "outcomes", "status", "status_entry", "status_list",
        "use_limited",
    )  # fmt: skip

    def __init__(self, claims: dict[str, Any]) -> None:
        self.claims = claims
        self.exp: int = claims["exp"]
        self.nbf: int = claims["nbf"]
        # A remote verifier cannot count uses: denied, after the times (SPEC's order).
        self.use_limited = "max_uses" in claims
        reference = claims.get("status")
        entry = reference.get("status_list") if isinstance(reference, dict) else None
        usable = isinstance(entry, dict) and type(entry.get("idx")) is int
        self.status_entry: dict[str, Any] | None = entry if usable else None
        # What `status_list` (the very object fetched) says of the grant; None: not asked yet.
        self.status_list: dict[str, Any] | None = None
        self.status = _ALLOWED
        self.outcomes: dict[tuple[tuple[Scope, ...], bool, str | None], Decision] = {}


def _status_verdict(
    claims: dict[str, Any], entry: dict[str, Any], listed: dict[str, Any]
) -> Decision:
    """What the status list `listed` says at the token's `entry` (`_ALLOWED` when valid);
    Denied for a list that is not the token's or cannot be read."""
    from nhidel.tokens.statuslist import INVALID, SUSPENDED, VALID, status_of

    try:
        if listed.get("sub") != entry.get("uri"):
            raise Unavailable("the status list is for another URI than the token names")
        if listed.get("iss") != claims["iss"]:
            raise Unavailable("the status list is from another issuer than the token")
        value = status_of(listed["status_list"], entry["idx"])
    except (Unavailable, ValueError, KeyError, TypeError) as exc:
        raise Denied(Reason.STATUS_UNAVAILABLE, f"status list: {exc}") from None
    if value == INVALID:
        raise Denied(Reason.REVOKED, "the status list says the grant was revoked")
    if value == SUSPENDED:
        raise Denied(Reason.REVOKED, "the status list says the grant is suspended")
    if value != VALID:
        raise Denied(Reason.STATUS_UNAVAILABLE, f"unknown status {value}")
    return _ALLOWED


def _usable_until(listed: dict[str, Any], now: int) -> float:
    """Keep a fetched list for its `ttl`, never past its `exp`; refuse a stale or odd one."""
    iat, ttl, exp = (_number(listed.get(name)) for name in ("iat", "ttl", "exp"))
    if iat is None or iat > now + LIST_CLOCK_SKEW:
        raise Unavailable("its iat is missing or in the future")
    if "exp" in listed and exp is None:
        raise Unavailable("its exp is not a NumericDate")
    if exp is None and (ttl is None or iat + ttl < now):
        raise Unavailable("it is stale: no exp, and older than its ttl")
    until = now + (ttl if ttl is not None and ttl > 0 else 0)
    return min(until, exp) if exp is not None else until


def _number(value: object) -> float | None:
    """A JSON number (not a bool), as a float; None for anything else."""
    return float(value) if type(value) in (int, float) else None  # type: ignore[arg-type]
