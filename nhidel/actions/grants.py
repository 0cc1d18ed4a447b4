"""Minting grants within an agent's ceiling, and revoking them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nhidel.audit import AuditKeys, event
from nhidel.audit.records import token_fingerprint
from nhidel.config import Config, load_config, unknown_agent
from nhidel.errors import IntegrityError, KeystoreError, NhidelError, PolicyError, UsageError
from nhidel.integrity import state
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.keys.principal import NO_KEY_HINT, Signer, load_signer
from nhidel.ledger.store import Ledger
from nhidel.models import Agent, Grant, check_audience, new_grant_id, refuse_token_as_id
from nhidel.paths import Paths
from nhidel.scopes import Scope, not_covered, parse_scope_arguments
from nhidel.timefmt import format_duration, parse_duration, parse_time
from nhidel.tokens.claims import MAX_LEEWAY
from nhidel.tokens.jws import MAX_TOKEN_LENGTH, mint, token_sha256

MAX_NOT_BEFORE = 30 * 86400
MAX_USES = 1_000_000_000
MAX_REASON = 1000


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """What `nhidel grant` was asked for, as typed (validated by `issue`)."""

    agent: str
    scopes: Sequence[str]
    ttl: str | None = None
    aud: str | None = None
    not_before: str | None = None
    uses: int | None = None
    reason: str | None = None
    # Chosen beforehand (`new_grant_id()`) by an enforcement point that must name the grant
    # where the next command finds it before the grant exists (nhidel.enforce.bound).
    grant_id: str | None = None


def issue(
    paths: Paths, keystore: KeyStore, request: GrantRequest, *, now: int
) -> tuple[Grant, str]:
    """Validate, sign, record and audit one grant; return it and its token.

    Nothing is recorded for a refused grant. The ledger row and the fsynced `grant.issued` record
    are written in one ledger transaction before the token is returned, so a printed token
    always has both.
    """
    config = load_config(paths)
    checked = _checked(config, request, now=now)
    with Ledger(paths) as ledger:
        epoch = ledger.revocation_epoch()
        signer = load_signer(keystore)
        keys = AuditKeys(signer.audit_key, keystore)
        with state.change(paths, keys, ledger, now=now) as step:
            _recheck(step.config(), checked.agent.name, checked.scopes, checked.ttl)
            if ledger.revocation_epoch() != epoch:
                raise PolicyError(
                    "a revocation or key rotation ran while this grant was being minted; "
                    "nothing was issued",
                    "run the grant command again",
                )
            return _mint(step, keystore, signer, checked, config.status_uri, now=now)


def issue_within(
    step: state.Change, keystore: KeyStore, request: GrantRequest, *, now: int
) -> tuple[Grant, str]:
    """`issue` inside a state change the caller holds (an approved `nhidel request`: the grant
    and the answer that delivers it are one change), checked against the sealed config.toml."""
    config = step.config()
    checked = _checked(config, request, now=now)
    signer = load_signer(keystore)
    if signer.audit_key != step.audit_key:
        raise IntegrityError("the keystore changed during the state change", "run it again")
    return _mint(step, keystore, signer, checked, config.status_uri, now=now)


def check(config: Config, request: GrantRequest, *, now: int) -> None:
    """Whether `issue` would mint `request` under `config`: PolicyError (or UsageError) saying
    why not (`approvals` shows a grant request's refusal before anyone approves it)."""
    _checked(config, request, now=now)


@dataclass(frozen=True, slots=True)
class _Checked:
    """A request as `issue` validated it."""

    agent: Agent
    scopes: tuple[Scope, ...]
    ttl: int
    not_before: int
    aud: str | None
    uses: int | None
    reason: str | None
    grant_id: str | None


def _checked(config: Config, request: GrantRequest, *, now: int) -> _Checked:
    if config.principal is None:
        raise KeystoreError("nhidel has no principal yet", NO_KEY_HINT)
    agent = config.agent(request.agent)
    scopes = parse_scope_arguments(request.scopes)
    if not scopes:
        raise UsageError("a grant needs at least one --scope", f"e.g. --scope {agent.allow[0]}")
    _check_ceiling(agent, scopes)
    ttl = parse_duration(request.ttl, what="--ttl") if request.ttl else agent.default_ttl
    if ttl > agent.max_ttl:
        raise PolicyError(
            f"--ttl {format_duration(ttl)} is over agent {agent.name}'s maximum of "
            f"{format_duration(agent.max_ttl)}",
            f"ask for --ttl {format_duration(agent.max_ttl)} or less",
        )
    not_before = _not_before(request.not_before, now)
    aud = _audience(agent, request.aud)
    if request.uses is not None and not 1 <= request.uses <= MAX_USES:
        raise UsageError(f"--uses {request.uses} is out of range", "give a count of 1 or more")
    reason = request.reason
    if reason is not None and len(reason) > MAX_REASON:
        raise UsageError(f"--reason is longer than {MAX_REASON} characters", "shorten it")
    return _Checked(agent, scopes, ttl, not_before, aud, request.uses, reason, request.grant_id)


def _mint(
    step: state.Change,
    keystore: KeyStore,
    signer: Signer,
    checked: _Checked,
    status_uri: str | None,
    *,
    now: int,
) -> tuple[Grant, str]:
    """Sign and record the grant inside `step`: the record first, then the row."""
    if signer.kid not in step.state.kids:
        raise IntegrityError(
            f"the signing key {signer.kid} in {keystore.description} is not one the "
            "sealed state trusts (a key rotation was interrupted, or the keystore was "
            "replaced by an older copy)",
            "run nhidel key rotate --now (a new key), or restore the current keystore",
        )
    # Allocated under the write lock, so two grants never get the same live index.
    status_idx = step.ledger.next_status_idx(reusable_before=now - MAX_LEEWAY)
    grant = Grant(
        id=checked.grant_id or new_grant_id(),
        agent=checked.agent.name,
        scopes=checked.scopes,
        aud=checked.aud,
        issued_at=now,
        not_before=checked.not_before,
        expires_at=checked.not_before + checked.ttl,
        max_uses=checked.uses,
        reason=checked.reason,
        kid=signer.kid,
        status_idx=status_idx,
    )
    claims = _claims(grant, signer.principal, signer.issuer, status_uri)
    token = mint(claims, signer.seed, signer.kid)
    if len(token) > MAX_TOKEN_LENGTH:
        raise UsageError(
            f"the token would be {len(token)} characters, over the {MAX_TOKEN_LENGTH} "
            "verify accepts",
            "grant fewer or shorter scopes, or a shorter --aud",
        )
    # The record first: a crash before the row commits leaves a record that the next
    # command turns into a revoked tombstone (the token was never handed out).
    step.write([event(
        "grant.issued", principal=signer.principal, agent=grant.agent, grant=grant.id,
        scopes=[str(s) for s in grant.scopes], expires_at=grant.expires_at,
        not_before=grant.not_before, aud=grant.aud, max_uses=grant.max_uses,
        reason=grant.reason, kid=signer.kid,
        token_fp=token_fingerprint(signer.audit_key, token),
    )])  # fmt: skip
    step.insert(grant, token_sha256(token))
    return grant, token


def request_like(
    paths: Paths, grant_id: str, *, ttl: str | None, not_before: str | None
) -> tuple[Grant, GrantRequest]:
    """Grant `grant_id` (an id or unique prefix), and a request for a new grant like it: the
    same agent, scopes, audience, reason and use limit (`grant --like`).

    A token cannot be extended, so renewing mints another. Only the times are the new grant's
    own: `not_before` (default now) and `ttl`, by default as long as the original lived, capped
    by the agent's maximum TTL today. `issue` then checks the request like any other, against
    the agent's ceiling as it is now.
    """
    refuse_token_as_id(grant_id)
    with Ledger(paths) as ledger:
        (original,) = ledger.resolve([grant_id])
    if ttl is None:
        agent = load_config(paths).agent(original.agent)
        ttl = format_duration(min(original.expires_at - original.not_before, agent.max_ttl))
    request = GrantRequest(
        agent=original.agent,
        scopes=[str(scope) for scope in original.scopes],
        ttl=ttl,
        aud=original.aud,
        not_before=not_before,
        uses=original.max_uses,
        reason=original.reason,
    )
    return original, request


def replace_with(
    paths: Paths, keystore: KeyStore, old: Grant, new: Grant, *, now: int
) -> Revocation:
    """Revoke grant `old` (reason `replaced by <new id>`) once `new`, minted like it, has been
    delivered; a failure says that the new grant stands and the old one is still to revoke."""
    try:
        return revoke(paths, ids=[old.id], reason=f"replaced by {new.id}", now=now,
                      keystore=keystore)  # fmt: skip
    except NhidelError as failed:
        raise type(failed)(
            f"granted {new.id}, but could not revoke {old.id}, which it replaces: {failed.message}",
            f"once that is fixed: nhidel revoke {old.id} --reason 'replaced by {new.id}'",
        ) from None


def _claims(grant: Grant, principal: str, issuer: str, status_uri: str | None) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": principal,
        "act": {"sub": grant.agent},
        "scope": grant.scope_claim,
        "iat": grant.issued_at,
        "nbf": grant.not_before,
        "exp": grant.expires_at,
        "jti": grant.id,
    }
    if grant.aud is not None:
        claims["aud"] = grant.aud
    if grant.max_uses is not None:
        claims["max_uses"] = grant.max_uses
    if status_uri is not None and grant.status_idx is not None:
        claims["status"] = {"status_list": {"idx": grant.status_idx, "uri": status_uri}}
    return claims


