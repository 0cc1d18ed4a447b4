"""`nhidel review`: what each agent was granted against what it really used, read from the
sealed audit log, and the narrower ceiling its use in the window asks for.

An action is one thing an agent did with a grant: a gateway tool call (`tool.*`), a broker
request (`http.*`) or a `verify` (`verify.*`, whose `count` says how many identical checks one
record stands for). It is counted once, whichever records it left: an enforcement point
checking a grant with a use limit also leaves the `verify.*` record of the use it spent (a
`verify.allowed` and a `grant.used`, never an action itself; or a `verify.denied` when the use
was refused), written just before its own record. So such a `verify.*` record followed within
PAIRED seconds by an enforcement point's record of the same grant, scopes and outcome is that
action, not another.

An action's scopes are what was checked: `SERVER:TOOL[:RESOURCE]` (one per resource),
`ROUTE:METHOD:PATH`, or the scopes a verify asked for. A ceiling scope is used when it covers
one of them (nhidel.scopes.covers); a `verify --any-scope` asks for no scope, so it uses none.
The narrower ceiling is the ceiling's used scopes: nothing wider than the ceiling, nothing it
does not already hold. `review_records` is pure (records and ceilings in, figures out);
`review` reads them from a checked log and a sealed config.
"""

from __future__ import annotations

import shlex
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nhidel.errors import IntegrityError, UsageError
from nhidel.keys.keystore import KeyStore
from nhidel.models import Agent
from nhidel.paths import Paths
from nhidel.scopes import Scope, covers, parse_scope_text
from nhidel.timefmt import rfc3339

# How long after the verify record of a use it spends an enforcement point writes its own
# record of the same action: both are written within the same check, microseconds apart.
PAIRED = 1.0

_ENFORCED = ("tool.allowed", "tool.denied", "http.allowed", "http.denied")
_VERIFIED = ("verify.allowed", "verify.denied")


@dataclass(slots=True)
class GrantUse:
    """One grant issued in the window: how long it was granted for, and how long it was used
    (from when it could first be used to its last allowed action; None when never used)."""

    id: str
    scopes: tuple[str, ...]
    issued_at: float
    not_before: int
    expires_at: int
    actions: int = 0
    last_used: float | None = None

    @property
    def ttl(self) -> int:
        return self.expires_at - self.not_before

    @property
    def used_for(self) -> int | None:
        if self.last_used is None:
            return None
        return max(0, round(self.last_used - max(self.issued_at, self.not_before)))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scopes": list(self.scopes),
            "issued_at": rfc3339(int(self.issued_at)),
            "expires_at": rfc3339(self.expires_at),
            "ttl_seconds": self.ttl,
            "actions": self.actions,
            "last_used": None if self.last_used is None else rfc3339(int(self.last_used)),
            "used_seconds": self.used_for,
        }


@dataclass(slots=True)
class AgentReview:
    """One agent's figures for the window."""

    agent: Agent
    granted: Counter[str] = field(default_factory=Counter)  # scope -> grants naming it
    exercised: Counter[str] = field(default_factory=Counter)  # scope -> allowed actions
    actions: int = 0  # allowed actions, each counted once
    unscoped: int = 0  # of them, `verify --any-scope` checks: they exercise no scope
    ceiling_use: dict[Scope, int] = field(default_factory=dict)  # entry -> actions it covers
    grants: dict[str, GrantUse] = field(default_factory=dict)  # issued in the window
    denials: Counter[str] = field(default_factory=Counter)  # reason -> denied actions

    @property
    def unused_ceiling(self) -> tuple[Scope, ...]:
        return tuple(scope for scope in self.agent.allow if not self.ceiling_use.get(scope))

    @property
    def unused_grants(self) -> list[str]:
        return [grant.id for grant in self.grants.values() if not grant.actions]

    @property
    def idle(self) -> bool:
        """No ceiling scope was used: no narrower ceiling exists (removing the agent would be
        the next step, and that is for a person to decide)."""
        return len(self.unused_ceiling) == len(self.agent.allow)

    @property
    def narrower(self) -> tuple[Scope, ...] | None:
        """The ceiling's used scopes, or None when nothing narrower is proposed (every scope
        used, or none)."""
        if not self.unused_ceiling or self.idle:
            return None
        return tuple(scope for scope in self.agent.allow if self.ceiling_use.get(scope))

    @property
    def command(self) -> str | None:
        """The `agent update` that sets the narrower ceiling, ready for a shell."""
        if self.narrower is None:
            return None
        removed = " ".join(f"--disallow {shlex.quote(str(s))}" for s in self.unused_ceiling)
        return f"nhidel agent update {shlex.quote(self.agent.name)} {removed}"

    def to_json(self) -> dict[str, Any]:
        narrower = self.narrower
        return {
            "agent": self.agent.name,
            "ceiling": [
                {"scope": str(scope), "actions": self.ceiling_use.get(scope, 0)}
                for scope in self.agent.allow
            ],
            "granted": [{"scope": s, "grants": n} for s, n in self.granted.items()],
            "exercised": [{"scope": s, "actions": n} for s, n in self.exercised.items()],
            "actions": self.actions,
            "unscoped_actions": self.unscoped,
            "unused_ceiling": [str(scope) for scope in self.unused_ceiling],
            "grants": [grant.to_json() for grant in self.grants.values()],
            "unused_grants": self.unused_grants,
            "denials": dict(sorted(self.denials.items())),
            "idle": self.idle,
            "narrower_ceiling": None if narrower is None else [str(s) for s in narrower],
            "disallow": [str(s) for s in self.unused_ceiling] if narrower is not None else [],
            "command": self.command,
        }


