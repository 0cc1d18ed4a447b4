"""`/requests` on `nhidel proxy`: just-in-time grant requests from agents that hold a grant.

- `POST /requests` with a grant of the agent it asks for (Bearer; any scope, valid now: 401,
  403, 503 as the broker's table says; 403 `wrong_agent` for a grant of another agent) and a
  JSON body (agent, scopes, ttl, reason, pubkey, lapse) seals the request as authenticated
  (`grant.requested`) and answers 201 with its id and key fingerprint.
- `GET /requests/ID?wait=S` with a grant of the same agent answers where the request stands
  (pending, granted with the token sealed to the requester's key, denied, lapsed), waiting up
  to S seconds (at most WAIT_MAX) for an answer. Every row is read through its seals; a
  request of another agent, or none, is 404.

Every INTAKE_EVERY seconds it also takes in the request files written without a daemon
(nhidel.actions.grant_requests.take_in), as the first keystore holder to see them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from nhidel.actions import grant_requests
from nhidel.enforce import http_paths
from nhidel.enforce.http_paths import Refused, status_for
from nhidel.enforce.mcp_http import origin_allowed
from nhidel.errors import IntegrityError, NhidelError
from nhidel.integrity.approvals import GRANT, PENDING, open_answer, open_request
from nhidel.tokens.decision import Reason

if TYPE_CHECKING:
    from nhidel.enforce.context import Enforcer
    from nhidel.models import Grant

WAIT_MAX = 60  # seconds one GET may wait (clients poll again)
POLL_EVERY = 0.25  # seconds between looks at the ledger while a GET waits
INTAKE_EVERY = 2.0  # seconds between looks for request files
MAX_BODY = 16 * 1024


class _Refused(Exception):  # noqa: N818 - an answer, not a crash
    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.detail = status, reason, detail

    def response(self) -> web.Response:
        headers = http_paths.challenge_for(self.status)
        body = {"error": self.reason, **({"detail": self.detail} if self.detail else {})}
        return web.json_response(body, status=self.status, headers=headers)


def is_requests_path(raw_path: str) -> bool:
    """Whether a request target is this endpoint's (`/requests`, `/requests/ID`)."""
    path = raw_path.partition("?")[0]
    return path == "/requests" or path.startswith("/requests/")


class RequestsEndpoint:
    """The `/requests` handler, on the broker's loop and its enforcer."""

    def __init__(self, enforcer: Enforcer, *, aud: str | None = None) -> None:
        self.enforcer = enforcer
        self.aud = aud
        self._intake: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin taking in request files (call on the loop that serves)."""
        self._intake = asyncio.get_running_loop().create_task(self._take_in_files())

    async def close(self) -> None:
        if self._intake is not None:
            self._intake.cancel()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._answer(request)
        except _Refused as refused:
            answer = refused.response()
            if request.body_exists and not request.content.at_eof():
                answer.force_close()
            return answer

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        if not origin_allowed(request.headers.get("Origin")):
            raise _Refused(403, "bad_origin")
        parts = urlsplit(request.raw_path)
        try:
            token = http_paths.bearer_grant(request.headers.getall("Authorization", []))
        except Refused as refused:
            raise _Refused(400, refused.reason) from None
        if token is None:
            raise _Refused(401, "no_grant")
        if parts.path == "/requests" and request.method == "POST":
            return await self._file(request, self._grant(token))
        approval_id = parts.path.removeprefix("/requests/")
        if parts.path.startswith("/requests/") and request.method == "GET":
            wait = parse_qs(parts.query).get("wait", ["0"])[0]
            seconds = min(int(wait), WAIT_MAX) if wait.isdigit() else 0
            return await self._outcome(approval_id, self._grant(token), seconds)
        raise _Refused(405, "method_not_allowed")

    def _grant(self, token: str) -> Grant:
        decision = self.enforcer.verifier.check(token, any_scope=True, aud=self.aud)
        if not decision.allowed or decision.grant is None:
            reason = decision.reason.value if decision.reason else "denied"
            raise _Refused(status_for(decision.reason), reason)
        return decision.grant

    async def _file(self, request: web.BaseRequest, grant: Grant) -> web.Response:
        if (request.content_length or 0) > MAX_BODY:
            raise _Refused(413, "body_too_large")
        try:
            body = json.loads(await request.content.read(MAX_BODY + 1))
            filed = grant_requests.asked(
                str(body["agent"]), [str(s) for s in body["scopes"]], body.get("ttl"),
                str(body["reason"]), str(body["pubkey"]),
            )  # fmt: skip
            lapse = body.get("lapse")
            if lapse is not None and type(lapse) is not int:
                raise ValueError("lapse")
        except NhidelError as bad:
            raise _Refused(400, "bad_request", bad.message) from None
        except (ValueError, KeyError, TypeError):
            raise _Refused(400, "bad_request", "a JSON object: agent, scopes, reason, "
                           "pubkey, ttl, lapse") from None  # fmt: skip
        if filed.agent != grant.agent:
            raise _Refused(403, "wrong_agent", "a request is sent with a grant of its agent")
        from nhidel.actions.approvals import new_approval_id

        now = int(self.enforcer.clock())
        verifier = self.enforcer.verifier
        try:
            sealed = grant_requests.open_sealed(
                self.enforcer.paths, verifier.audit_keys, verifier.ledger, new_approval_id(),
                filed, authenticated=True, via=grant_requests.DAEMON, by_grant=grant.id,
                created_at=now, lapses_at=grant_requests.lapse_for(lapse, now), now=now,
            )  # fmt: skip
        except IntegrityError:
            raise _Refused(503, Reason.INTEGRITY.value) from None
        answer = {"id": sealed.id, "fingerprint": filed.fingerprint,
                  "lapses_at": sealed.lapses_at}  # fmt: skip
        return web.json_response(answer, status=201)

    async def _outcome(self, approval_id: str, grant: Grant, wait: int) -> web.Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            found = self._look(approval_id, grant.agent)
            if found.status != PENDING or loop.time() >= deadline:
                return web.json_response({"id": approval_id, **found.to_json()})
            await asyncio.sleep(POLL_EVERY)

    def _look(self, approval_id: str, agent: str) -> grant_requests.Outcome:
        """The request's outcome, read through its seals."""
        verifier = self.enforcer.verifier
        key = verifier.audit_keys.seal_key
        now = int(self.enforcer.clock())
        row = verifier.ledger.approval(approval_id)
        if row is None:
            raise _Refused(404, "unknown_request")
        try:
            sealed = open_request(key, row)
            open_answer(key, sealed, row)
        except IntegrityError:
            raise _Refused(503, Reason.INTEGRITY.value) from None
        if sealed.kind != GRANT or sealed.agent != agent:
            raise _Refused(404, "unknown_request")
        return grant_requests.outcome_of(row, now=now)

    async def _take_in_files(self) -> None:
        verifier = self.enforcer.verifier
        while True:
            await asyncio.sleep(INTAKE_EVERY)
            try:
                grant_requests.take_in(
                    self.enforcer.paths, verifier.audit_keys, verifier.ledger,
                    now=int(self.enforcer.clock()), warn=_warn,
                )  # fmt: skip
            except NhidelError as failed:
                _warn(f"could not take in request files: {failed.message}")


def _warn(line: str) -> None:
    sys.stderr.write(f"nhidel proxy: {line}\n")