def _check_ceiling(agent: Agent, scopes: Sequence[Scope]) -> None:
    beyond = not_covered(agent.allow, scopes)
    if beyond:
        allowed = " ".join(str(s) for s in agent.allow)
        raise PolicyError(
            f"scope {beyond[0]} is beyond agent {agent.name}'s ceiling",
            f"ask only for scopes within: {allowed}",
        )


def _recheck(current: Config, name: str, scopes: Sequence[Scope], ttl: int) -> None:
    """Inside the write lock, against the sealed config.toml: the agent may have been removed
    or narrowed meanwhile, or its ceiling edited by hand."""
    if name not in current.agents:
        raise PolicyError(
            f"agent {name!r} was removed while this grant was being minted",
            "nothing was issued; register the agent again if that was a mistake",
        )
    agent = current.agents[name]
    _check_ceiling(agent, scopes)
    if ttl > agent.max_ttl:
        raise PolicyError(
            f"agent {name}'s maximum TTL changed while minting",
            "nothing was issued; run the grant command again",
        )


def _not_before(text: str | None, now: int) -> int:
    if text is None:
        return now
    when = parse_time(text, now=now, what="--not-before")
    if when < now:
        raise UsageError(f"--not-before {text!r} is in the past", "leave it out to start now")
    if when > now + MAX_NOT_BEFORE:
        raise UsageError(
            f"--not-before {text!r} is more than 30 days ahead", "choose a time within 30 days"
        )
    return when


