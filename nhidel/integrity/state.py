"""The sealed state: what verify trusts, and how every change moves ledger, log and mark forward.

An agent that can write nhidel's files could otherwise un-revoke a grant, reset a use count or
bring back a key by editing or restoring ledger.db. So verify trusts no mutable row for those:
- each grant row is sealed over what never changes (id, agent, scopes, times, kid, token hash),
  so an edited row is refused;
- revocations, uses and the trusted key ids live in one sealed document in the ledger (the
  *sealed state*), whose `seq` names the last audit record it includes;
- the keystore's high-water mark (nhidel.audit.writer.Mark) carries `state_seq`, the state's
  seq when the mark last moved. A state older than that was rolled back: `integrity`;
- the same document holds a digest of config.toml's principal, keys and agents (a widened
  ceiling is refused), and the trusted key ids must be exactly those the keystore pins (a
  keystore put back from an older copy is refused).
The document holds only what a verifier can still be asked about (grants not yet expired by
more than the largest leeway), so it stays small however long the ledger grows.

Every state change runs in `change()`: the log session (its flock, checked against the mark),
then the ledger's write transaction; records are written and fsynced first, then applied to
the ledger and committed, and only then does the mark move. A crash at any point leaves either
nothing, or records after the mark that the next writer finishes toward the more restrictive
state (`finish_residue`), sealing what it did in a `state.repaired` record. Lock order is
always config.lock, then audit.lock, then the ledger.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from nhidel.audit.records import BadRecord, canonical, check_seal, event, seal_line
from nhidel.audit.writer import (
    STATE_EVENTS,
    AuditKeys,
    AuditLog,
    Mark,
    Session,
    log_head,
    read_mark,
)
from nhidel.ceilings import covers_grant, narrowing_of
from nhidel.config import (
    Config,
    load_config,
    save_config,
    with_agent,
    without_agent,
    without_route,
    without_secret,
    without_server,
)
from nhidel.errors import IntegrityError, NhidelError
from nhidel.models import Agent, Grant
from nhidel.paths import Paths
from nhidel.scopes import parse_scopes
from nhidel.tokens.claims import MAX_LEEWAY

if TYPE_CHECKING:
    from nhidel.keys.keystore import KeyStore
    from nhidel.ledger.store import Ledger

STATE_FORMAT = 1
REPAIR_HINT = "run nhidel repair (nhidel repair --accept-loss if files were lost for good)"


@dataclass(slots=True)
class SealedState:
    """Revocations, uses and trusted key ids, as of audit record `seq`."""

    seq: int = 0
    kids: list[str] = field(default_factory=list)
    config: str | None = None  # sha256 of config.toml's sealed part (see config_digest)
    parts: dict[str, str] = field(default_factory=dict)  # entry -> its sha256 (names an edit)
    revoked: dict[str, int] = field(default_factory=dict)  # grant id -> its expiry
    used: dict[str, list[int]] = field(default_factory=dict)  # grant id -> [uses, expiry]
    spent: dict[str, int] = field(default_factory=dict)  # one-time approval id -> its lapse
    legacy: bool = False  # no sealed state yet (a ledger written by nhidel 0.1)

    def uses(self, grant_id: str) -> int:
        entry = self.used.get(grant_id)
        return entry[0] if entry else 0

    def revoke(self, grant_id: str, expires_at: int) -> None:
        self.revoked[grant_id] = expires_at

    def use(self, grant_id: str, expires_at: int) -> None:
        self.used[grant_id] = [self.uses(grant_id) + 1, expires_at]

    def seal(self, key: bytes, *, now: int) -> bytes:
        """The stored document, forgetting grants expired past the largest leeway."""
        horizon = now - MAX_LEEWAY
        body = {
            "format": STATE_FORMAT,
            "seq": self.seq,
            "kids": sorted(self.kids),
            "config": self.config,
            "parts": self.parts,
            "revoked": {g: e for g, e in self.revoked.items() if e > horizon},
            "used": {g: u for g, u in self.used.items() if u[1] > horizon},
        }
        spent = {a: lapses for a, lapses in self.spent.items() if lapses > horizon}
        if spent:  # (absent when none, so a state from before approvals reads as it did)
            body["spent"] = spent
        return seal_line(canonical(body), _derived(key, b"state"))


def open_state(data: bytes | None, audit_key: bytes) -> SealedState:
    """The sealed state from its stored bytes; IntegrityError if it was edited or forged."""
    if data is None:
        return SealedState(legacy=True)
    try:
        body = json.loads(check_seal(data, _derived(audit_key, b"state")))
        if body.get("format") != STATE_FORMAT:
            raise ValueError("format")
        return SealedState(
            seq=int(body["seq"]), kids=list(body["kids"]), config=body["config"],
            parts=dict(body.get("parts") or {}), revoked=dict(body["revoked"]),
            used=dict(body["used"]), spent=dict(body.get("spent") or {}),
        )  # fmt: skip
    except (BadRecord, ValueError, KeyError, TypeError):
        raise IntegrityError(
            "the ledger's sealed state was edited or forged", REPAIR_HINT
        ) from None


def row_seal(audit_key: bytes, grant: Grant, token_sha256: str) -> str:
    """The seal of a grant row over everything in it that never changes."""
    optional = (grant.aud, grant.max_uses, grant.reason, grant.status_idx)
    aud, max_uses, reason, status_idx = ("" if v is None else v for v in optional)
    # One f-string, not a join over a generator: verify seals a row per fresh token.
    text = (
        f"{grant.id}\x1f{grant.agent}\x1f{grant.scope_claim}\x1f{aud}\x1f{grant.issued_at}"
        f"\x1f{grant.not_before}\x1f{grant.expires_at}\x1f{max_uses}\x1f{reason}\x1f"
        f"{grant.kid}\x1f{token_sha256}\x1f{status_idx}"
    )
    return hmac.digest(_derived(audit_key, b"row"), text.encode("utf-8", "surrogatepass"),
                       "sha256").hex()  # fmt: skip


def row_is_sealed(audit_key: bytes, grant: Grant, token_sha256: str, seal: str | None) -> bool:
    return seal is not None and hmac.compare_digest(row_seal(audit_key, grant, token_sha256), seal)


def live_grants(
    ledger: Ledger,
    state: SealedState,
    audit_key: bytes,
    *,
    now: int,
    agent: str | None = None,
    kid: str | None = None,
    spared: Callable[[Grant], bool] | None = None,
) -> list[Grant]:
    """The grants (of `agent`, signed by `kid`) that could still be used at `now`, pending ones
    included: not expired and, as the sealed state says, neither revoked nor used up; less
    those `spared` spares. A row is believed used up or spared only when it matches its seal:
    an edited row never hides a grant from a revocation."""
    found = []
    for grant_id in ledger.live_ids(now=now, agent=agent, kid=kid):
        row = None if grant_id in state.revoked else ledger.lookup(grant_id)
        if row is None:
            continue
        grant, token_hash, seal = row
        if row_is_sealed(audit_key, grant, token_hash, seal):
            used_up = grant.max_uses is not None and state.uses(grant_id) >= grant.max_uses
            if used_up or (spared is not None and spared(grant)):
                continue
        found.append(grant)
    return found


def revocation(grant: Grant, *, principal: str | None, reason: str | None) -> dict[str, Any]:
    """The `grant.revoked` record of `grant`: every revocation carries the grant's agent and
    scopes, so `audit tail --agent` and `--event` find it whatever revoked it."""
    return event("grant.revoked", principal=principal, agent=grant.agent, grant=grant.id,
                 scopes=[str(s) for s in grant.scopes], expires_at=grant.expires_at,
                 reason=reason)  # fmt: skip


def config_digest(config: Config) -> str:
    """What seals config.toml: its principal, issuer, public keys, agents' ceilings, the status
    list settings (where revocations are published and looked up), and where secrets may go
    (upstream secrets' names, MCP server registrations, routes, a route's CA included)."""
    body: dict[str, Any] = {
        "principal": config.principal,
        "issuer": config.issuer,
        "keys": config.keys,
        "agents": {name: agent.to_json() for name, agent in sorted(config.agents.items())},
        "status_uri": config.status_uri,
        "status_dir": config.status_dir,
    }
    # Present only when set, so a config.toml from before registrations seals as it did.
    if config.secrets:
        body["secrets"] = {n: e.to_json() for n, e in sorted(config.secrets.items())}
    if config.servers:
        body["mcp"] = {n: s.to_json() for n, s in sorted(config.servers.items())}
    if config.routes:
        body["routes"] = {n: r.sealed_json() for n, r in sorted(config.routes.items())}
    return hashlib.sha256(canonical(body)).hexdigest()


def config_parts(config: Config) -> dict[str, str]:
    """A digest per entry of config.toml, so a refusal can name what was edited."""

    def digest(value: Any) -> str:
        return hashlib.sha256(canonical({"v": value})).hexdigest()

    parts = {
        "the principal, keys and settings": digest(
            [config.principal, config.issuer, config.keys, config.status_uri, config.status_dir]
        )
    }
    parts.update({f"agent {n!r}": digest(a.to_json()) for n, a in config.agents.items()})
    parts.update({f"secret {n!r}": digest(e.to_json()) for n, e in config.secrets.items()})
    parts.update({f"MCP server {n!r}": digest(s.to_json()) for n, s in config.servers.items()})
    parts.update({f"route {n!r}": digest(r.sealed_json()) for n, r in config.routes.items()})
    return parts


def seal_config(state: SealedState, config: Config) -> None:
    """Make `config` the one the sealed state trusts."""
    state.config = config_digest(config)
    state.parts = config_parts(config)


def changed_entries(config: Config, state: SealedState) -> list[str]:
    """The entries of `config` that differ from their sealed versions (empty when the sealed
    state predates per-entry digests)."""
    if not state.parts:
        return []
    now = config_parts(config)
    return sorted(k for k in now.keys() | state.parts.keys() if now.get(k) != state.parts.get(k))


def check_fresh(state: SealedState, mark: Mark | None, head_seq: int) -> None:
    """The sealed state is neither older than the mark nor newer than the log."""
    if mark is not None and state.seq < mark.state_seq:
        raise IntegrityError(
            f"the ledger is older than the keystore's high-water mark (its sealed state is at "
            f"audit record {state.seq}, the mark says {mark.state_seq}): it was rolled back, "
            "replaced or deleted",
            REPAIR_HINT,
        )
    if state.seq > head_seq:
        raise IntegrityError(
            f"the ledger includes audit record {state.seq} but the audit log ends at "
            f"{head_seq}: the log was truncated or rolled back",
            REPAIR_HINT,
        )


def read_checked(
    paths: Paths,
    keys: AuditKeys,
    ledger: Ledger,
    *,
    mark: Mark | None = None,
    head: int | None = None,
) -> SealedState:
    """The sealed state, read without taking any lock, checked against the keystore's mark
    and the log's head (read here unless given): for readers that decide something."""
    if mark is None and keys.keystore is not None:
        mark = read_mark(keys.keystore)
    if head is None:
        head = log_head(paths)
    state = open_state(ledger.sealed_state(), keys.seal_key)
    if state.legacy and mark is not None:
        raise IntegrityError(
            "the ledger has no sealed state (replaced, deleted, or written by nhidel 0.1)",
            REPAIR_HINT,
        )
    if mark is not None and head < mark.seq:
        raise IntegrityError(
            f"the audit log ends at seq {head} but the keystore's high-water mark is seq "
            f"{mark.seq}: records were deleted, or the log was rolled back",
            REPAIR_HINT,
        )
    check_fresh(state, mark, head)
    return state


