"""The things nhidel keeps: agents and grants, as frozen values."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nhidel.errors import UsageError
from nhidel.names import AGENT_NAME, MAX_AUDIENCE_LENGTH
from nhidel.scopes import Scope, join_scopes
from nhidel.timefmt import format_duration, rfc3339

SHORT_ID_LENGTH = 10


def new_grant_id() -> str:
    """`g` and 26 lowercase base32 characters: 130 random bits."""
    import base64
    import secrets  # here: it loads OpenSSL's hashlib, which listing grants does not need

    return "g" + base64.b32encode(secrets.token_bytes(17)).decode("ascii").lower()[:26]


def is_plain_text(text: str) -> bool:
    """Printable, with no whitespace: safe in a token claim, a log line and a terminal."""
    return all(ch.isprintable() and not ch.isspace() for ch in text)


def check_audience(aud: str) -> str:
    if not aud or len(aud) > MAX_AUDIENCE_LENGTH or not is_plain_text(aud):
        raise UsageError(
            f"invalid audience {aud!r}",
            f"use up to {MAX_AUDIENCE_LENGTH} printable characters without spaces, "
            "e.g. api.example.com",
        )
    return aud


def refuse_token_as_id(text: str) -> None:
    """Refuse a token (or a piece of one: a JWS has dots, and its header starts `eyJ`) where
    a grant id goes, without quoting it: a token is a credential, and does not belong in an
    error message or a terminal's scrollback."""
    if "." in text or text.lstrip().startswith("eyJ"):
        raise UsageError(
            "that is a token, not a grant id",
            "see the grant behind a token with: nhidel inspect - (the token on stdin)",
        )


def check_agent_name(name: str) -> str:
    if not AGENT_NAME.fullmatch(name):
        raise UsageError(
            f"invalid agent name {name!r}",
            "use 1-64 characters: lowercase letters, digits, '_', '.', '-', starting with a "
            "letter or digit",
        )
    return name


class GrantStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    EXHAUSTED = "exhausted"


def grant_status(
    now: int,
    revoked_at: int | None,
    expires_at: int,
    max_uses: int | None,
    uses: int,
    not_before: int,
) -> GrantStatus:
    """A grant's status at `now`, defined once: for `Grant.status`, and for the listing, which
    reads it from ledger rows without building a Grant (nhidel.ledger.rows)."""
    if revoked_at is not None:
        return _REVOKED
    if now >= expires_at:
        return _EXPIRED
    if max_uses is not None and uses >= max_uses:
        return _EXHAUSTED
    if now < not_before:
        return _PENDING
    return _ACTIVE


# The members, looked up once: reading one from the Enum class takes ~60 ns, and the listing
# asks for one per row.
_REVOKED, _EXPIRED, _EXHAUSTED, _PENDING, _ACTIVE = (
    GrantStatus.REVOKED, GrantStatus.EXPIRED, GrantStatus.EXHAUSTED, GrantStatus.PENDING,
    GrantStatus.ACTIVE,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Agent:
    """A named non-human identity and its ceiling: what it may ever be granted."""

    name: str
    allow: tuple[Scope, ...]
    max_ttl: int
    default_ttl: int
    audiences: tuple[str, ...] = ()
    created_at: int = 0
    approve: tuple[Scope, ...] = ()  # approval marks: a call one covers waits for a human's yes

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "allow": [str(scope) for scope in self.allow],
            "max_ttl": format_duration(self.max_ttl),
            "default_ttl": format_duration(self.default_ttl),
            "aud": list(self.audiences),
            "created_at": rfc3339(self.created_at),
        }
        # Present only when marked, so an unmarked ceiling seals as it did before marks.
        if self.approve:
            body["approve"] = [str(scope) for scope in self.approve]
        return body


@dataclass(frozen=True, slots=True)
class Grant:
    """One token's claims and its life in the ledger (never the token itself)."""

    id: str
    agent: str
    scopes: tuple[Scope, ...]
    aud: str | None
    issued_at: int
    not_before: int
    expires_at: int
    max_uses: int | None
    reason: str | None
    kid: str
    uses: int = 0
    revoked_at: int | None = None
    revoke_reason: str | None = None
    status_idx: int | None = None  # its entry in the principal's token status list

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID_LENGTH]

    def status(self, now: int) -> GrantStatus:
        return grant_status(
            now, self.revoked_at, self.expires_at, self.max_uses, self.uses, self.not_before
        )

    def to_json(self, now: int) -> dict[str, Any]:
        """The stable JSON shape from SPEC.md (keys never change meaning between releases)."""
        return {
            "id": self.id,
            "agent": self.agent,
            "scopes": [str(scope) for scope in self.scopes],
            "aud": self.aud,
            "status": self.status(now).value,
            "issued_at": rfc3339(self.issued_at),
            "not_before": rfc3339(self.not_before),
            "expires_at": rfc3339(self.expires_at),
            "uses": self.uses,
            "max_uses": self.max_uses,
            "reason": self.reason,
            "kid": self.kid,
            "revoked_at": rfc3339(self.revoked_at),
            "revoke_reason": self.revoke_reason,
        }

    @property
    def scope_claim(self) -> str:
        return join_scopes(self.scopes)
