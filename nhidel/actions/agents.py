"""Registering agents and their ceilings, changing a ceiling (which revokes the grants it no
longer covers), and removing agents (which revokes their grants)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from nhidel.audit import AuditKeys, event
from nhidel.ceilings import covers_grant, kept_marks, narrowing_of, overlaps
from nhidel.config import Config, load_config, unknown_agent, with_agent, without_agent
from nhidel.errors import PolicyError, UsageError
from nhidel.fsutil import exclusive_lock
from nhidel.integrity import state
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.ledger.store import Ledger
from nhidel.models import Agent, Grant, check_agent_name, check_audience
from nhidel.paths import Paths
from nhidel.scopes import Scope, covered_by_any, covers, parse_scope_arguments
from nhidel.timefmt import format_duration, parse_duration

DEFAULT_MAX_TTL = "1h"
DEFAULT_TTL = "15m"


def add_agent(
    paths: Paths,
    name: str,
    *,
    allow: Sequence[str],
    max_ttl: str | None,
    default_ttl: str | None,
    audiences: Sequence[str],
    now: int,
    approve: Sequence[str] = (),
    keystore: KeyStore | None = None,
) -> Agent:
    """Register `name` with its ceiling; refuse to replace an existing agent silently."""
    check_agent_name(name)
    scopes = parse_scope_arguments(allow, option="--allow")
    if not scopes:
        raise UsageError(
            "an agent needs at least one --allow scope", "e.g. --allow repo:read:acme/*"
        )
    maximum = parse_duration(max_ttl or DEFAULT_MAX_TTL, what="--max-ttl")
    default = (
        parse_duration(default_ttl, what="--default-ttl")
        if default_ttl
        else min(parse_duration(DEFAULT_TTL), maximum)
    )
    if default > maximum:
        raise UsageError(
            f"--default-ttl {format_duration(default)} is longer than --max-ttl "
            f"{format_duration(maximum)}",
            "make the default TTL no longer than the maximum",
        )
    marks = approval_marks(scopes, approve)
    agent = Agent(
        name, scopes, maximum, default, tuple(check_audience(a) for a in audiences), now, marks
    )

    def register(config: Config) -> Config:
        if name in config.agents:
            raise PolicyError(
                f"agent {name!r} already exists",
                f"remove it first (this revokes its grants): nhidel agent remove {name}",
            )
        return with_agent(config, agent)

    keys = AuditKeys.of(keystore or open_keystore(paths))  # no keystore, no change
    with exclusive_lock(paths.config_lock), Ledger(paths) as ledger:
        with state.change(paths, keys, ledger, now=now) as step:
            config = register(step.config())
            step.write([event(
                "agent.added", principal=config.principal, agent=name,
                scopes=[str(s) for s in scopes], max_ttl=agent.max_ttl, aud=list(agent.audiences),
                approve=[str(s) for s in marks], config_sha256=state.config_digest(config),
            )])  # fmt: skip
            step.save_config(config)
    return agent


@dataclass(frozen=True, slots=True)
class Removal:
    agent: str
    revoked: list[str]


def remove_agent(paths: Paths, name: str, *, now: int, keystore: KeyStore | None = None) -> Removal:
    """Unregister `name` and revoke every grant of it that could still be used.

    The agent leaves config.toml first, and its grants are revoked while config.toml is still
    locked: a grant being minted re-reads the config inside its ledger transaction, so it is
    either refused (agent gone) or committed before the revocation, which then revokes it. If
    the revocation cannot be recorded, the agent is put back: never half removed. Removing a
    name that is no longer registered still revokes grants left live by an interrupted removal.
    """
    check_agent_name(name)
    keys = AuditKeys.of(keystore or open_keystore(paths))
    with exclusive_lock(paths.config_lock), Ledger(paths) as ledger:
        with state.change(paths, keys, ledger, now=now) as step:
            before = step.config()
            config = without_agent(before, name)
            grants = state.live_grants(ledger, step.state, keys.seal_key, now=now, agent=name)
            if name not in before.agents and not grants:
                raise unknown_agent(name)
            principal = config.principal
            # One batch of records, then config.toml, then the ledger: a crash in between
            # leaves records that the next command finishes (the agent stays removed, and
            # every grant whose revocation a torn write cut off is revoked).
            step.write(
                [event("agent.removed", principal=principal, agent=name, revoked=len(grants),
                       config_sha256=state.config_digest(config))]
                + [state.revocation(g, principal=principal, reason="agent removed")
                   for g in grants]
            )  # fmt: skip
            if config != before:
                step.save_config(config)
            step.revoke(grants, now=now, reason="agent removed")
    return Removal(name, [g.id for g in grants])


@dataclass(frozen=True, slots=True)
class CeilingChange:
    """What `agent update` was asked for, as typed: scopes to add to the ceiling and to remove
    from it, and settings that replace the agent's (None: keep it)."""

    allow: Sequence[str] = ()
    disallow: Sequence[str] = ()
    max_ttl: str | None = None
    default_ttl: str | None = None
    audiences: Sequence[str] | None = None
    approve: Sequence[str] = ()
    no_approve: Sequence[str] = ()