@dataclass(slots=True)
class Review:
    """Every reviewed agent (by name) over the window [since, until]."""

    since: int
    until: int
    agents: list[AgentReview]

    def to_json(self) -> dict[str, Any]:
        return {
            "since": rfc3339(self.since),
            "until": rfc3339(self.until),
            "agents": [agent.to_json() for agent in self.agents],
        }


@dataclass(slots=True)
class _Action:
    agent: str
    grant: str | None
    at: float
    last: float
    count: int
    scopes: tuple[Scope, ...]
    outcome: str | None  # None when allowed, else the reason
    unscoped: bool = False
    counted: bool = True  # False once found to be another record of an enforced action


def review_records(
    records: Iterable[Mapping[str, Any]],
    agents: Iterable[Agent],
    *,
    since: int,
    until: int,
) -> Review:
    """The review of `agents` (their ceilings as they are now) over the records of a log, in
    log order; only records from `since` on are counted."""
    reviews = {agent.name: AgentReview(agent) for agent in agents}
    actions: list[_Action] = []
    # Verify records that an enforcement point's own record of the same action may follow,
    # by (grant, scopes, outcome): an allowed one only when it spent a use (the `grant.used`
    # written right after it), a denied one whenever it stands for one check.
    recent: dict[tuple[Any, ...], deque[_Action]] = {}
    spending: _Action | None = None  # an allowed verify, until the next record says
    for record in records:
        name = record.get("event")
        agent = record.get("agent")
        previous, spending = spending, None
        if agent not in reviews:
            continue
        at = _seconds(record.get("time"))
        if at is None:
            continue
        if name == "grant.issued":
            if at >= since:
                _issued(reviews[agent], record, at)
            continue
        if name == "grant.used":
            if previous is not None and previous.grant == record.get("grant"):
                recent.setdefault(_key(previous), deque()).append(previous)
            continue
        action = _action(record, agent, at)
        if action is None:
            continue
        if name not in _VERIFIED:
            _pair(recent.get(_key(action)), action)
        elif action.count == 1 and not action.unscoped:
            if action.outcome is None:
                spending = action
            else:
                recent.setdefault(_key(action), deque()).append(action)
        if at >= since:
            actions.append(action)
    for action in actions:
        if action.counted:
            _count(reviews[action.agent], action)
    return Review(since, until, sorted(reviews.values(), key=lambda r: r.agent.name))


def _key(action: _Action) -> tuple[Any, ...]:
    return (action.grant, tuple(map(str, action.scopes)), action.outcome)


def _issued(review: AgentReview, record: Mapping[str, Any], at: float) -> None:
    grant = record.get("grant")
    scopes = record.get("scopes")
    if not isinstance(grant, str) or not isinstance(scopes, list):
        return
    names = tuple(str(s) for s in scopes)
    expires_at = _whole(record.get("expires_at"), int(at))
    not_before = _whole(record.get("not_before"), int(at))
    review.grants[grant] = GrantUse(grant, names, at, not_before, expires_at)
    review.granted.update(dict.fromkeys(names, 1))


