"""Approvals: the requests enforcement points hold for a human's yes, and the human's answers.

Two sides share the approvals table in the ledger (nhidel.integrity.approvals seals every row):
- `Desk`, at an enforcement point: before a marked call goes on, it looks for a yes that
  covers it (a `--for` window, or a one-time yes to the identical call, spent durably before
  the call proceeds), a no, or a request already waiting; otherwise it opens a sealed request
  (`approval.requested`). While the call is held it is asked again (`poll`).
- the human's commands: `listed` (lapsing what is overdue), `find`, `answer` (`approve`,
  `deny`), each a durable state change with its sealed record.
Every write goes through `integrity.state.change()`, so it is on disk before it is reported.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nhidel.audit import AuditKeys, event
from nhidel.errors import IntegrityError, NotFoundError, UsageError
from nhidel.integrity import state
from nhidel.integrity.approvals import (
    CALL,
    DENIED,
    GRANT,
    GRANTED,
    LAPSED,
    PENDING,
    Answer,
    Call,
    Request,
    check_row,
    open_answer,
    open_request,
    seal_answer,
    seal_request,
)
from nhidel.ledger.store import Ledger
from nhidel.names import APPROVAL_ID_PREFIX
from nhidel.paths import Paths

if TYPE_CHECKING:
    from nhidel.keys.keystore import KeyStore

DEFAULT_HOLD = 45  # seconds a call is held: under the 60 s most clients give a call
DEFAULT_TIMEOUT = 600  # seconds a request stays open for a yes
MAX_WINDOW = 7 * 86400  # the longest `approve --for`
SUMMARY_LENGTH = 240  # characters of the summary the human sees at a glance
VALUE_LENGTH = 60  # characters of one argument's value in the summary
MAX_ARGUMENTS = 64 * 1024  # characters of the arguments kept for `approvals show`
MIN_PREFIX = 4
WITHDRAWN = "withdrawn by the client"
UNANSWERED = "no answer in time"
GO, HELD = "go", PENDING  # a Verdict's outcomes besides DENIED and LAPSED


@dataclass(frozen=True, slots=True)
class Settings:
    """An enforcement point's `--approval-hold` and `--approval-timeout`, in seconds."""

    hold: float = DEFAULT_HOLD
    timeout: int = DEFAULT_TIMEOUT


def new_approval_id() -> str:
    """`a` and 16 lowercase base32 characters: 80 random bits."""
    return "a" + base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


def summarize(arguments: Any) -> str:
    """What the human reads at a glance: `name=value` for each argument, each value as JSON
    with everything but printable ASCII escaped, a long value cut (`…(+N)`), and the whole cut
    at SUMMARY_LENGTH (`…(+N more)`). Written here from the arguments, never taken from the
    agent or the server."""
    if isinstance(arguments, dict):
        parts = [f"{_escaped(str(k))}={_short(v)}" for k, v in arguments.items()]
    else:
        parts = [_short(arguments)]
    text = " ".join(parts) if parts else "(no arguments)"
    if len(text) > SUMMARY_LENGTH:
        return f"{text[:SUMMARY_LENGTH]}…(+{len(text) - SUMMARY_LENGTH} more)"
    return text


def full_arguments(arguments: Any) -> str:
    """The arguments `approvals show` prints: indented JSON, everything but printable ASCII
    escaped, cut at MAX_ARGUMENTS (said so)."""
    text = json.dumps(arguments, indent=2, sort_keys=True, ensure_ascii=True, default=str)
    if len(text) > MAX_ARGUMENTS:
        return f"{text[:MAX_ARGUMENTS]}\n…(+{len(text) - MAX_ARGUMENTS} more characters)"
    return text


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, sort_keys=True, default=str)
    if len(text) > VALUE_LENGTH:
        return f"{text[:VALUE_LENGTH]}…(+{len(text) - VALUE_LENGTH})"
    return text


def _escaped(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)[1:-1]