def approval_marks(allow: tuple[Scope, ...], texts: Sequence[str]) -> tuple[Scope, ...]:
    """The `--approve` scopes, each within the ceiling `allow` (UsageError naming one that is
    not: a mark outside it would mark nothing the agent can do)."""
    marks = parse_scope_arguments(texts, option="--approve")
    for mark in marks:
        if not covered_by_any(allow, mark):
            raise UsageError(
                f"--approve {mark} is not within the agent's ceiling",
                "mark a scope that --allow covers, or allow it too",
            )
    return marks


@dataclass(frozen=True, slots=True)
class Update:
    """An agent's ceiling before and after, and the live grants the change revokes (those the
    new ceiling no longer covers; none when it only widens)."""

    before: Agent
    after: Agent
    revoked: list[Grant]

    @property
    def changed(self) -> bool:
        return self.after != self.before


def changed_ceiling(agent: Agent, change: CeilingChange) -> Agent:
    """`agent` with `change` applied, every value checked; UsageError for a change that says
    nothing, contradicts itself, or leaves the agent without a scope."""
    if not (change.allow or change.disallow or change.max_ttl or change.default_ttl
            or change.audiences is not None or change.approve or change.no_approve):  # fmt: skip
        raise UsageError(
            f"nothing to change for agent {agent.name}",
            "give --allow, --disallow, --approve, --no-approve, --max-ttl, --default-ttl or --aud",
        )
    added = parse_scope_arguments(change.allow, option="--allow")
    removed = parse_scope_arguments(change.disallow, option="--disallow")
    for scope in added:
        if scope in removed:
            raise UsageError(
                f"scope {scope} is both allowed and disallowed", "give it to one of the two"
            )
    # A disallowed scope takes every entry it covers. One that covers only part of an entry
    # cannot narrow it (entries go whole); one that touches no entry is gone already, so
    # running an update again changes nothing.
    for scope in removed:
        for entry in agent.allow:
            if overlaps(scope, entry) and not covers(scope, entry):
                raise UsageError(
                    f"--disallow {scope} covers only part of {entry}, an entry of agent "
                    f"{agent.name}'s ceiling",
                    f"entries go whole: --disallow {entry}, then --allow what to keep of it",
                )
    kept = tuple(s for s in agent.allow if not covered_by_any(removed, s))
    allow = kept + tuple(s for s in dict.fromkeys(added) if s not in kept)
    if not allow:
        raise UsageError(
            f"that leaves agent {agent.name} no scope",
            f"keep or allow one, or remove the agent: nhidel agent remove {agent.name}",
        )
    maximum = parse_duration(change.max_ttl, what="--max-ttl") if change.max_ttl else agent.max_ttl
    # A lowered maximum lowers the default with it, unless a default is given.
    default = (
        parse_duration(change.default_ttl, what="--default-ttl")
        if change.default_ttl
        else min(agent.default_ttl, maximum)
    )
    if default > maximum:
        raise UsageError(
            f"--default-ttl {format_duration(default)} is longer than the maximum TTL "
            f"{format_duration(maximum)}",
            "make the default TTL no longer than the maximum (--max-ttl)",
        )
    audiences = (
        agent.audiences
        if change.audiences is None
        else tuple(dict.fromkeys(check_audience(a) for a in change.audiences))
    )
    unmarked = parse_scope_arguments(change.no_approve, option="--no-approve")
    marked = approval_marks(allow, change.approve)
    for mark in marked:
        if mark in unmarked:
            raise UsageError(
                f"scope {mark} is both marked and unmarked", "give it to one of the two"
            )
    for mark in unmarked:
        if mark not in agent.approve:
            raise UsageError(
                f"--no-approve {mark} is not an approval mark of agent {agent.name}",
                f"see its marks: nhidel agent show {agent.name}",
            )
    marks = tuple(m for m in agent.approve if m not in unmarked)
    marks = kept_marks(allow, marks + tuple(m for m in marked if m not in marks))
    return replace(agent, allow=allow, max_ttl=maximum, default_ttl=default, audiences=audiences,
                   approve=marks)  # fmt: skip


