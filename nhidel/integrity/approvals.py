"""Approvals as sealed records: a request an enforcement point held (or a grant an agent asked
for), and the human's answer, each sealed with a key derived from the audit key.

An agent that can write nhidel's files can edit every row of the approvals table. So nothing
is believed from a row but what its seals cover:
- a request is sealed by whoever wrote it (the enforcement point, the daemon, or the first
  keystore holder that took in a file request) over everything it says: agent, grant, where
  and what the call goes to, its argument hash, the summary shown to the human, when it lapses;
- an answer is sealed by `approve`/`deny` over the request id and the argument hash; one given
  `--for` a window also over the call it covers (agent, grant, target, action, resources,
  argument hash unless `--any-args`) and the window's end. A seal copied to another row, a
  status flipped by hand, a widened window: each fails its check here;
- a one-time yes is spent in the sealed state (nhidel.integrity.state `spent`), which the
  keystore's mark keeps from being rolled back, so an old answer put back is not a new yes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from nhidel.audit.records import canonical
from nhidel.errors import IntegrityError

CALL = "call"  # a tool call or an HTTP request, held at an enforcement point
GRANT = "grant"  # a whole grant asked for with `nhidel request`

PENDING, GRANTED, DENIED, LAPSED = "pending", "granted", "denied", "lapsed"

_REQUEST = b"approval-request"
_ANSWER = b"approval-answer"


@dataclass(frozen=True, slots=True)
class Call:
    """What an approval is about: one call, as the enforcement point saw it."""

    agent: str
    grant: str
    target: str  # the MCP server or the route
    action: str  # the tool, or `METHOD /path`
    resources: tuple[str, ...]
    args_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "grant": self.grant, "target": self.target,
                "action": self.action, "resources": list(self.resources),
                "args_sha256": self.args_sha256}  # fmt: skip

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Call:
        return cls(str(body["agent"]), str(body["grant"]), str(body["target"]),
                   str(body["action"]), tuple(str(r) for r in body["resources"]),
                   str(body["args_sha256"]))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    """One approval request whose seal held: `body` is everything it says."""

    id: str
    kind: str
    body: dict[str, Any]
    created_at: int
    lapses_at: int

    @property
    def agent(self) -> str:
        return str(self.body["agent"])

    @property
    def summary(self) -> str:
        return str(self.body["summary"])

    @property
    def call(self) -> Call:
        return Call.from_json(self.body["call"])


@dataclass(frozen=True, slots=True)
class Answer:
    """The human's sealed answer to request `request`."""

    request: str
    decision: str  # GRANTED or DENIED
    args_sha256: str
    answered_at: int
    reason: str | None = None
    window: dict[str, Any] | None = None  # a --for window: the call it covers and `until`
    extra: dict[str, Any] | None = None  # a grant request's delivery (nhidel.actions.approvals)

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request, "decision": self.decision,
                "args_sha256": self.args_sha256, "answered_at": self.answered_at,
                "reason": self.reason, "window": self.window, "extra": self.extra}  # fmt: skip

    def window_covers(self, call: Call, *, now: int) -> bool:
        """Whether this answer's `--for` window lets `call` through at `now`: a yes, a window
        not yet closed, and the same agent, grant, target, action, resources, and argument
        hash (any, when the window was given `--any-args`)."""
        window = self.window
        if self.decision != GRANTED or window is None or not now < int(window["until"]):
            return False
        covered = window["call"]
        return (
            covered["agent"] == call.agent
            and covered["grant"] == call.grant
            and covered["target"] == call.target
            and covered["action"] == call.action
            and tuple(covered["resources"]) == call.resources
            and covered["args_sha256"] in (None, call.args_sha256)
        )


def seal_request(
    audit_key: bytes, approval_id: str, kind: str, body: dict[str, Any]
) -> tuple[str, str]:
    """The stored body of a request and its seal (over the id, the kind and the body)."""
    text = canonical(body).decode()
    return text, _mac(audit_key, _REQUEST, approval_id, kind, text)


