"""What every enforcement point asks before it acts: is the sealed configuration still the
one it was given, does the grant cover this action now, what are the secrets' current values;
and where its decision records go.

`Enforcer` is opened once per gateway or broker and asked on every action. It notices a
changed configuration on the next action without a restart: config.toml is stat'ed per
action and read again when it changed or when anything committed to the ledger (every sealed
change does), and checked against the sealed state the verifier holds. An edited entry makes
every action refuse (`integrity`), naming it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nhidel.actions.approvals import Desk, Settings
from nhidel.audit import event
from nhidel.config import Config, load_config
from nhidel.enforce.approval_hold import Approvals
from nhidel.errors import IntegrityError
from nhidel.integrity import state
from nhidel.paths import Paths
from nhidel.scopes import Scope
from nhidel.tokens.decision import Decision, Reason
from nhidel.verifiers.local import Verifier

if TYPE_CHECKING:
    from nhidel.audit.decision_log import DecisionLog
    from nhidel.keys.keystore import KeyStore


class Enforcer:
    """The grant check, the sealed configuration and the secrets, for one enforcement point."""

    def __init__(
        self,
        paths: Paths,
        keystore: KeyStore,
        *,
        clock: Callable[[], float] = time.time,
        approvals: Settings = Settings(),  # noqa: B008 - frozen: one shared default is safe
    ) -> None:
        from nhidel.audit.decision_log import DecisionLog

        self.paths = paths
        self.keystore = keystore
        self.clock = clock
        # Decisions are this point's own records (tool.*, http.*), not verify.*: one per action.
        self.verifier = Verifier(paths, keystore, clock=clock, audit=False)
        self.decisions: DecisionLog = DecisionLog(state.audit_log(paths, self.verifier.audit_keys))
        self._config_stat: tuple[int, ...] | None = None
        self._config_state: state.SealedState | None = None
        self._config: Config | None = None
        self._config_failure: IntegrityError | None = None
        self._sequence = 0
        self._noted: dict[str, int] = {}  # secret name -> the second its use was last noted
        self._approval_settings = approvals
        self._approvals: Approvals | None = None

    @property
    def approvals(self) -> Approvals:
        """The approval marks and holds of this point (made when first asked for)."""
        if self._approvals is None:
            settings = self._approval_settings
            desk = Desk(self.paths, self.verifier.audit_keys, self.verifier.ledger,
                        clock=self.clock, timeout=settings.timeout)  # fmt: skip
            self._approvals = Approvals(desk, self.config, hold=settings.hold)
        return self._approvals

    def close(self) -> None:
        """Write the buffered decisions, then release the ledger."""
        try:
            self.decisions.close()
        finally:
            self.verifier.close()

    def __enter__(self) -> Enforcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the sealed configuration ------------------------------------------------------------

    def config(self) -> Config:
        """config.toml as sealed now; IntegrityError naming the entry that was edited."""
        sealed = self.verifier.current_state()
        stat = _stat(self.paths.config_file)
        if stat != self._config_stat or sealed is not self._config_state:
            self._config_stat, self._config_state = stat, sealed
            self._config, self._config_failure = None, None
            try:
                self._config = state.check_config(load_config(self.paths), sealed, self.paths)
            except IntegrityError as exc:
                self._config_failure = exc
        if self._config_failure is not None:
            raise self._config_failure
        assert self._config is not None  # noqa: S101 - set above whenever no failure is
        return self._config

    # -- the grant ---------------------------------------------------------------------------

    def check(self, token: str, scope: str | Scope, *, aud: str | None = None) -> Decision:
        """Whether `token` covers `scope` now; an allowed action of a grant with a use limit
        spends one use, durably, before this returns."""
        return self.spend(token, [scope], self.verifier.check(token, [scope], aud=aud), aud=aud)

    def spend(
        self,
        token: str,
        scopes: Sequence[str | Scope],
        decision: Decision,
        *,
        aud: str | None = None,
    ) -> Decision:
        """`decision` (a check of `scopes` that did not spend), with one use spent durably when
        it allowed a grant with a use limit: for a call held for approval first, spent only
        when it goes on."""
        if decision.allowed and decision.grant is not None and decision.grant.max_uses is not None:
            return self.verifier.check(token, scopes, aud=aud, consume=True)
        return decision

    def refuse_on_integrity(self) -> Decision | None:
        """A `integrity` decision when the configuration or state cannot be trusted, else None."""
        try:
            self.config()
        except IntegrityError as exc:
            return Decision(False, Reason.INTEGRITY, exc.message)
        return None

    # -- secrets and records -----------------------------------------------------------------

    def secrets(self, names: Iterable[str]) -> dict[str, str]:
        """The current values of secrets `names` (a replaced value is seen at once)."""
        from nhidel.actions.secrets import note_used, secret_values

        values = secret_values(self.keystore, names)
        now = int(self.clock())
        # "Last used" is kept to the second: noting it again within the same second would
        # cost a ledger transaction per action (a broker's requests come many a second).
        due = [name for name in values if self._noted.get(name) != now]
        if due:
            self._noted.update(dict.fromkeys(due, now))
            try:
                note_used(self.paths, due, now=now)
            except Exception:  # noqa: BLE001, S110 - "last used" is a courtesy, never a failure
                pass
        return values

    def record(self, name: str, **fields: Any) -> None:
        """One decision record (`tool.*`, `http.*`, `secret.redacted`, ...), group-committed;
        never arguments, bodies, tokens or secrets."""
        self._sequence += 1  # each action its own record: never coalesced with another
        self.decisions.decide((name, self._sequence, id(self)), event(name, **fields))


def _stat(path: Path) -> tuple[int, ...] | None:
    """What changes when the file does (ctime too: an edit that puts mtime back moves it). An
    edit this misses changes nothing anyway: what was read before was checked sealed."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)