def _action(record: Mapping[str, Any], agent: str, at: float) -> _Action | None:
    """The action a decision record tells of, or None for any other record."""
    name = record.get("event")
    grant = record.get("grant") if isinstance(record.get("grant"), str) else None
    if name in _VERIFIED:
        outcome = record.get("outcome")
        requested = record.get("requested")
        scopes = _scopes(requested)
        count = record.get("count")
        count = count if type(count) is int and count > 0 else 1
        last = _seconds(record.get("last_time")) or at
        return _Action(agent, grant, at, last, count, scopes,
                       None if name == "verify.allowed" else str(outcome or "denied"),
                       unscoped=requested == [])  # fmt: skip
    if name in _ENFORCED:
        allowed = name.endswith(".allowed")
        outcome = None if allowed else str(record.get("reason") or "denied")
        if name.startswith("http."):
            scopes = _scopes(record.get("scopes"))
        else:
            scopes = _tool_scopes(record)
        return _Action(agent, grant, at, at, 1, scopes, outcome)
    return None


def _tool_scopes(record: Mapping[str, Any]) -> tuple[Scope, ...]:
    """What a gateway checked for a `tool.*` record: `SERVER:TOOL` or `SERVER:TOOL:RESOURCE`
    per resource, and `SERVER:resources` (or `prompts`) for a `resources/*` (`prompts/*`)
    request, which its `tool` names by method."""
    server, tool = record.get("server"), record.get("tool")
    if not isinstance(server, str) or not isinstance(tool, str):
        return ()
    if "/" in tool:
        return _scopes([f"{server}:{tool.split('/', 1)[0]}"])
    resources = record.get("resources")
    if isinstance(resources, list) and resources:
        return _scopes([f"{server}:{tool}:{resource}" for resource in resources])
    return _scopes([f"{server}:{tool}"])


def _scopes(texts: object) -> tuple[Scope, ...]:
    if not isinstance(texts, list):
        return ()
    found: list[Scope] = []
    for text in texts:
        try:
            found += parse_scope_text(str(text))  # (cached: a log repeats its scopes)
        except UsageError:
            continue  # nothing a ceiling scope could cover (a call refused for its name)
    return tuple(found)


def _pair(candidates: deque[_Action] | None, enforced: _Action) -> None:
    """Mark the verify record that `enforced`'s check left as the same action, if there is
    one: the oldest still waiting, written no more than PAIRED seconds before it."""
    while candidates:
        oldest = candidates.popleft()
        if enforced.at - PAIRED <= oldest.at <= enforced.at:
            oldest.counted = False
            return
        if oldest.at > enforced.at:  # (a clock stepped back): leave it for a later one
            candidates.appendleft(oldest)
            return


def _count(review: AgentReview, action: _Action) -> None:
    if action.outcome is not None:
        review.denials[action.outcome] += action.count
        return
    review.actions += action.count
    if action.unscoped:
        review.unscoped += action.count
    for scope in action.scopes:
        review.exercised[str(scope)] += action.count
    for entry in review.agent.allow:
        if any(covers(entry, scope) for scope in action.scopes):
            review.ceiling_use[entry] = review.ceiling_use.get(entry, 0) + action.count
    grant = review.grants.get(action.grant) if action.grant is not None else None
    if grant is not None:
        grant.actions += action.count
        grant.last_used = max(grant.last_used or action.last, action.last)


def _seconds(stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _whole(value: object, default: int) -> int:
    return value if type(value) is int else default


def review(
    paths: Paths,
    keystore: KeyStore,
    *,
    since: int,
    now: int,
    agent: str | None = None,
) -> Review:
    """Review every registered agent (or `agent`) from `since` to `now`: the whole log checked
    first (IntegrityError, exit 5, if it fails, as `audit verify` would), then only its sealed
    records read, against the ceilings of the sealed config.toml."""
    from nhidel.actions.audit_log import verify_log
    from nhidel.audit import AuditKeys
    from nhidel.audit.reader import records
    from nhidel.config import unknown_agent
    from nhidel.integrity.state import sealed_config

    if since > now:
        raise UsageError("--since is in the future", "give a time before now, or a duration: 30d")
    report = verify_log(paths, keystore)
    if not report.ok:
        raise IntegrityError(f"audit log integrity failure {report.problem}", _LOG_HINT)
    keys = AuditKeys.of(keystore)
    config = sealed_config(paths, keys)
    if agent is not None and agent not in config.agents:
        raise unknown_agent(agent)
    chosen = [a for a in config.agents.values() if agent is None or a.name == agent]
    unsealed = 0

    def skipped(count: int) -> None:
        nonlocal unsealed
        unsealed += count

    found = review_records(records(paths, keys.seal_key, skipped=skipped), chosen,
                           since=since, until=now)  # fmt: skip
    if unsealed:  # a line written since the check that is no sealed record
        raise IntegrityError(
            f"the audit log holds {unsealed} line(s) that are not sealed records", _LOG_HINT
        )
    return found


_LOG_HINT = (
    "keep a copy of the home for review before anything writes to it; see nhidel repair --help"
)
