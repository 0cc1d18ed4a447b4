"""Registering agents and their ceilings, and removing them (which revokes their grants)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nhidel.audit import AuditKeys, event
from nhidel.config import Config, with_agent, without_agent
from nhidel.errors import NotFoundError, PolicyError, UsageError
from nhidel.fsutil import exclusive_lock
from nhidel.integrity import state
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.ledger.store import Ledger
from nhidel.models import Agent, check_agent_name, check_audience
from nhidel.paths import Paths
from nhidel.scopes import parse_scope_arguments
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
    agent = Agent(name, scopes, maximum, default, tuple(check_audience(a) for a in audiences), now)

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
                config_sha256=state.config_digest(config),
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
            live = [g for g in ledger.live_ids(now=now, agent=name) if g not in step.state.revoked]
            if name not in before.agents and not live:
                raise NotFoundError(
                    f"no agent named {name!r}", "see the registered agents: nhidel agent list"
                )
            grants = [g for g in (ledger.get(grant_id) for grant_id in live) if g is not None]
            principal = config.principal
            # One batch of records, then config.toml, then the ledger: a crash in between
            # leaves records that the next command finishes (the agent stays removed, and
            # every grant whose revocation a torn write cut off is revoked).
            step.write(
                [event("agent.removed", principal=principal, agent=name, revoked=len(grants),
                       config_sha256=state.config_digest(config))]
                + [event("grant.revoked", principal=principal, agent=name, grant=g.id,
                         expires_at=g.expires_at, reason="agent removed") for g in grants]
            )  # fmt: skip
            if config != before:
                step.save_config(config)
            step.revoke(grants, now=now, reason="agent removed")
    return Removal(name, [g.id for g in grants])