# -- what an enforcement point asks --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a marked call now: GO (a yes covers it: `approval` names it), DENIED,
    LAPSED (no answer in time), or HELD (`request` is what the human sees)."""

    outcome: str
    request: Request | None = None
    approval: str | None = None
    reason: str | None = None


class Desk:
    """An enforcement point's side of approvals, on its own ledger connection and thread."""

    def __init__(
        self,
        paths: Paths,
        keys: AuditKeys,
        ledger: Ledger,
        *,
        clock: Callable[[], float],
        timeout: int = DEFAULT_TIMEOUT,
    ) -> None:
        self.paths = paths
        self.keys = keys
        self.ledger = ledger
        self.clock = clock
        self.timeout = timeout

    def consider(self, call: Call, *, via: str, mark: str, arguments: Any) -> Verdict:
        """A marked call arrives: a window or an unspent one-time yes to the identical call lets
        it go (the yes spent first); a no to it is `denied`; a request for it still open is
        held on; else a new sealed request is opened and held."""
        now = int(self.clock())
        waiting: Request | None = None
        for request, answer in self._open_for(call.agent, now):
            if answer is not None and answer.window_covers(call, now=now):
                return Verdict(GO, request, request.id)
            if request.kind != CALL or request.call != call:
                continue
            if answer is None:
                if now < request.lapses_at:
                    waiting = request
                continue
            if answer.decision == DENIED:
                return Verdict(DENIED, request, reason=answer.reason)
            if request.id not in self._state().spent and now < request.lapses_at:
                return self._spend(request)
        if waiting is not None:
            return Verdict(HELD, waiting)
        return Verdict(HELD, self._open(call, via=via, mark=mark, arguments=arguments))

    def poll(self, request: Request) -> Verdict:
        """The held `request` now: `go` once a yes came (spent), `denied`, `lapsed` past its
        time (recorded), or still `pending`."""
        now = int(self.clock())
        row = self.ledger.approval(request.id)
        if row is None:
            raise IntegrityError(f"approval request {request.id} was deleted from the ledger",
                                 "run nhidel audit verify")  # fmt: skip
        checked = open_request(self.keys.seal_key, row)
        if checked != request:
            raise IntegrityError(f"approval request {request.id} was replaced in the ledger",
                                 "run nhidel audit verify")  # fmt: skip
        answer = open_answer(self.keys.seal_key, request, row)
        if answer is not None:
            if answer.decision == DENIED:
                return Verdict(DENIED, request, reason=answer.reason)
            if request.id in self._state().spent:
                return Verdict(HELD, request)  # spent on another identical call
            return self._spend(request)
        if now >= request.lapses_at:
            self.close(request, UNANSWERED)
            return Verdict(LAPSED, request)
        return Verdict(HELD, request)

    def close(self, request: Request, why: str) -> None:
        """Withdraw or lapse `request` (`approval.lapsed` saying `why`) unless it was answered."""
        now = int(self.clock())
        with state.change(self.paths, self.keys, self.ledger, now=now) as step:
            row = self.ledger.approval(request.id)
            if row is None or row[9] is not None or row[6] != PENDING:
                return
            step.write([event("approval.lapsed", agent=request.agent, approval=request.id,
                              grant=request.body.get("grant"), reason=why)])  # fmt: skip
            self.ledger.set_approval_status(request.id, LAPSED)

    def _open(self, call: Call, *, via: str, mark: str, arguments: Any) -> Request:
        now = int(self.clock())
        approval_id = new_approval_id()
        body = {
            "kind": CALL, "via": via, "agent": call.agent, "grant": call.grant,
            "call": call.to_json(), "args_sha256": call.args_sha256, "mark": mark,
            "summary": f"{_escaped(call.target)} {_escaped(call.action)}: {summarize(arguments)}",
            "arguments": full_arguments(arguments), "created_at": now,
            "lapses_at": now + self.timeout,
        }  # fmt: skip
        request = Request(approval_id, CALL, body, now, now + self.timeout)
        with state.change(self.paths, self.keys, self.ledger, now=now) as step:
            step.write([event(
                "approval.requested", agent=call.agent, grant=call.grant, approval=approval_id,
                target=call.target, action=call.action, resources=list(call.resources) or None,
                args_sha256=call.args_sha256, mark=mark, lapses_at=request.lapses_at,
            )])  # fmt: skip
            add_request(self.ledger, self.keys.seal_key, request)
        return request

    def _spend(self, request: Request) -> Verdict:
        """Spend a one-time yes, durably, before the call it covers goes on."""
        now = int(self.clock())
        with state.change(self.paths, self.keys, self.ledger, now=now) as step:
            if request.id in step.state.spent:
                return Verdict(HELD, request)
            step.write([event("approval.used", agent=request.agent, approval=request.id,
                              grant=request.body.get("grant"),
                              lapses_at=request.lapses_at)])  # fmt: skip
            step.state.spent[request.id] = request.lapses_at
        return Verdict(GO, request, request.id)

    def _state(self) -> state.SealedState:
        return state.read_checked(self.paths, self.keys, self.ledger)

    def _open_for(self, agent: str, now: int) -> list[tuple[Request, Answer | None]]:
        """The agent's requests still open (or windows not yet closed), checked: a row whose
        seal fails is passed over (it can only be less than what the human said), and so is
        an unanswered one closed early (withdrawn): a retry asks anew rather than wait on it."""
        found = []
        for row in self.ledger.approvals(open_after=now, agent=agent):
            try:
                request = open_request(self.keys.seal_key, row)
                answer = open_answer(self.keys.seal_key, request, row)
            except IntegrityError:
                continue
            if answer is not None or row[6] == PENDING:
                found.append((request, answer))
        return found