def _audience(agent: Agent, requested: str | None) -> str | None:
    if requested is not None:
        check_audience(requested)
    if not agent.audiences:
        return requested
    if requested is None:
        if len(agent.audiences) == 1:
            return agent.audiences[0]
        raise PolicyError(
            f"agent {agent.name} may only be granted for audiences: {', '.join(agent.audiences)}",
            "pick one with --aud",
        )
    if requested not in agent.audiences:
        raise PolicyError(
            f"audience {requested!r} is beyond agent {agent.name}'s ceiling",
            f"use one of: {', '.join(agent.audiences)}",
        )
    return requested


@dataclass(frozen=True, slots=True)
class Revocation:
    revoked: list[str]  # newly revoked
    already: list[str]  # were revoked before (not an error)


def live_grants(
    paths: Paths, keystore: KeyStore, *, now: int, agent: str | None = None, kid: str | None = None
) -> list[Grant]:
    """The live grants (of `agent`, or signed by `kid`) as they stand, changing nothing: what a
    revocation of them would take, to say so before asking. An agent nhidel does not know is
    NotFoundError, as it is for `revoke`."""
    keys = AuditKeys.of(keystore)
    with Ledger(paths) as ledger:
        sealed = state.read_checked(paths, keys, ledger)
        found = state.live_grants(ledger, sealed, keys.seal_key, now=now, agent=agent, kid=kid)
        if agent is not None and not found:
            check_known_agent(load_config(paths), ledger, agent)
    return found


def check_known_agent(config: Config, ledger: Ledger, name: str) -> None:
    """NotFoundError unless `name` is registered or has grants in the ledger: a removed agent's
    grants stay there, so filtering and revoking by its name still make sense."""
    if name not in config.agents and not ledger.has_agent(name):
        raise unknown_agent(name)


def revoke(
    paths: Paths,
    *,
    ids: Sequence[str] = (),
    agent: str | None = None,
    everything: bool = False,
    reason: str | None,
    now: int,
    keystore: KeyStore | None = None,
) -> Revocation:
    """Revoke by ids (all resolved first: one bad id revokes nothing), or every live grant
    (of `agent`, or all of them): used-up, expired and revoked grants are left as they are."""
    for given in ids:
        refuse_token_as_id(given)  # never quoted back in "no grant ..."
    if reason is not None and len(reason) > MAX_REASON:
        raise UsageError(f"--reason is longer than {MAX_REASON} characters", "shorten it")
    if sum((bool(ids), agent is not None, everything)) != 1:
        raise UsageError(
            "give grant ids, or --agent NAME, or --all (exactly one of them)",
            "e.g. nhidel revoke g1a2b3c4d5, or nhidel revoke --all --yes",
        )
    config = load_config(paths)
    principal = config.principal
    keys = AuditKeys.of(keystore or open_keystore(paths))
    with Ledger(paths) as ledger:
        targets = [grant.id for grant in ledger.resolve(ids)] if ids else []
        with state.change(paths, keys, ledger, now=now) as step:
            if not ids:
                live = state.live_grants(ledger, step.state, keys.seal_key, now=now, agent=agent)
                if agent is not None and not live:
                    check_known_agent(config, ledger, agent)
                targets = [grant.id for grant in live]
                # Grants minted while this runs are refused (see `issue`).
                ledger.bump_revocation_epoch()
            # What counts is the sealed state, not a row's revoked_at (a row can be edited).
            newly = [t for t in targets if t not in step.state.revoked]
            grants = [g for g in (ledger.get(grant_id) for grant_id in newly) if g is not None]
            if grants:
                step.write([state.revocation(g, principal=principal, reason=reason)
                            for g in grants])  # fmt: skip
                step.revoke(grants, now=now, reason=reason)
    fresh = set(newly)
    return Revocation(newly, [t for t in targets if t not in fresh])
