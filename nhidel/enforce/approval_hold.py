"""Holding a call for a human's yes, at any enforcement point (the MCP gateway on both
transports, the HTTP broker).

`Approvals` asks the agent's sealed ceiling whether an approval mark covers the call, then
the approvals desk (nhidel.actions.approvals) what to do: a yes that covers it lets it go at
once; otherwise the call is held, polled every POLL seconds, for up to the hold (`--approval-
hold`). A yes within it lets the call through; a no denies it; past the hold the caller
answers `approval_pending` and the request stays open until `--approval-timeout`, so that the
identical retry after a yes goes through once. While holding, `tick` is called about every
TICK seconds (the gateway sends progress notifications with it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from nhidel.actions.approvals import DEFAULT_HOLD, GO, HELD, Desk, Verdict
from nhidel.ceilings import needs_approval
from nhidel.config import Config
from nhidel.integrity.approvals import DENIED, LAPSED, Call
from nhidel.scopes import Scope
from nhidel.tokens.decision import Reason

APPROVAL_REASONS = frozenset({Reason.APPROVAL_PENDING, Reason.APPROVAL_DENIED,
                              Reason.APPROVAL_TIMEOUT})  # fmt: skip
POLL = 0.2  # seconds between looks at the ledger while a call is held
TICK = 5.0  # seconds between progress notifications while a call is held


class Approvals:
    """The approval marks and holds of one enforcement point."""

    def __init__(
        self,
        desk: Desk,
        config: Callable[[], Config],
        *,
        hold: float = DEFAULT_HOLD,
    ) -> None:
        self.desk = desk
        self.config = config  # the sealed configuration now (IntegrityError if edited)
        self.hold_for = hold

    def mark_for(self, agent: str, scopes: Iterable[Scope]) -> Scope | None:
        """The approval mark of `agent`'s sealed ceiling covering any of `scopes`, or None."""
        ceiling = self.config().agents.get(agent)
        if ceiling is None or not ceiling.approve:
            return None
        for scope in scopes:
            mark = needs_approval(ceiling, scope)
            if mark is not None:
                return mark
        return None

    async def hold(
        self,
        call: Call,
        *,
        via: str,
        mark: Scope,
        arguments: Any,
        tick: Callable[[Verdict], None] | None = None,
        opened: Callable[[Verdict], None] | None = None,
    ) -> Verdict:
        """Hold `call` until a yes or a no, its request lapses, or the hold ends (HELD).
        `opened` hears the request first; `tick` is called every TICK seconds held. Cancelling
        the task (the client withdrew the call) leaves the request to the caller to close."""
        verdict = self.desk.consider(call, via=via, mark=str(mark), arguments=arguments)
        if verdict.outcome != HELD:
            return verdict
        if opened is not None:
            opened(verdict)
        started = time.monotonic()
        next_tick = started + TICK
        while True:
            await asyncio.sleep(POLL)
            assert verdict.request is not None  # noqa: S101 - HELD carries its request
            verdict = self.desk.poll(verdict.request)
            if verdict.outcome != HELD:
                return verdict
            now = time.monotonic()
            if now - started >= self.hold_for:
                return verdict
            if tick is not None and now >= next_tick:
                next_tick = now + TICK
                tick(verdict)

    def withdraw(self, verdict: Verdict, why: str) -> None:
        if verdict.request is not None:
            self.desk.close(verdict.request, why)


def reason_of(verdict: Verdict) -> Reason | None:
    """The decision reason of a verdict that stops the call (None for GO)."""
    return {
        GO: None,
        HELD: Reason.APPROVAL_PENDING,
        DENIED: Reason.APPROVAL_DENIED,
        LAPSED: Reason.APPROVAL_TIMEOUT,
    }[verdict.outcome]


def refusal_text(verdict: Verdict) -> str:
    """What the agent reads when a held call does not go on (one line, with what to do)."""
    request = verdict.request
    ident = request.id if request is not None else "?"
    if verdict.outcome == HELD:
        return (f"approval request {ident} waits for a human: ask them to run nhidel approve "
                f"{ident}, then retry the identical call")  # fmt: skip
    if verdict.outcome == DENIED:
        why = f" ({' '.join(verdict.reason.split())[:200]})" if verdict.reason else ""
        return f"a human denied approval request {ident}{why}"
    return f"approval request {ident} got no answer in time; retry to ask again"
