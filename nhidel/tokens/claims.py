"""What every verifier checks in a grant token's claims.

Shared by the local verifier (keys pinned in the keystore, the ledger) and the remote one
(a JWKS and a status list), so both give the same reason codes for the same faults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nhidel.errors import UsageError
from nhidel.models import Grant
from nhidel.names import GRANT_ID
from nhidel.scopes import Scope, covered_by_any, parse_scope_arguments, parse_scope_text
from nhidel.timefmt import rfc3339
from nhidel.tokens.decision import Decision, Reason

MAX_LEEWAY = 3600


class Denied(Exception):  # noqa: N818 - control flow inside a verifier's check
    def __init__(self, reason: Reason, detail: str, grant: Grant | None = None) -> None:
        self.decision = Decision(False, reason, detail, grant)


def check_leeway(leeway: int) -> int:
    if leeway < 0:
        raise UsageError("--leeway cannot be negative", "give a duration such as 30s")
    if leeway > MAX_LEEWAY:
        raise UsageError("--leeway is over an hour", "clocks that far apart need fixing")
    return leeway


def requested_scopes(scopes: Sequence[str | Scope] | str, any_scope: bool) -> tuple[Scope, ...]:
    """The scopes a caller asks about; nothing is allowed by default, so none is an error."""
    if isinstance(scopes, str):
        scopes = [scopes]
    requested = tuple(s for s in scopes if isinstance(s, Scope)) + parse_scope_arguments(
        s for s in scopes if isinstance(s, str)
    )
    if not requested and not any_scope:
        raise UsageError(
            "verify needs the scopes to check",
            "pass --scope SCOPE (or --any-scope to accept any granted scope)",
        )
    return requested


def time_fault(exp: int, nbf: int, now: int, leeway: int) -> Reason | None:
    """Whether a grant is outside its times at `now`: `Reason.EXPIRED` from `exp` on,
    `Reason.NOT_YET_VALID` before `nbf`, each moved `leeway` seconds in the grant's favour
    (clocks differ); None while it is valid. Every verifier decides times with this alone."""
    if now >= exp + leeway:
        return Reason.EXPIRED
    if now + leeway < nbf:
        return Reason.NOT_YET_VALID
    return None


def time_detail(fault: Reason, nbf: int) -> str:
    """What a denial for a time fault says; one for a grant not valid yet says when it starts
    (`nbf`, the grant's own start: a verifier's leeway does not move it)."""
    if fault is Reason.EXPIRED:
        return "the grant has expired"
    try:
        start = rfc3339(nbf)
    except (OverflowError, ValueError, OSError):  # past year 9999: say the number
        start = str(nbf)
    return f"the grant is not valid yet: it starts at {start}"


def check_times(claims: dict[str, Any], now: int, leeway: int) -> None:
    """Raise Denied when the claims' times (`exp`, `nbf`) do not hold at `now`."""
    fault = time_fault(claims["exp"], claims["nbf"], now, leeway)
    if fault is not None:
        raise Denied(fault, time_detail(fault, claims["nbf"]))


def check_audience_and_scopes(
    claims: dict[str, Any],
    aud: str | None,
    requested: Sequence[Scope],
    any_scope: bool,
    grant: Grant | None = None,
) -> None:
    if claims.get("aud") is not None and claims["aud"] != aud:
        raise Denied(Reason.WRONG_AUDIENCE, "the grant is for another audience", grant)
    if any_scope:
        return
    try:
        granted = parse_scope_text(claims["scope"])
    except UsageError:
        raise Denied(Reason.MALFORMED, "claim 'scope' is malformed", grant) from None
    for scope in requested:
        if not covered_by_any(granted, scope):
            raise Denied(Reason.SCOPE_NOT_GRANTED, f"{scope} is not granted", grant)


def claims_shape(claims: dict[str, Any]) -> str:
    """Check the claims nhidel relies on are present and typed; return the grant id."""
    get = claims.get
    for name in _INTEGER_CLAIMS:
        if type(get(name)) is not int:
            raise Denied(Reason.MALFORMED, f"claim {name!r} is not an integer")
    for name in _STRING_CLAIMS:
        if not isinstance(get(name), str):
            raise Denied(Reason.MALFORMED, f"claim {name!r} is missing")
    act = get("act")
    if not isinstance(act, dict) or not isinstance(act.get("sub"), str):
        raise Denied(Reason.MALFORMED, "claim 'act' is missing")
    jti: str = claims["jti"]
    if not GRANT_ID.fullmatch(jti):
        raise Denied(Reason.MALFORMED, "claim 'jti' is not a grant id")
    return str(jti)


_INTEGER_CLAIMS = ("iat", "nbf", "exp")
_STRING_CLAIMS = ("iss", "sub", "scope", "jti")