def plan_update(
    paths: Paths, name: str, change: CeilingChange, *, now: int, keystore: KeyStore
) -> Update:
    """What `update_agent` would do now, changing nothing: to say which grants it revokes
    before asking."""
    check_agent_name(name)
    keys = AuditKeys.of(keystore)
    with Ledger(paths) as ledger:
        sealed = state.read_checked(paths, keys, ledger)
        config = state.check_config(load_config(paths), sealed, paths)
        return _update(config, ledger, sealed, keys.seal_key, name, change, now=now)


def update_agent(
    paths: Paths, name: str, change: CeilingChange, *, now: int, keystore: KeyStore | None = None
) -> Update:
    """Change `name`'s ceiling and revoke the live grants the new one no longer covers, in one
    state change sealed as `agent.updated` (with the ceiling it asks for, so a crash is
    finished toward it: see nhidel.integrity.state). A change that only widens revokes
    nothing; one that changes nothing writes nothing."""
    check_agent_name(name)
    keys = AuditKeys.of(keystore or open_keystore(paths))
    with exclusive_lock(paths.config_lock), Ledger(paths) as ledger:
        with state.change(paths, keys, ledger, now=now) as step:
            config = step.config()
            update = _update(config, ledger, step.state, keys.seal_key, name, change, now=now)
            if not update.changed:
                return update
            # Grants minted while this runs are refused (see actions.grants.issue): one checked
            # against the old ceiling must not commit after the new one.
            ledger.bump_revocation_epoch()
            after, doomed = update.after, update.revoked
            config = with_agent(config, after)
            principal = config.principal
            step.write(
                [event("agent.updated", principal=principal, agent=name,
                       scopes=[str(s) for s in after.allow], max_ttl=after.max_ttl,
                       default_ttl=after.default_ttl, aud=list(after.audiences),
                       approve=[str(s) for s in after.approve], revoked=len(doomed), as_of=now,
                       config_sha256=state.config_digest(config))]
                + [state.revocation(g, principal=principal, reason=state.NARROWED)
                   for g in doomed]
            )  # fmt: skip
            step.save_config(config)
            step.revoke(doomed, now=now, reason=state.NARROWED)
    return update


def _update(
    config: Config,
    ledger: Ledger,
    sealed: state.SealedState,
    audit_key: bytes,
    name: str,
    change: CeilingChange,
    *,
    now: int,
) -> Update:
    before = config.agents.get(name)
    if before is None:
        raise unknown_agent(name)
    after = changed_ceiling(before, change)
    if narrowing_of(before, after) == before:
        return Update(before, after, [])  # it widens or changes nothing: every grant stays
    doomed = state.live_grants(ledger, sealed, audit_key, now=now, agent=name,
                               spared=lambda g: covers_grant(after, g, now=now))  # fmt: skip
    return Update(before, after, doomed)
