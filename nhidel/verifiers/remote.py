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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nhidel.base64url import b64url_decode
from nhidel.keys.material import public_key, thumbprint
from nhidel.scopes import Scope
from nhidel.tokens.claims import (
    Denied,
    check_audience_and_scopes,
    check_leeway,
    check_times,
    claims_shape,
    requested_scopes,
)
from nhidel.tokens.decision import Decision, Reason
from nhidel.tokens.jws import TokenRejected, decode_verified

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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


def parse_jwks(data: bytes) -> dict[str, Ed25519PublicKey]:
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
            if not isinstance(x, str) or len(b64url_decode(x)) != 32:
                raise ValueError
            verifier_key = public_key(x)
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


class RemoteVerifier:
    """Checks tokens against a published JWKS and (optionally) a published status list."""

    def __init__(
        self,
        jwks: str,
        status_list: str | None = None,
        *,
        issuer: str | None = None,
        leeway: int = 0,
        clock: Callable[[], float] = time.time,
        fetcher: Callable[[str], bytes] = fetch,
    ) -> None:
        self.jwks_source = jwks
        self.status_source = status_list
        self.issuer = issuer
        self.leeway = check_leeway(leeway)
        self.clock = clock
        self.fetcher = fetcher
        self._jwks: _Cached | None = None
        self._jwks_fetched_at: float | None = None
        self._status: _Cached | None = None

    def check(
        self,
        token: str,
        scopes: Sequence[str | Scope] | str = (),
        *,
        any_scope: bool = False,
        aud: str | None = None,
    ) -> Decision:
        requested = requested_scopes(scopes, any_scope)
        now = int(self.clock())
        try:
            return self._decide(token, requested, any_scope, aud, now)
        except Denied as denied:
            return denied.decision

    def _decide(
        self, token: str, requested: Sequence[Scope], any_scope: bool, aud: str | None, now: int
    ) -> Decision:
        try:
            keys = self._keys(now)
            try:
                claims = decode_verified(token, keys)
            except TokenRejected as rejected:
                if rejected.reason is not Reason.UNKNOWN_KEY or not self._may_refresh(now):
                    raise
                # Signed by a key newer than our copy of the JWKS (a rotation): fetch it again.
                keys = self._keys(now, refresh=True)
                claims = decode_verified(token, keys)
        except Unavailable as exc:
            raise Denied(Reason.UNKNOWN_KEY, str(exc)) from None
        except TokenRejected as rejected:
            raise Denied(rejected.reason, rejected.detail) from None
        claims_shape(claims)
        if self.issuer is not None and claims["iss"] != self.issuer:
            raise Denied(Reason.WRONG_ISSUER, f"issued by {claims['iss']!r}")
        check_times(claims, now, self.leeway)
        if "max_uses" in claims:
            raise Denied(
                Reason.STATUS_UNAVAILABLE,
                "a grant with a use limit can only be verified against its ledger",
            )
        if self.status_source is not None:
            self._check_status(claims, keys, now)
        check_audience_and_scopes(claims, aud, requested, any_scope)
        return Decision(True, None, "allowed")

    def _may_refresh(self, now: float) -> bool:
        """At most one early JWKS fetch every few seconds, so tokens naming made-up kids
        cannot turn this verifier into a flood of requests to the key host."""
        fetched = self._jwks_fetched_at
        return fetched is None or now - fetched >= MIN_REFRESH_INTERVAL

    def _keys(self, now: float, *, refresh: bool = False) -> dict[str, Ed25519PublicKey]:
        if refresh or self._jwks is None or now >= self._jwks.until:
            self._jwks = _Cached(parse_jwks(self.fetcher(self.jwks_source)), now + JWKS_TTL)
            self._jwks_fetched_at = now
        keys: dict[str, Ed25519PublicKey] = self._jwks.value
        return keys

    def _check_status(
        self, claims: dict[str, Any], keys: dict[str, Ed25519PublicKey], now: int
    ) -> None:
        from nhidel.tokens.statuslist import INVALID, SUSPENDED, VALID, status_of

        reference = claims.get("status")
        entry = reference.get("status_list") if isinstance(reference, dict) else None
        if not isinstance(entry, dict) or type(entry.get("idx")) is not int:
            raise Denied(
                Reason.STATUS_UNAVAILABLE,
                "the token has no status claim, and a status list was given",
            )
        try:
            listed = self._status_list(keys, now)
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

    def _status_list(self, keys: dict[str, Ed25519PublicKey], now: int) -> dict[str, Any]:
        if self._status is None or now >= self._status.until:
            assert self.status_source is not None  # noqa: S101 - only called with a list
            raw = self.fetcher(self.status_source).decode("ascii", "replace").strip()
            try:
                try:
                    listed = decode_verified(raw, keys, typ=STATUS_LIST_TYPE)
                except TokenRejected as rejected:
                    if rejected.reason is not Reason.UNKNOWN_KEY or not self._may_refresh(now):
                        raise
                    listed = decode_verified(raw, self._keys(now, refresh=True),
                                             typ=STATUS_LIST_TYPE)  # fmt: skip
            except TokenRejected as rejected:
                raise Unavailable(f"not a trusted status list ({rejected.detail})") from None
            self._status = _Cached(listed, _usable_until(listed, now))
        listed = self._status.value
        # No leeway here: it would let revocations arrive that much later.
        if "exp" in listed and now >= listed["exp"]:
            raise Unavailable("it has expired")
        return dict(listed)


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
