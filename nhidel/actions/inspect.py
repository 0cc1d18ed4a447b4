"""Reading a token without the keystore: its header and claims, the grant behind it, and whether
verify would allow it now.

Nothing here opens the keystore, spends a use or writes an audit record. What verify takes from
the keystore is not at hand, so the verdict is checked against what an agent could have edited,
and says so in `unverified`: the signature and issuer against the public keys and issuer listed
in config.toml (`keys from config.toml`), and revocation and uses against the grant's ledger row
rather than the sealed state (`sealed state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nhidel.config import Config, load_config
from nhidel.errors import UsageError
from nhidel.ledger.store import Ledger
from nhidel.models import Grant
from nhidel.names import GRANT_ID
from nhidel.paths import Paths
from nhidel.tokens.claims import Denied, claims_shape, time_detail, time_fault
from nhidel.tokens.decision import Reason
from nhidel.tokens.jws import TokenDecoder, TokenRejected, decode_unverified, token_sha256

# What a verdict could not check without the keystore (the stable strings of `unverified`).
KEYS_FROM_CONFIG = "keys from config.toml"
SEALED_STATE = "sealed state"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether verify would allow the token now (for the scopes it grants and its own
    audience), and what that answer could not check."""

    would_verify: bool
    reason: Reason | None
    detail: str
    unverified: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "would_verify": self.would_verify,
            "reason": None if self.reason is None else self.reason.value,
            "detail": self.detail,
            "unverified": list(self.unverified),
        }


@dataclass(frozen=True, slots=True)
class Inspection:
    """A token read: its header and claims as it spells them, the grant the ledger issued it
    for (None when it issued no such token), and the verdict."""

    header: dict[str, Any]
    claims: dict[str, Any]
    grant: Grant | None
    verdict: Verdict


def inspect_token(paths: Paths, token: str, *, now: int) -> Inspection:
    """Decode `token` and judge it as verify would at `now`, without the keystore.

    A text that is not a token (not three base64url parts whose first two are JSON objects) is
    a UsageError that quotes none of it.
    """
    try:
        header, claims = decode_unverified(token)
    except TokenRejected as rejected:
        raise UsageError(
            f"that is not a token: {rejected.detail}",
            "pass the whole token, e.g. nhidel inspect - with it on stdin, or in NHIDEL_TOKEN",
        ) from None
    grant = _grant_behind(paths, token, claims.get("jti"))
    verdict = _verdict(load_config(paths), token, claims, grant, now)
    return Inspection(header, claims, grant, verdict)


def _grant_behind(paths: Paths, token: str, grant_id: object) -> Grant | None:
    """The grant the ledger issued this very token for (its hash must match), else None.

    A home without a ledger yet has issued nothing (and `inspect` creates none)."""
    if not isinstance(grant_id, str) or not GRANT_ID.fullmatch(grant_id):
        return None
    if not paths.ledger_file.exists():
        return None
    with Ledger(paths) as ledger:
        found = ledger.lookup(grant_id)  # a row no Grant can hold: IntegrityError, exit 5
    if found is None or found[1] != token_sha256(token.strip()):
        return None
    return found[0]


def _verdict(
    config: Config, token: str, claims: dict[str, Any], grant: Grant | None, now: int
) -> Verdict:
    """Verify's checks in verify's order (nhidel.verifiers.local): signature, claims, times,
    then the ledger; audience and scopes are the caller's question, so not asked here."""
    rejected, keys_used = _signature(config, token)
    unverified = (KEYS_FROM_CONFIG,) if keys_used else ()

    def no(reason: Reason, detail: str, *, more: tuple[str, ...] = ()) -> Verdict:
        return Verdict(False, reason, detail, unverified + more)

    if rejected is not None:
        return no(rejected.reason, rejected.detail)
    try:
        claims_shape(claims)
    except Denied as shapeless:
        reason = shapeless.decision.reason or Reason.MALFORMED
        return no(reason, shapeless.decision.detail)
    if claims["iss"] != config.issuer:
        return no(Reason.WRONG_ISSUER, f"issued by {claims['iss']!r}")
    max_uses = claims.get("max_uses")
    if max_uses is not None and (type(max_uses) is not int or max_uses < 1):
        return no(Reason.MALFORMED, "claim 'max_uses' is not a count")
    fault = time_fault(claims["exp"], claims["nbf"], now, 0)
    if fault is not None:
        return no(fault, time_detail(fault, claims["nbf"]))
    if grant is None:
        return no(Reason.UNKNOWN_GRANT, "this ledger never issued that token")
    from_rows = (SEALED_STATE,)
    if grant.revoked_at is not None:
        return no(Reason.REVOKED, "the grant was revoked", more=from_rows)
    if max_uses is not None and grant.uses >= max_uses:
        return no(Reason.USES_EXHAUSTED, "the grant has no uses left", more=from_rows)
    aud = claims.get("aud")
    detail = "valid now, for the scopes it grants" + (
        f" and verify --aud {aud}" if isinstance(aud, str) else ""
    )
    return Verdict(True, None, detail, unverified + from_rows)


def _signature(config: Config, token: str) -> tuple[TokenRejected | None, bool]:
    """Why the token's header or signature would be refused (None: it holds), and whether that
    answer rests on the keys config.toml lists. A decoder trusting no key tells the two apart:
    it refuses a header that is fine in itself only as `unknown_key`."""
    try:
        TokenDecoder({}).decode(token)
    except TokenRejected as rejected:
        if rejected.reason is not Reason.UNKNOWN_KEY:
            return rejected, False
    try:
        TokenDecoder(_config_keys(config)).decode(token)
    except TokenRejected as rejected:
        return rejected, True
    return None, True


def _config_keys(config: Config) -> dict[str, bytes]:
    """The public keys config.toml lists; one it cannot read is left out (a token naming it
    is judged `unknown_key`, a verdict labelled unverified like every other)."""
    from nhidel.keys.material import verifying_key

    keys = {}
    for kid, info in config.keys.items():
        try:
            keys[kid] = verifying_key(info["x"])
        except (KeyError, TypeError, ValueError):
            continue
    return keys
