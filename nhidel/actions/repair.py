"""`nhidel repair`: finish what a crash left, put back what the log holds, or accept a loss.

Always toward the more restrictive state, and always sealed in the log:
- a crash's residue (records after the mark that the ledger lacks) is finished as every
  writer would (nhidel.integrity.state.finish_residue);
- a ledger rolled back while the log kept its records gets them back: every revocation and use
  the sealed log holds is applied again, and grants the ledger lost come back as revoked
  tombstones (`state.repaired`);
- with `accept_loss`, a log or a ledger lost for good is acknowledged (`log.loss_accepted`):
  nhidel writes again from what is left, every grant that could still be used is revoked (its
  state can no longer be established), and the rows are sealed afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nhidel.audit import AuditKeys, event
from nhidel.audit.reader import lines
from nhidel.audit.records import BadRecord, open_line
from nhidel.audit.writer import AuditLog
from nhidel.config import load_config
from nhidel.errors import IntegrityError
from nhidel.fsutil import exclusive_lock
from nhidel.integrity import state
from nhidel.keys.keystore import KeyStore
from nhidel.ledger.store import Ledger
from nhidel.models import Grant
from nhidel.paths import Paths


@dataclass(slots=True)
class RepairReport:
    finished: list[int] = field(default_factory=list)  # residue records finished
    replayed: int = 0  # records applied again to a rolled-back ledger
    loss: list[str] = field(default_factory=list)  # what was accepted as lost
    revoked: list[str] = field(default_factory=list)  # grants revoked because of a loss

    @property
    def changed(self) -> bool:
        return bool(self.finished or self.replayed or self.loss or self.revoked)


def repair(paths: Paths, keystore: KeyStore, *, accept_loss: bool, now: int) -> RepairReport:
    """Bring log, ledger and mark back in step; raise IntegrityError (with the hint to accept
    the loss) when something was lost for good and `accept_loss` is not given."""
    keys = AuditKeys.of(keystore)
    report = RepairReport()
    log = AuditLog(paths, keys)
    with exclusive_lock(paths.config_lock), Ledger(paths) as ledger:
        with log.session(accept_loss=accept_loss) as session, ledger.transaction():
            if log.loss is not None:
                report.loss.append(log.loss)
            sealed, stale = _sealed_state(ledger, keys.seal_key, session)
            if stale is not None:
                if sealed is not None and _log_complete(paths, keys.seal_key, sealed):
                    stale = None  # rolled back, but the log holds all it lost: replay it
                elif not accept_loss:
                    raise IntegrityError(stale, LOSS_HINT)
                else:
                    report.loss.append(stale)
            sealed = sealed or state.SealedState()
            step = state.Change(paths, keys, session, ledger, sealed)
            state.finish_residue(paths, keys, session, ledger, sealed, now=now)
            report.finished = [r["seq"] for r in session.residue if r["seq"] > sealed.seq]
            if report.loss:
                _purge_malformed(ledger)
            if report.loss or sealed.seq < (session.mark.state_seq if session.mark else 0):
                report.replayed = _replay(step, paths, keys.seal_key, now=now)
            if report.loss:
                report.revoked = _revoke_live(step, now=now)
                _reseal_rows(step)
                config = load_config(paths)
                if config.principal:
                    state.seal_config(sealed, config)
                else:
                    sealed.config, sealed.parts = None, {}
                trust = keystore.read("trust")
                sealed.kids = sorted(trust["keys"]) if trust else []
                step.write([event("log.loss_accepted", reason="nhidel repair --accept-loss",
                                  lost=report.loss, revoked=len(report.revoked))])  # fmt: skip
            elif report.replayed:
                step.write([event("state.repaired", reason="the ledger was behind the log: "
                                  "applied again what the sealed log holds",
                                  replayed=report.replayed)])  # fmt: skip
            if session.written:
                step.commit(now=now)
    return report


LOSS_HINT = (
    "restore the lost files from a backup; if they are lost for good, run nhidel repair "
    "--accept-loss (it revokes every grant that could still be used, and seals the loss)"
)


def _sealed_state(
    ledger: Ledger, key: bytes, session: Any
) -> tuple[state.SealedState | None, str | None]:
    """(the sealed state, None) when it is current; else (what of it is still readable, or
    None, and why it cannot be used as it is)."""
    try:
        return state.current(ledger, key, session), None
    except IntegrityError as exc:
        try:
            damaged: state.SealedState | None = state.open_state(ledger.sealed_state(), key)
        except IntegrityError:
            damaged = None
        if damaged is not None and damaged.legacy:
            damaged = None
        return damaged, exc.message


def _log_complete(paths: Paths, key: bytes, sealed: state.SealedState) -> bool:
    """Whether the log still holds every record after the (older) sealed state."""
    seqs = [record["seq"] for record in _sealed_records(paths, key)]
    return (
        bool(seqs)
        and seqs[0] <= sealed.seq + 1
        and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    )


def _sealed_records(paths: Paths, key: bytes) -> list[dict[str, Any]]:
    found = []
    for _, _, raw, complete in lines(paths):
        if not complete:
            continue
        try:
            found.append(open_line(raw, key))
        except BadRecord:
            continue  # a torn fragment, or a forged line: audit verify names it
    return found


def _replay(step: state.Change, paths: Paths, key: bytes, *, now: int) -> int:
    """Apply every grant record of the sealed log again (restrictively); return how many."""
    ledger, sealed = step.ledger, step.state
    applied = 0
    for record in _sealed_records(paths, key):
        kind, grant_id = record.get("event"), record.get("grant")
        if not isinstance(grant_id, str) or kind not in ("grant.issued", "grant.revoked",
                                                          "grant.used"):  # fmt: skip
            continue
        row = ledger.get(grant_id)
        expires = int(record.get("expires_at") or (row.expires_at if row else now))
        if kind == "grant.issued" and (row is None or not _as_issued(row, record)):
            ledger.delete(grant_id)  # an edited row goes back to what was issued, revoked
            step.insert(state.tombstone(record), "", revoked_reason="lost")
            sealed.revoke(grant_id, expires)
        elif kind == "grant.revoked":
            ledger.revoke([grant_id], now=now, reason=record.get("reason"))
            sealed.revoke(grant_id, expires)
        elif kind == "grant.used" and sealed.uses(grant_id) < int(record.get("uses") or 0):
            sealed.used[grant_id] = [int(record["uses"]), expires]
            ledger.raise_uses(grant_id, int(record["uses"]))
        else:
            continue
        applied += 1
    return applied


def _revoke_live(step: state.Change, *, now: int) -> list[str]:
    """After a loss, no live grant's revocations or uses can be trusted: revoke them all."""
    ledger, sealed = step.ledger, step.state
    live = [g for g in ledger.live_ids(now=now) if g not in sealed.revoked]
    grants = [g for g in map(ledger.get, live) if g is not None]
    if grants:
        principal = load_config(step.paths).principal
        step.write([state.revocation(g, principal=principal, reason="loss accepted")
                    for g in grants])  # fmt: skip
        step.revoke(grants, now=now, reason="loss accepted")
    return [g.id for g in grants]


def _reseal_rows(step: state.Change) -> None:
    for grant, token_hash, _ in list(step.ledger.all_rows()):
        step.ledger.reseal(grant.id, state.row_seal(step.audit_key, grant, token_hash))


def _as_issued(row: Grant, record: dict[str, Any]) -> bool:
    issued = (record.get("agent"), record.get("scopes"), record.get("expires_at"),
              record.get("max_uses"), record.get("kid"))  # fmt: skip
    return issued == (row.agent, [str(s) for s in row.scopes], row.expires_at, row.max_uses,
                      row.kid)  # fmt: skip


def _purge_malformed(ledger: Ledger) -> None:
    """Rows too damaged to read go (the log's grant.issued brings each back as a tombstone)."""
    for grant_id in ledger.all_ids():
        try:
            ledger.get(grant_id)
        except IntegrityError:
            ledger.delete(grant_id)
