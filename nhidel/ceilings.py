"""What an agent's ceiling covers, and the narrowing part of a change to it.

`agent update` revokes the live grants that its new ceiling no longer covers (`covers_grant`). A
change cut short by a crash before config.toml was written is finished as `narrowing_of` it (in
nhidel.integrity.state): never wider than the ceiling before it, nor than the one asked for.
"""

from __future__ import annotations

from dataclasses import replace

from nhidel.models import Agent, Grant
from nhidel.scopes import Scope, covered_by_any, covers, not_covered


def covers_grant(agent: Agent, grant: Grant, *, now: int) -> bool:
    """Whether `agent`'s ceiling covers `grant` at `now`: every one of its scopes, its audience
    (when the ceiling names audiences), and the time it can still be used (from now, or from
    its start when pending) within the maximum TTL.

    Time left, not the TTL it was minted with: a grant with less left than the new maximum gives
    no more than a fresh grant could, so revoking it would only break the work it is doing.
    """
    if not_covered(agent.allow, grant.scopes):
        return False
    if agent.audiences and grant.aud not in agent.audiences:
        return False
    return grant.expires_at - max(now, grant.not_before) <= agent.max_ttl


def narrowing_of(current: Agent, asked: Agent) -> Agent:
    """The part of the change from `current` to `asked` that narrows it, and nothing wider:
    the scopes asked for that `current` covers, the smaller of each TTL, the audiences asked
    for that `current` allows. Equal to `asked` for a change that only narrows, to `current`
    for one that only widens.

    When nothing of one side is left (every scope swapped for one `current` does not cover),
    `asked` counts for that side: it is what was asked for, and the old entries were the ones
    being narrowed away.
    """
    allow = tuple(s for s in asked.allow if covered_by_any(current.allow, s)) or asked.allow
    max_ttl = min(current.max_ttl, asked.max_ttl)
    default_ttl = min(current.default_ttl, asked.default_ttl, max_ttl)
    if not current.audiences:  # any audience before: whatever was asked is no wider
        audiences = asked.audiences
    elif not asked.audiences:  # any audience asked for: a widening, so none of it
        audiences = current.audiences
    else:
        kept = tuple(a for a in asked.audiences if a in current.audiences)
        audiences = kept or asked.audiences
    # Every approval mark of either side: a mark only ever asks for more.
    approve = tuple(dict.fromkeys(current.approve + asked.approve))
    return replace(
        current, allow=allow, max_ttl=max_ttl, default_ttl=default_ttl, audiences=audiences,
        approve=kept_marks(allow, approve),
    )  # fmt: skip


def needs_approval(agent: Agent, scope: Scope) -> Scope | None:
    """The approval mark of `agent` that covers the call `scope` (canonical), or None. A call a
    mark covers waits for a human's yes even when an unmarked entry covers it too."""
    for mark in agent.approve:
        if covers(mark, scope):
            return mark
    return None


def kept_marks(allow: tuple[Scope, ...], marks: tuple[Scope, ...]) -> tuple[Scope, ...]:
    """The marks that still touch some call `allow` lets through. A mark that no longer does is
    moot; one that touches even part of an entry stays (dropping it would widen)."""
    return tuple(m for m in marks if any(overlaps(m, entry) for entry in allow))


def overlaps(one: Scope, other: Scope) -> bool:
    """Whether some request both scopes cover: what `agent update --disallow` takes for a scope
    meant to narrow an entry it is not (an entry is removed whole, never in part)."""
    if one.service != other.service:
        return False
    if one.action != other.action and "*" not in (one.action, other.action):
        return False
    if one.resource is None or other.resource is None:
        return one.resource is None and other.resource is None
    # What each matches: an exact resource, or every resource starting with its prefix.
    mine, theirs = one.resource_prefix, other.resource_prefix
    if mine is None and theirs is None:
        return one.resource == other.resource
    if mine is None:
        return one.resource.startswith(theirs or "")
    if theirs is None:
        return other.resource.startswith(mine)
    return mine.startswith(theirs) or theirs.startswith(mine)