def sealed_config(paths: Paths, keys: AuditKeys) -> Config:
    """config.toml, checked against the sealed state (itself checked fresh): for commands that
    act on a setting outside a state change (publishing after a revocation)."""
    from nhidel.ledger.store import Ledger

    with Ledger(paths) as ledger:
        sealed = read_checked(paths, keys, ledger)
    return check_config(load_config(paths), sealed, paths)


def check_config(config: Config, state: SealedState, paths: Paths) -> Config:
    """`config` as sealed, or IntegrityError naming config.toml and the entries that differ."""
    if state.config is not None and config_digest(config) != state.config:
        entries = changed_entries(config, state)
        what = (
            ", ".join(entries)
            if entries
            else "an agent's ceiling, a registration, a key or the principal"
        )
        raise IntegrityError(
            f"{paths.config_file} differs from its sealed version ({what}: edited, added, "
            "removed or restored from an older copy)",
            "restore it from a backup, or undo the edit; nhidel changes it only through "
            "its own commands",
        )
    return config


class Change:
    """One state change in progress: write its records, then change the ledger and `state`."""

    def __init__(
        self, paths: Paths, keys: AuditKeys, session: Session, ledger: Ledger, state: SealedState
    ) -> None:
        self.paths = paths
        self.keys = keys
        self.session = session
        self.ledger = ledger
        self.state = state
        self.committed = False

    @property
    def audit_key(self) -> bytes:
        return self.keys.seal_key

    def config(self) -> Config:
        """config.toml, checked against its seal."""
        return check_config(load_config(self.paths), self.state, self.paths)

    def write(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write records now (fsynced); their effects must follow before the change ends."""
        return self.session.write(events)

    def insert(self, grant: Grant, token_sha256: str, *, revoked_reason: str | None = None) -> None:
        seal = row_seal(self.audit_key, grant, token_sha256)
        self.ledger.insert(grant, token_sha256, seal, revoked_reason=revoked_reason)

    def revoke(self, grants: list[Grant], *, now: int, reason: str | None) -> None:
        self.ledger.revoke([g.id for g in grants], now=now, reason=reason)
        for grant in grants:
            self.state.revoke(grant.id, grant.expires_at)

    def use(self, grant: Grant) -> None:
        self.ledger.count_use(grant.id)
        self.state.use(grant.id, grant.expires_at)

    def save_config(self, config: Config) -> None:
        save_config(self.paths, config)
        seal_config(self.state, config)

    def commit(self, *, now: int) -> None:
        self.state.seq = self.session.head_seq
        self.state.legacy = False
        self.ledger.set_sealed_state(self.state.seal(self.audit_key, now=now))
        self.ledger.commit()
        self.session.state_seq = self.state.seq
        self.committed = True


@contextmanager
def change(paths: Paths, keys: AuditKeys, ledger: Ledger, *, now: int) -> Iterator[Change]:
    """Hold the log and the ledger for one state change; commit it when the block ends.

    Whatever a crash left unfinished is finished first (see `finish_residue`).
    """
    log = AuditLog(paths, keys)
    with log.session() as session, ledger.transaction():
        step = _begin(paths, keys, session, ledger, now=now)
        yield step
        if session.written and not step.committed:
            step.commit(now=now)


def _begin(paths: Paths, keys: AuditKeys, session: Session, ledger: Ledger, *, now: int) -> Change:
    """Inside the log session and the ledger transaction: the checked state, residue done."""
    state = current(ledger, keys.seal_key, session)
    if state.legacy and session.mark is not None:
        session.write([event("state.repaired", reason="sealed the state of a ledger written "
                             "by an older nhidel")])  # fmt: skip
    finish_residue(paths, keys, session, ledger, state, now=now)
    if keys.keystore is not None and not state.legacy:
        check_keys(state, pinned_kids(keys.keystore))
    return Change(paths, keys, session, ledger, state)


def pinned_kids(keystore: KeyStore) -> set[str]:
    trust = keystore.read("trust")
    return set(trust["keys"]) if trust else set()


def check_keys(state: SealedState, pinned: set[str]) -> None:
    """The keystore pins exactly the keys the sealed state trusts: a keystore put back from
    an older copy (a key dropped by `key rotate --now` pinned again) is refused."""
    if pinned != set(state.kids):
        raise IntegrityError(
            "the keystore's pinned keys are not the ones the ledger's sealed state trusts "
            "(the keystore was replaced by an older copy?)",
            "restore the current keystore; if it is lost, see nhidel repair --accept-loss",
        )


def residue_finisher(paths: Paths, keys: AuditKeys) -> Callable[[Session], None]:
    """For writers of decisions (nhidel.audit.AuditLog's `finish_residue`): finish what a crash
    left in the log, in its own ledger transaction, before their records are written."""

    def finish(session: Session) -> None:
        from nhidel.ledger.store import Ledger

        now = int(time.time())
        with Ledger(paths) as ledger, ledger.transaction():
            step = _begin(paths, keys, session, ledger, now=now)
            if session.written:
                step.commit(now=now)

    return finish


def audit_log(paths: Paths, keys: AuditKeys) -> AuditLog:
    """The writer for records that change no state (decisions, publishing, pruning)."""
    return AuditLog(paths, keys, finish_residue=residue_finisher(paths, keys))


def current(ledger: Ledger, audit_key: bytes, session: Session) -> SealedState:
    """The sealed state, checked fresh against the mark and the log (IntegrityError if not)."""
    state = open_state(ledger.sealed_state(), audit_key)
    mark = session.mark
    if state.legacy and (mark is None or mark.state_seq == 0):
        return adopt(ledger, audit_key, session)
    check_fresh(state, mark, session.head_seq)
    return state


def adopt(ledger: Ledger, audit_key: bytes, session: Session) -> SealedState:
    """A first sealed state for a new home (or one made by nhidel 0.1, whose mark has no
    `state_seq`): the rows as they stand, sealed from now on."""
    state = SealedState(seq=0, legacy=True)
    keystore = session.log.keys.keystore
    trust = keystore.read("trust") if keystore is not None else None
    state.kids = sorted(trust["keys"]) if trust else []
    config = load_config(session.log.paths)
    if config.principal is not None:
        seal_config(state, config)
    for grant, token_hash, seal in list(ledger.all_rows()):
        if seal is None:
            ledger.reseal(grant.id, row_seal(audit_key, grant, token_hash))
        if grant.revoked_at is not None:
            state.revoke(grant.id, grant.expires_at)
        if grant.uses:
            state.used[grant.id] = [grant.uses, grant.expires_at]
    return state


def finish_residue(
    paths: Paths, keys: AuditKeys, session: Session, ledger: Ledger, state: SealedState, *, now: int
) -> None:
    """Finish the state changes a crash left in the log but not in the ledger (records after
    the mark, newer than the sealed state), toward the more restrictive state, and seal what
    was done. A grant whose row never committed is kept as a revoked tombstone (its token was
    never handed out); a logged revocation or use is applied; a removed agent stays removed;
    an updated agent keeps at least the narrowing asked for, and loses the grants it no longer
    covers; an added agent or a rotated key counts only if config.toml or the keystore shows it."""
    pending = [r for r in session.residue
               if r.get("event") in STATE_EVENTS and r["seq"] > state.seq]  # fmt: skip
    if not pending:
        return
    one_crash_only(session.residue)
    step = Change(paths, keys, session, ledger, state)
    applied: list[int] = []
    void: list[int] = []
    for record in pending:
        if _finish_one(step, record, now=now):
            applied.append(record["seq"])
        else:
            void.append(record["seq"])
    step.write([event("state.repaired", reason="finished what an interrupted command left",
                      applied=applied, void=void)])  # fmt: skip


def one_crash_only(residue: list[dict[str, Any]]) -> None:
    """Records after the mark are what one crash left: the records of one command, each later
    command (whose own repair crashed too) opening with the `state.repaired` that finishes
    them. Records of several commands there, when any changed state, mean the keystore and
    the ledger were put back from an older copy: IntegrityError."""
    if not any(r.get("event") in STATE_EVENTS for r in residue):
        return  # decisions alone: nothing to finish, nothing to hide
    commands: list[list[dict[str, Any]]] = []
    for record in residue:
        if commands and commands[-1][0].get("sid") == record.get("sid"):
            commands[-1].append(record)
        else:
            commands.append([record])
    for later in commands[1:]:
        opening = next((r for r in later if r.get("event") not in _LOG_OWN), {})
        if opening.get("event") != "state.repaired":
            raise IntegrityError(
                f"the audit log holds the records of {len(commands)} commands after the "
                "keystore's high-water mark, which no crash leaves: the keystore and the "
                "ledger were put back from an older copy",
                "restore the current keystore and ledger; if they are lost for good, run "
                "nhidel repair --accept-loss",
            )


_LOG_OWN = frozenset({"log.recovered", "log.rotated"})  # what a session may write first


def _finish_one(step: Change, record: dict[str, Any], *, now: int) -> bool:
    kind = record["event"]
    grant_id = record.get("grant")
    ledger, state = step.ledger, step.state
    if kind == "grant.issued" and isinstance(grant_id, str):
        if ledger.get(grant_id) is None:
            step.insert(tombstone(record), "", revoked_reason="interrupted")
        state.revoke(grant_id, int(record.get("expires_at") or now))
        ledger.revoke([grant_id], now=now, reason="interrupted")
        return True
    if kind == "grant.revoked" and isinstance(grant_id, str):
        ledger.revoke([grant_id], now=now, reason=record.get("reason"))
        state.revoke(grant_id, int(record.get("expires_at") or now + MAX_LEEWAY))
        return True
    if kind == "approval.used" and isinstance(record.get("approval"), str):
        state.spent[record["approval"]] = int(record.get("lapses_at") or now + MAX_LEEWAY)
        return True
    if kind == "grant.used" and isinstance(grant_id, str):
        ledger.count_use(grant_id)
        state.use(grant_id, int(record.get("expires_at") or now + MAX_LEEWAY))
        return True
    if kind in _CONFIG_EVENTS:
        return _finish_config(step, record)
    if kind in ("agent.added", "agent.removed"):
        finished = _finish_config(step, record)
        if kind == "agent.removed":
            _revoke_orphans(step, record, now=now)
        return finished
    if kind == "agent.updated":
        return _finish_update(step, record, now=now)
    if kind in ("key.created", "key.rotated"):
        return _finish_key(step, record)
    return False  # a repair's own record: what it listed was committed with it, or is here


# Changes of config.toml alone: they count once the file shows them, and a removal counts anyway
# (a secret, server or route removed stays removed: nothing may go where it no longer names).
_CONFIG_EVENTS = frozenset({
    "config.updated", "secret.added", "secret.removed", "mcp.added", "mcp.removed", "route.added",
    "route.removed",
})  # fmt: skip
_REMOVALS: dict[str, Callable[[Config, str], Config]] = {
    "agent.removed": without_agent, "secret.removed": without_secret,
    "mcp.removed": without_server, "route.removed": without_route,
}  # fmt: skip
_REMOVED_NAME = {"secret.removed": "secret", "mcp.removed": "server", "route.removed": "route"}


def _finish_key(step: Change, record: dict[str, Any]) -> bool:
    """A key change counts once the keystore's signing entry holds the new key (rotation
    writes it first); the public pins it had not written yet are written from the record."""
    keystore = step.keys.keystore
    if keystore is None:
        return False
    signing = keystore.read("signing")
    trust = keystore.read("trust")
    if signing is None or trust is None or signing.get("kid") != record.get("kid"):
        # The keystore never took the new key. A key rotated out as compromised is dropped
        # all the same (restrictive: signing then waits for another rotation).
        old = record.get("old_kid")
        if record.get("compromised") is True and trust is not None and old in trust["keys"]:
            trust = {**trust, "keys": {k: v for k, v in trust["keys"].items() if k != old}}
            keystore.write("trust", trust)
            step.state.kids = sorted(trust["keys"])
            _revoke_signed_by(step, str(old), principal=record.get("principal"))
        return False
    pinned = record.get("trusted")
    if record["kid"] not in trust["keys"] and isinstance(pinned, dict):
        trust = {**trust, "keys": pinned}
        keystore.write("trust", trust)
    step.state.kids = sorted(trust["keys"])
    config = load_config(step.paths)
    if record.get("config_sha256") == config_digest(config):
        seal_config(step.state, config)
    return True


def _revoke_signed_by(step: Change, kid: str, *, principal: str | None) -> None:
    """Every grant a compromised key signed that could still be used: revoked and logged."""
    now = int(time.time())
    grants = live_grants(step.ledger, step.state, step.audit_key, now=now, kid=kid)
    reason = "signing key compromised"
    if grants:
        step.write([revocation(g, principal=principal, reason=reason) for g in grants])
        step.revoke(grants, now=now, reason=reason)


def _finish_config(step: Change, record: dict[str, Any]) -> bool:
    """A config.toml change counts if the file shows it; a removed agent is removed anyway."""
    config = load_config(step.paths)
    digest = config_digest(config)
    if digest == record.get("config_sha256"):
        seal_config(step.state, config)
        return True
    if digest != step.state.config:
        check_config(config, step.state, step.paths)  # edited besides: refuse, naming it
    removed = _REMOVALS.get(record["event"])
    name = record.get(_REMOVED_NAME.get(record["event"], "agent"))
    if removed is not None and isinstance(name, str):
        step.save_config(removed(config, name))  # removing is restrictive
        return True
    return False


def _revoke_orphans(step: Change, record: dict[str, Any], *, now: int) -> None:
    """A removed agent keeps no live grant, even if the revocations that followed its record
    were torn off."""
    name = record.get("agent")
    grants = live_grants(step.ledger, step.state, step.audit_key, now=now, agent=name)
    if grants:
        principal = record.get("principal")
        step.write([revocation(g, principal=principal, reason="agent removed") for g in grants])
        step.revoke(grants, now=now, reason="agent removed")


NARROWED = "ceiling narrowed"  # the revocation reason of a grant an agent update no longer covers


def _finish_update(step: Change, record: dict[str, Any], *, now: int) -> bool:
    """An agent update counts whole once config.toml shows it. Before that, only its narrowing
    is applied (a widening counts only once written, as an added agent does). Either way the
    live grants the resulting ceiling no longer covers are revoked, judged as of the update's
    own time, even if the revocations that followed its record were torn off."""
    config = load_config(step.paths)
    digest = config_digest(config)
    name = record.get("agent")
    current = config.agents.get(name) if isinstance(name, str) else None
    if digest == record.get("config_sha256"):
        seal_config(step.state, config)
    else:
        if digest != step.state.config:
            check_config(config, step.state, step.paths)  # edited besides: refuse, naming it
        asked = _asked_ceiling(record, current)
        if current is None or asked is None or narrowing_of(current, asked) == current:
            return False
        current = narrowing_of(current, asked)
        step.save_config(with_agent(config, current))
    if current is not None:
        ceiling, as_of = current, record.get("as_of")
        when = as_of if type(as_of) is int else now
        doomed = live_grants(step.ledger, step.state, step.audit_key, now=now, agent=ceiling.name,
                             spared=lambda g: covers_grant(ceiling, g, now=when))  # fmt: skip
        if doomed:
            principal = record.get("principal")
            step.write([revocation(g, principal=principal, reason=NARROWED) for g in doomed])
            step.revoke(doomed, now=now, reason=NARROWED)
    return True


def _asked_ceiling(record: dict[str, Any], current: Agent | None) -> Agent | None:
    """The ceiling an `agent.updated` record asked for (None if the record cannot say)."""
    if current is None:
        return None
    try:
        return Agent(current.name, parse_scopes(record["scopes"]), int(record["max_ttl"]),
                     int(record["default_ttl"]), tuple(str(a) for a in record["aud"]),
                     current.created_at, parse_scopes(record.get("approve") or []))  # fmt: skip
    except (KeyError, TypeError, ValueError, NhidelError):
        return None


def tombstone(record: dict[str, Any]) -> Grant:
    """The grant a sealed grant.issued record describes, for a row that must be revoked."""
    from nhidel.scopes import parse_scopes

    expires = int(record.get("expires_at") or 0)
    return Grant(
        id=record["grant"], agent=str(record.get("agent") or "?"),
        scopes=parse_scopes(record.get("scopes") or []), aud=record.get("aud"),
        issued_at=int(record.get("not_before") or expires), not_before=int(
            record.get("not_before") or expires), expires_at=expires,
        max_uses=record.get("max_uses"), reason=record.get("reason"),
        kid=str(record.get("kid") or ""),
    )  # fmt: skip


def derived_key(audit_key: bytes, purpose: bytes) -> bytes:
    """The key for one purpose (nhidel.integrity.approvals seals requests and answers)."""
    return _derived(audit_key, purpose)


@cache  # (verify seals a row per fresh token: derive once per key)
@lru_cache(maxsize=8)
def _derived(audit_key: bytes, purpose: bytes) -> bytes:
    """A key for one purpose, so a sealed row, state or record can never pass for another.
    Remembered: verify seals a row per fresh token, and the audit key is in memory anyway."""
    return hmac.digest(audit_key, b"nhidel-ledger-" + purpose, "sha256")