def add_request(ledger: Ledger, audit_key: bytes, request: Request) -> None:
    """Store `request` sealed (inside the state change that records it)."""
    body, seal = seal_request(audit_key, request.id, request.kind, request.body)
    ledger.add_approval((request.id, request.kind, request.agent, request.summary,
                         request.created_at, request.lapses_at, PENDING, body, seal, None, None,
                         None))  # fmt: skip


# -- the human's side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    """One request as `approvals` shows it: checked (`forged` names what failed), its status
    now, and its answer."""

    id: str
    status: str
    request: Request | None
    answer: Answer | None
    forged: str | None = None
    summary: str = ""
    agent: str = ""
    lapses_at: int = 0


def listed(paths: Paths, keystore: KeyStore, *, now: int, every: bool = False) -> list[Listed]:
    """The requests open now (every one kept, with `every`), oldest first; requests past their
    time are lapsed first (`approval.lapsed`)."""
    keys = AuditKeys.of(keystore)
    with Ledger(paths) as ledger:
        _lapse_overdue(paths, keys, ledger, now=now)
        rows = ledger.approvals(open_after=None if every else now)
        return [_checked(keys.seal_key, row, now=now) for row in rows]


def find(paths: Paths, keystore: KeyStore, prefix: str, *, now: int) -> Listed:
    """One request by its id or a prefix of it (NotFoundError, UsageError when ambiguous)."""
    keys = AuditKeys.of(keystore)
    with Ledger(paths) as ledger:
        _lapse_overdue(paths, keys, ledger, now=now)
        row = ledger.approval(resolve_id(ledger, prefix))
        assert row is not None  # noqa: S101 - resolved just now
        return _checked(keys.seal_key, row, now=now)


def resolve_id(ledger: Ledger, prefix: str) -> str:
    if not APPROVAL_ID_PREFIX.fullmatch(prefix) or len(prefix) < MIN_PREFIX:
        raise UsageError(
            f"invalid approval id {prefix!r}",
            "give an id (or its first 4+ characters) from: nhidel approvals",
        )
    found = ledger.approval_ids(prefix)
    if not found:
        raise NotFoundError(f"no approval request {prefix}", "see the open ones: nhidel approvals")
    if len(found) > 1:
        raise UsageError(f"approval id {prefix} is ambiguous ({len(found)} requests)",
                         "give more of its characters")  # fmt: skip
    return found[0]


@dataclass(frozen=True, slots=True)
class Choice:
    """How the human answers: yes or no, a window (`--for`, seconds), `--any-args`, a reason."""

    granted: bool
    window: int | None = None
    any_args: bool = False
    reason: str | None = None


def answer(
    paths: Paths,
    keystore: KeyStore,
    prefix: str,
    choice: Choice,
    *,
    now: int,
    deliver: Callable[[Request, state.Change, int], dict[str, Any]] | None = None,
) -> Listed:
    """Approve or deny one pending request: a sealed answer and its record, durable before
    this returns. Refused for a request that is not pending (answered, lapsed, withdrawn) or
    whose seal fails. `deliver` mints what a grant request asked for (its sealed `extra`)
    inside the same state change (nhidel.actions.grant_requests); a yes to a grant request
    without it is refused."""
    if choice.window is not None and not 0 < choice.window <= MAX_WINDOW:
        raise UsageError("--for must be between 1s and 7d", "e.g. --for 30m")
    if choice.any_args and choice.window is None:
        raise UsageError("--any-args widens a window", "give --for DURATION with it")
    keys = AuditKeys.of(keystore)
    with Ledger(paths) as ledger:
        _lapse_overdue(paths, keys, ledger, now=now)
        with state.change(paths, keys, ledger, now=now) as step:
            approval_id = resolve_id(ledger, prefix)
            row = ledger.approval(approval_id)
            assert row is not None  # noqa: S101 - resolved in this transaction
            current = _checked(keys.seal_key, row, now=now)
            if current.forged is not None or current.request is None:
                raise IntegrityError(str(current.forged), "run nhidel audit verify")
            request = current.request
            if current.status != PENDING:
                raise UsageError(f"approval request {approval_id} is {current.status}, not pending",
                                 "see the open ones: nhidel approvals")  # fmt: skip
            if choice.window is not None and request.kind != CALL:
                raise UsageError("--for answers calls, not grant requests",
                                 f"nhidel approve {approval_id}")  # fmt: skip
            window: dict[str, Any] | None = None
            if choice.window is not None:
                covered = request.call.to_json()
                if choice.any_args:
                    covered["args_sha256"] = None
                window = {"call": covered, "until": now + choice.window}
            extra = None
            if choice.granted and request.kind == GRANT:
                if deliver is None:
                    raise UsageError(f"approval request {approval_id} asks for a grant",
                                     f"nhidel approve {approval_id}")  # fmt: skip
                extra = deliver(request, step, now)
            given = Answer(approval_id, GRANTED if choice.granted else DENIED,
                           str(request.body["args_sha256"]), now, choice.reason, window,
                           extra)  # fmt: skip
            text, seal = seal_answer(keys.seal_key, approval_id, given)
            step.write([event(
                "approval.granted" if choice.granted else "approval.denied",
                principal=step.config().principal, agent=request.agent, approval=approval_id,
                grant=request.body.get("grant") or (extra or {}).get("grant"),
                args_sha256=request.body["args_sha256"], reason=choice.reason,
                window_until=None if window is None else window["until"],
                any_args=choice.any_args or None,
            )])  # fmt: skip
            until = None if window is None else int(window["until"])
            ledger.answer_approval(approval_id, status=given.decision, answer=text, seal=seal,
                                   window_until=until)  # fmt: skip
            return Listed(approval_id, given.decision, request, given, summary=request.summary,
                          agent=request.agent, lapses_at=request.lapses_at)  # fmt: skip


def _checked(audit_key: bytes, row: tuple[Any, ...], *, now: int) -> Listed:
    approval_id, agent, summary, lapses_at, status = row[0], row[2], row[3], row[5], row[6]
    try:
        request = open_request(audit_key, row)
        given = open_answer(audit_key, request, row)
        check_row(request, given, row)
    except IntegrityError as exc:
        return Listed(str(approval_id), "forged", None, None, exc.message, str(summary),
                      str(agent), int(lapses_at))  # fmt: skip
    if given is not None:
        shown = given.decision
    elif status == LAPSED or now >= request.lapses_at:
        shown = LAPSED
    else:
        shown = PENDING
    return Listed(request.id, shown, request, given, None, request.summary, request.agent,
                  request.lapses_at)  # fmt: skip


def _lapse_overdue(paths: Paths, keys: AuditKeys, ledger: Ledger, *, now: int) -> None:
    """Record `approval.lapsed` for every pending request past its time (once)."""
    overdue = [row for row in ledger.approvals(status=PENDING) if int(row[5]) <= now]
    if not overdue:
        return
    with state.change(paths, keys, ledger, now=now) as step:
        for row in overdue:
            current = ledger.approval(str(row[0]))
            if current is None or current[6] != PENDING or current[9] is not None:
                continue
            step.write([event("approval.lapsed", agent=str(row[2]), approval=str(row[0]),
                              reason=UNANSWERED)])  # fmt: skip
            ledger.set_approval_status(str(row[0]), LAPSED)


# -- watching for requests as they arrive ---------------------------------------------------

POLL_INTERVAL = 0.5  # seconds between looks at whether the ledger changed
FORGED = "forged"  # a Listed's status when its row's seal fails


class Lookout:
    """Notices requests as enforcement points open them, with no daemon to tell it: SQLite's
    `PRAGMA data_version` (a few microseconds) says whether any other connection committed to
    the ledger since the last look, and only then are the requests read and checked again."""

    def __init__(self, paths: Paths, keystore: KeyStore) -> None:
        self.paths = paths
        self.keystore = keystore
        self.ledger = Ledger(paths)
        self.seen: set[str] = set()
        self._version: int | None = None

    def changed(self) -> bool:
        """Whether the ledger changed since this was last asked (true the first time). Ask it
        before reading, so what is read is at least that new."""
        version = self.ledger.data_version()
        changed, self._version = version != self._version, version
        return changed

    def waiting(self, *, now: int) -> list[Listed]:
        """The requests waiting for an answer at `now`, oldest first, with any still-open row
        whose seal fails (`forged`: never to be answered, but worth seeing)."""
        found = listed(self.paths, self.keystore, now=now)
        return [item for item in found if item.status in (PENDING, FORGED)]

    def arrived(self, waiting: list[Listed]) -> list[Listed]:
        """Those of `waiting` not seen before (each is new once)."""
        new = [item for item in waiting if item.id not in self.seen]
        self.seen.update(item.id for item in new)
        return new

    def close(self) -> None:
        self.ledger.close()


def arrivals(
    paths: Paths,
    keystore: KeyStore,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], object],
    interval: float = POLL_INTERVAL,
) -> Iterator[Listed]:
    """Each request as it arrives, those already waiting first, until the caller stops."""
    lookout = Lookout(paths, keystore)
    try:
        while True:
            if lookout.changed():
                yield from lookout.arrived(lookout.waiting(now=int(clock())))
            sleep(interval)
    finally:
        lookout.close()
