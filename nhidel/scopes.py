"""The scope grammar: `service:action[:resource]`, and what covers what.

`service` and `action` are lowercase `[a-z0-9][a-z0-9_.-]*`; `action` may be `*`. The resource is
a non-empty, printable string with no whitespace; it may end in `*`, a prefix match. Nothing else
is a wildcard, and a `*` anywhere else is refused rather than taken literally, so no scope reads
as wider or narrower than it is. A scope without a resource is its own thing: it covers only
requests without a resource.

`covers` treats both sides as patterns, so it is reflexive and transitive and serves both checks:
a grant against a request (verify) and an agent's ceiling against a grant (attenuation).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from nhidel.errors import UsageError

MAX_SCOPE_LENGTH = 512
MAX_SCOPES = 64  # per grant, ceiling or verify: keeps tokens and audit records small
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_HINT = (
    "write service:action[:resource] in lowercase, e.g. repo:read:acme/api; "
    "action may be *, and a resource may end in *"
)


@dataclass(frozen=True, slots=True)
class Scope:
    service: str
    action: str
    resource: str | None = None

    def __str__(self) -> str:
        head = f"{self.service}:{self.action}"
        return head if self.resource is None else f"{head}:{self.resource}"

    @property
    def resource_prefix(self) -> str | None:
        """The prefix a wildcard resource matches, or None for an exact (or absent) resource."""
        if self.resource is not None and self.resource.endswith("*"):
            return self.resource[:-1]
        return None


def parse_scope(text: str) -> Scope:
    """Parse one scope, raising UsageError (exit 2) with the grammar as a hint."""
    if len(text) > MAX_SCOPE_LENGTH:
        raise UsageError(f"scope is longer than {MAX_SCOPE_LENGTH} characters", _HINT)
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise UsageError(f"invalid scope {text!r}: expected service:action[:resource]", _HINT)
    service, action = parts[0], parts[1]
    resource = parts[2] if len(parts) == 3 else None
    if not _NAME.fullmatch(service):
        raise UsageError(f"invalid scope {text!r}: bad service {service!r}", _HINT)
    if action != "*" and not _NAME.fullmatch(action):
        raise UsageError(f"invalid scope {text!r}: bad action {action!r}", _HINT)
    if resource is not None:
        if not resource:
            raise UsageError(f"invalid scope {text!r}: empty resource", _HINT)
        if any(ch.isspace() or not ch.isprintable() for ch in resource):
            raise UsageError(f"invalid scope {text!r}: whitespace or control character", _HINT)
        if "*" in resource[:-1]:
            raise UsageError(f"invalid scope {text!r}: '*' may only end a resource", _HINT)
    return Scope(service, action, resource)


def parse_scopes(texts: Iterable[str]) -> tuple[Scope, ...]:
    """Parse several scopes (each argument may hold several, space-separated), dropping repeats."""
    seen: dict[Scope, None] = {}
    for text in texts:
        for word in text.split():
            seen.setdefault(parse_scope(word), None)
            if len(seen) > MAX_SCOPES:
                raise UsageError(f"more than {MAX_SCOPES} scopes", "ask for fewer, wider scopes")
    return tuple(seen)


def parse_scope_arguments(texts: Iterable[str], *, option: str = "--scope") -> tuple[Scope, ...]:
    """Scopes given one per value of `option` (`--scope`, `--allow`), dropping repeats. A
    value holding whitespace is a UsageError, never read as two scopes: `'repo:read:x y'` is
    a typo far more often than a list."""
    given = list(texts)
    for text in given:
        if any(ch.isspace() for ch in text):
            raise UsageError(
                f"invalid scope {text!r}: a scope holds no whitespace",
                f"give each scope its own {option}, e.g. {option} repo:read:acme/api "
                f"{option} ticket:create:queue/support",
            )
    return parse_scopes(given)


@lru_cache(maxsize=4096)
def parse_scope_text(text: str) -> tuple[Scope, ...]:
    """`parse_scopes([text])`, once per distinct text: a token's `scope` claim or a ledger row's
    scopes, which a verifier meets again and again."""
    return parse_scopes([text])


def covers(granted: Scope, requested: Scope) -> bool:
    """True when every concrete scope `requested` matches is also matched by `granted`."""
    if granted.service != requested.service:
        return False
    if granted.action != "*" and granted.action != requested.action:
        return False
    if granted.resource is None or requested.resource is None:
        return granted.resource is None and requested.resource is None
    prefix = granted.resource_prefix
    if prefix is None:
        return granted.resource == requested.resource
    wanted = requested.resource_prefix
    return (requested.resource if wanted is None else wanted).startswith(prefix)


def covered_by_any(granted: Iterable[Scope], requested: Scope) -> bool:
    return any(covers(scope, requested) for scope in granted)


def not_covered(ceiling: Iterable[Scope], requested: Iterable[Scope]) -> list[Scope]:
    """The requested scopes that no scope of `ceiling` covers (empty when all are allowed)."""
    allowed = tuple(ceiling)
    return [scope for scope in requested if not covered_by_any(allowed, scope)]


def join_scopes(scopes: Iterable[Scope]) -> str:
    """The space-separated form used in the token's `scope` claim (RFC 8693)."""
    return " ".join(str(scope) for scope in scopes)