def seal_answer(audit_key: bytes, approval_id: str, answer: Answer) -> tuple[str, str]:
    """The stored answer and its seal (over the request id and everything the answer says)."""
    if answer.request != approval_id:
        raise ValueError("an answer is sealed to its own request")
    text = canonical(answer.to_json()).decode()
    return text, _mac(audit_key, _ANSWER, approval_id, "", text)


def open_request(audit_key: bytes, row: tuple[Any, ...]) -> Request:
    """The request a row holds; IntegrityError naming it when its seal does not hold."""
    approval_id, kind, _agent, _summary, _created, _lapses, _status, body, seal = row[:9]
    expected = _mac(audit_key, _REQUEST, str(approval_id), str(kind), str(body))
    if not isinstance(seal, str) or not hmac.compare_digest(expected, seal):
        raise _forged(str(approval_id), "request")
    try:
        fields = json.loads(body)
        return Request(str(approval_id), str(kind), fields, int(fields["created_at"]),
                       int(fields["lapses_at"]))  # fmt: skip
    except (ValueError, KeyError, TypeError):
        raise _forged(str(approval_id), "request") from None


def open_answer(audit_key: bytes, request: Request, row: tuple[Any, ...]) -> Answer | None:
    """The answer a row holds to `request` (None when unanswered); IntegrityError when it was
    forged, copied from another request, or is for other arguments."""
    answer, seal = row[9], row[10]
    if answer is None and seal is None:
        return None
    expected = _mac(audit_key, _ANSWER, request.id, "", str(answer))
    if not isinstance(seal, str) or not hmac.compare_digest(expected, seal):
        raise _forged(request.id, "answer")
    try:
        fields = json.loads(answer)
        found = Answer(str(fields["request"]), str(fields["decision"]),
                       str(fields["args_sha256"]), int(fields["answered_at"]), fields["reason"],
                       fields["window"], fields["extra"])  # fmt: skip
    except (ValueError, KeyError, TypeError):
        raise _forged(request.id, "answer") from None
    if (
        found.request != request.id
        or found.args_sha256 != request.body.get("args_sha256", "")
        or found.decision not in (GRANTED, DENIED)
    ):
        raise _forged(request.id, "answer")
    return found


def check_row(request: Request, answer: Answer | None, row: tuple[Any, ...]) -> None:
    """IntegrityError when the columns that index and show a row say other than its seals:
    a status flipped by hand (`granted` with no answer, an answer under another status), an
    edited summary, agent, time or window end. Each row is written whole in one statement, so
    no crash leaves them apart."""
    _id, _kind, agent, summary, created, lapses, status, *_sealed = row[:9]
    window_until = row[11]
    if answer is not None:
        status_holds = status == answer.decision
        until = None if answer.window is None else answer.window.get("until")
    else:
        status_holds = status in (PENDING, LAPSED)
        until = None
    if (
        not status_holds
        or window_until != until
        or (agent, summary, created, lapses)
        != (request.agent, request.summary, request.created_at, request.lapses_at)
    ):
        raise _forged(request.id, "row")


def canonical_sha256(value: Any) -> str:
    """The hash of `value` in canonical JSON (sorted keys): what identical calls share."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _mac(audit_key: bytes, purpose: bytes, approval_id: str, kind: str, text: str) -> str:
    from nhidel.integrity.state import derived_key

    message = f"{approval_id}\x1f{kind}\x1f{text}".encode("utf-8", "surrogatepass")
    return hmac.digest(derived_key(audit_key, purpose), message, "sha256").hex()


def _forged(approval_id: str, what: str) -> IntegrityError:
    return IntegrityError(
        f"approval {approval_id}'s {what} does not match its seal (edited, forged, or copied "
        "from another request)",
        "nhidel acts on no answer to it; run nhidel audit verify to see what else was touched",
    )
