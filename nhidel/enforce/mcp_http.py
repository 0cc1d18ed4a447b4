"""The MCP gateway over Streamable HTTP: every registered server at `/mcp/SERVER` of `nhidel
proxy`, for clients that bring nothing but a grant (SPEC.md "The MCP gateway").

The transport is the MCP specification's (2025-06-18, 2025-11-25; 2025-03-26 clients too): a
POST carries one JSON-RPC message; a request is answered with `application/json` when its
answer is the first thing the server says about it, else with a `text/event-stream` that
carries its progress and the server's requests first (and a keepalive comment while it is
quiet); a notification or response is answered 202. `initialize` opens a session
(`Mcp-Session-Id` on its answer), GET opens the session's stream for what the server says
unasked, DELETE ends it.

Each request, in this order (each refusal a JSON body `{"error": CODE}`, nothing relayed):
the Origin (403 `bad_origin` unless absent or loopback: DNS rebinding), the method (405),
`MCP-Protocol-Version` (400 for one it does not speak), a grant at all (401). Then:
- `initialize`, a POST without a session: the registration (404), the grant valid now (401,
  403, 503 as the broker's table says) and for an agent the registration admits (403); the
  session gets its own child server, started from the sealed registration with its secrets.
- in a session: the session (400 without its header, 404 unknown or ended), the grant readable
  (401; 503 `integrity`) and for the session's agent (403 `wrong_agent`: a session belongs to
  one agent for its whole life, and a grant for another is an authenticated request for
  something that agent may not touch, not a missing credential; 401 would send some clients
  into OAuth discovery). Then the body (415 unless JSON, 413 too large, 400 with a JSON-RPC
  error unless one JSON-RPC message) goes through the session's `Gateway` exactly as a
  stdio line would: the checks, records, redaction and denials (a revoked or expired grant's
  `denied:` result, HTTP 200) are the stdio gateway's own.

A session's child server is stopped when the client ends the session (DELETE), when it has been
idle (no request, none pending) for the idle limit, when its server exits, and when its grant
lapses (revoked, expired, used up) or its registration is removed or changed: noticed on the
next request or by a check every `recheck` seconds. A lapsed session stays (its requests are
denied, as the stdio gateway denies them; one with a grant valid again gets 404, since a
stopped server is not brought back) until it is ended or idle.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from nhidel.enforce import http_paths
from nhidel.enforce import mcp_policy as policy
from nhidel.enforce.http_paths import Refused, status_for
from nhidel.enforce.mcp_gateway import Gateway, server_environment
from nhidel.enforce.mcp_policy import Kind, Message, NotRelayed
from nhidel.errors import IntegrityError
from nhidel.registrations import REGISTERED_NAME
from nhidel.tokens.decision import Decision, Reason

if TYPE_CHECKING:
    from nhidel.enforce.context import Enforcer
    from nhidel.models import Grant
    from nhidel.registrations import McpServer

PROTOCOL_VERSIONS = frozenset({"2025-03-26", "2025-06-18", "2025-11-25"})
SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
KEEPALIVE = 15.0  # seconds between comments on a quiet event stream (proxies close idle ones)
BACKLOG = 256  # messages kept for a GET stream not yet open (the oldest go first)


class Noted(Protocol):
    """What the broker logs and records of one request (its `Exchange`)."""

    route: str | None
    path: str
    agent: str | None
    grant: str | None
    status: int
    bytes: int
    allowed: bool
    reason: str | None


def is_mcp_path(raw_path: str) -> bool:
    """Whether a request target is the MCP gateway's (`/mcp/...`), not a route's."""
    path = raw_path.partition("?")[0]
    return path == "/mcp" or path.startswith("/mcp/")


def origin_allowed(origin: str | None) -> bool:
    """Whether a request with this `Origin` may be served: none (not a browser), or a page
    of this machine's loopback names. A page elsewhere that made its own name resolve to
    127.0.0.1 (DNS rebinding) still sends its own name as its Origin."""
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and (parts.hostname or "") in LOOPBACK_HOSTS


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for a waiting POST: its text, and whether it is the request's answer."""

    data: str
    final: bool = False
    ok: bool = True  # a result (not an error), when final


class HttpClient:
    """A session's client side: the gateway's messages routed to the HTTP responses waiting
    for them. An answer goes to the POST that asked; a progress notification to the POST whose
    request named its token; anything else the server says to the GET stream, else to a
    waiting POST's stream, else kept (the newest `BACKLOG`) until a GET stream opens."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, Any], asyncio.Queue[Outgoing | None]] = {}
        self.progress: dict[tuple[str, Any], tuple[str, Any]] = {}  # token -> request
        self.stream: asyncio.Queue[Outgoing | None] | None = None  # the GET stream's
        self.backlog: deque[Outgoing] = deque(maxlen=BACKLOG)
        self.initialized = False  # the server answered initialize with a result

    def send(self, body: Mapping[str, Any], data: str) -> None:
        if "method" not in body:  # an answer: only ever on its own request's stream
            waiting = self.waiting.get(policy.id_key(body.get("id")))
            if waiting is not None:
                waiting.put_nowait(Outgoing(data, final=True, ok="result" in body))
            return  # (its POST is gone: the client stopped waiting)
        if body["method"] == "notifications/progress":
            params = body.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            request = self.progress.get(policy.id_key(token))
            if request is not None and request in self.waiting:
                self.waiting[request].put_nowait(Outgoing(data))
                return
        self.unasked(Outgoing(data))

    def unasked(self, item: Outgoing) -> None:
        """A message the server sent on its own (a request, a notification)."""
        if self.stream is None and self.waiting:
            next(reversed(self.waiting.values())).put_nowait(item)
        else:
            self.later(item)

    def later(self, item: Outgoing) -> None:
        """On the GET stream, else kept until one opens (never on a POST's)."""
        if self.stream is not None:
            self.stream.put_nowait(item)
        else:
            self.backlog.append(item)

    def expect(self, message: Message) -> asyncio.Queue[Outgoing | None]:
        """The queue the answer to request `message` (and its progress) will arrive on."""
        key = policy.id_key(message.id)
        waiting: asyncio.Queue[Outgoing | None] = asyncio.Queue()
        self.waiting[key] = waiting
        meta = message.params.get("_meta")
        if isinstance(meta, dict) and "progressToken" in meta:
            self.progress[policy.id_key(meta["progressToken"])] = key
        return waiting

    def forget(self, message: Message) -> None:
        key = policy.id_key(message.id)
        self.waiting.pop(key, None)
        self.progress = {t: k for t, k in self.progress.items() if k != key}

    def cancelled(self, request_id: Any) -> None:
        """The client cancelled a request: its POST ends without an answer."""
        waiting = self.waiting.get(policy.id_key(request_id))
        if waiting is not None:
            waiting.put_nowait(None)

    def open_stream(self) -> asyncio.Queue[Outgoing | None]:
        """A GET stream for the session (a newer one replaces an older), with what waited."""
        if self.stream is not None:
            self.stream.put_nowait(None)
        self.stream = asyncio.Queue()
        while self.backlog:
            self.stream.put_nowait(self.backlog.popleft())
        return self.stream

    def close(self) -> None:
        """The session ended: its GET stream ends."""
        if self.stream is not None:
            self.stream.put_nowait(None)
            self.stream = None


@dataclass
class Session:
    """One MCP session: its id, agent, server, gateway and client side."""

    id: str
    agent: str
    server: McpServer
    gateway: Gateway
    client: HttpClient
    last_seen: float = field(default_factory=time.monotonic)
    lapsed: str | None = None  # why its server was stopped while it stays (its grant lapsed)
    exits: asyncio.Task[None] | None = None  # waits for its server to exit on its own


class _Refused(Exception):  # noqa: N818 - an answer, not a crash
    def __init__(
        self,
        status: int,
        reason: str,
        headers: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason
        self.headers = dict(headers or {})
        self.body = body if body is not None else {"error": reason}

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=json.dumps(self.body).encode(),
            content_type="application/json",
            headers=self.headers,
        )


class McpHttp:
    """The `/mcp/SERVER` endpoints of one broker: its sessions and their child servers."""

    def __init__(
        self,
        enforcer: Enforcer,
        *,
        aud: str | None = None,
        idle: float = 1800.0,
        recheck: float = 1.0,
        max_body: int = policy.MAX_LINE,
        sessions_per_agent: int = 32,
        server_timeout: float = 30.0,
        log: IO[str] | None = None,
    ) -> None:
        self.enforcer = enforcer
        self.aud = aud
        self.idle = idle
        self.recheck = recheck
        self.max_body = min(max_body, policy.MAX_LINE)
        self.sessions_per_agent = sessions_per_agent
        self.server_timeout = server_timeout
        self.opening: dict[str, int] = {}  # agent -> sessions being opened (not yet counted)
        self.log = log if log is not None else sys.stderr
        self.sessions: dict[str, Session] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """End every session (their servers stopped) and the periodic check."""
        if self._watcher is not None:
            self._watcher.cancel()
        await asyncio.gather(
            *(self._end(s, "nhidel proxy stopped") for s in [*self.sessions.values()])
        )
        for task in [*self._tasks]:
            task.cancel()

    def end_streams(self) -> None:
        """End every GET stream (they never end on their own): before a shutdown waits for
        the requests in flight."""
        for session in self.sessions.values():
            session.client.close()

    # -- one request -------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest, note: Noted) -> web.StreamResponse:
        """Answer one request to `/mcp/...`."""
        name = request.raw_path.partition("?")[0].removeprefix("/mcp").removeprefix("/")
        note.route, note.path = "mcp", "/" + name
        try:
            response = await self._answer(request, name, note)
        except _Refused as refused:
            note.status, note.reason = refused.status, refused.reason
            answer = refused.response()
            note.bytes = answer.content_length or 0
            if request.body_exists and not request.content.at_eof():
                answer.force_close()  # a body not read: do not wait for the rest of it
            return answer
        note.allowed, note.status = True, response.status
        note.bytes = response.content_length or 0  # (a stream's are not counted)
        return response

    async def _answer(self, request: web.BaseRequest, name: str, note: Noted) -> web.StreamResponse:
        if not origin_allowed(request.headers.get("Origin")):
            raise _Refused(403, "bad_origin")
        if request.method not in ("POST", "GET", "DELETE"):
            raise _Refused(405, "method_not_allowed", {"Allow": "POST, GET, DELETE"})
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in PROTOCOL_VERSIONS:
            raise _Refused(400, "unsupported_protocol_version")
        try:
            token = http_paths.bearer_grant(request.headers.getall("Authorization", []))
        except Refused as refused:
            raise _Refused(400, refused.reason) from None
        if token is None:
            raise _Refused(401, "no_grant", {"WWW-Authenticate": "Bearer"})
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None and request.method == "POST":
            return await self._initialize(request, name, token, note)
        session = self._session(session_id, name)
        self._admit(session, token, note)
        session.last_seen = time.monotonic()
        session.gateway.token = token  # (what the lapse checks just below ask about)
        if session.lapsed is not None and session.gateway.lapsed() is None:
            # A grant valid again (a renewed one) cannot bring back a stopped server: the
            # session is over, and the client opens a new one with it.
            await self._end(session, session.lapsed)
            raise _Refused(404, "unknown_session")
        self._notice_lapse(session)
        if request.method == "GET":
            return await self._stream(request, session)
        if request.method == "DELETE":
            await self._end(session, "the client ended the session")
            return web.Response(status=204)
        message = await self._read(request)
        if message.method == "initialize":
            raise _Refused(400, "session_exists", body=policy.error_response(
                message.id, policy.INVALID_REQUEST, "initialize opens a session: send it "
                f"without {SESSION_HEADER}",
            ))  # fmt: skip
        return await self._post(request, session, message, token)

    async def _initialize(
        self, request: web.BaseRequest, name: str, token: str, note: Noted
    ) -> web.StreamResponse:
        """A POST without a session: it must be `initialize`, from an admitted agent's grant
        valid now; a new session with its own server answers it."""
        try:
            servers = self.enforcer.config().servers
        except IntegrityError:
            raise _Refused(503, Reason.INTEGRITY.value) from None
        server = servers.get(name) if REGISTERED_NAME.fullmatch(name) else None
        if server is None:
            raise _Refused(404, "unknown_server")
        decision = self.enforcer.verifier.check(token, any_scope=True, aud=self.aud)
        if decision.grant is not None:
            note.agent, note.grant = decision.grant.agent, decision.grant.id
        if not decision.allowed or decision.grant is None:
            raise _denied(decision)
        grant = decision.grant
        if not server.admits(grant.agent):
            raise _Refused(403, "agent_not_admitted")
        message = await self._read(request)
        if message.method != "initialize" or message.kind is not Kind.REQUEST:
            raise _Refused(400, "no_session", body=policy.error_response(
                message.id, policy.INVALID_REQUEST,
                f"no session: send initialize first, then {SESSION_HEADER} with every request",
            ))  # fmt: skip
        agent = grant.agent
        held = sum(s.agent == agent for s in self.sessions.values()) + self.opening.get(agent, 0)
        if held >= self.sessions_per_agent:
            raise _Refused(429, "too_many_sessions")
        self.opening[agent] = self.opening.get(agent, 0) + 1
        try:
            return await self._open(request, server, grant, message, token)
        finally:
            self.opening[agent] -= 1
            if not self.opening[agent]:
                del self.opening[agent]

    async def _open(
        self, request: web.BaseRequest, server: McpServer, grant: Grant, message: Message,
        token: str,
    ) -> web.StreamResponse:  # fmt: skip
        """A new session for `grant`'s agent, its own server started for it, answering
        `initialize` (504 when the server says nothing within `server_timeout`)."""
        try:
            values = self.enforcer.secrets(server.secrets.values())
        except IntegrityError:
            raise _Refused(503, Reason.INTEGRITY.value) from None
        from nhidel.enforce.redact import Redactor

        client = HttpClient()
        gateway = Gateway(
            self.enforcer,
            server,
            agent=grant.agent,
            token=token,
            renew_hint=f"ask the human for a new grant (nhidel grant --like {grant.id}) "
            "and start a new session with it",
            redactor=Redactor({n: values[n] for n in server.secrets.values()}),
            environment=server_environment(server, values, os.environ),
            client=client,
            log=self.log,
            aud=self.aud,
        )
        gateway.grant_id = grant.id
        try:
            await gateway.start()
        except OSError as exc:
            gateway.say(f"could not be started ({server.command[0]}): {exc.strerror or exc}")
            await gateway.stop()
            raise _Refused(502, "server_failed") from None
        session = Session(secrets.token_urlsafe(32), grant.agent, server, gateway, client)
        self.sessions[session.id] = session
        session.exits = asyncio.get_running_loop().create_task(self._when_server_exits(session))
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        try:
            response = await self._post(request, session, message, token, self.server_timeout)
        except TimeoutError:
            gateway.say(f"said nothing within {self.server_timeout:g}s of its start; stopping it")
            await self._end(session, "its server did not answer initialize")
            raise _Refused(504, "server_timeout") from None
        if not session.client.initialized:
            self._spawn(self._end(session, "its initialize failed"))
        return response

    def _session(self, session_id: str | None, name: str) -> Session:
        if session_id is None:
            raise _Refused(400, "no_session", body=policy.error_response(
                None, policy.INVALID_REQUEST, f"send initialize first, then {SESSION_HEADER}"
            ))  # fmt: skip
        session = self.sessions.get(session_id)
        if session is None or session.server.name != name:
            raise _Refused(404, "unknown_session")
        return session

    def _admit(self, session: Session, token: str, note: Noted) -> None:
        """The request's grant must be readable and its agent the session's."""
        decision = self.enforcer.verifier.check(token, any_scope=True, aud=self.aud)
        grant = decision.grant
        if grant is None:
            if decision.reason in http_paths.UNAVAILABLE:
                raise _Refused(503, (decision.reason or Reason.INTEGRITY).value)
            raise _denied(decision)
        note.agent, note.grant = grant.agent, grant.id
        if grant.agent != session.agent:
            raise _Refused(403, "wrong_agent")

    async def _read(self, request: web.BaseRequest) -> Message:
        """The body: one JSON-RPC message (400 with a JSON-RPC error when it is not one)."""
        if request.content_type != "application/json":
            raise _Refused(415, "not_json")
        if (request.content_length or 0) > self.max_body:
            raise _Refused(413, "body_too_large")
        chunks, seen = [], 0
        async for chunk in request.content.iter_any():
            seen += len(chunk)
            if seen > self.max_body:
                raise _Refused(413, "body_too_large")
            chunks.append(chunk)
        try:
            return policy.parse_message(b"".join(chunks))
        except NotRelayed as refused:
            raise _Refused(400, "not_json_rpc", body=policy.error_response(
                refused.request_id, refused.code, refused.message
            )) from None  # fmt: skip

    async def _post(
        self,
        request: web.BaseRequest,
        session: Session,
        message: Message,
        token: str,
        first_within: float | None = None,
    ) -> web.StreamResponse:
        """One message of the session, checked against this request's own grant: set on the
        gateway with nothing awaited before its checks (a renewed grant is taken so).
        TimeoutError when `first_within` is given and nothing comes back within it."""
        headers = {SESSION_HEADER: session.id}
        session.gateway.token = token
        if message.kind is not Kind.REQUEST:
            await session.gateway.client_message(message)
            if message.method == "notifications/cancelled":
                session.client.cancelled(message.params.get("requestId"))
            return web.Response(status=202, headers=headers)
        if policy.id_key(message.id) in session.client.waiting:
            # Its answer would be taken for the earlier one's.
            body = policy.error_response(
                message.id, policy.INVALID_REQUEST, "a request with this id is still pending"
            )
            return web.json_response(body, headers=headers)
        waiting = session.client.expect(message)
        try:
            await session.gateway.client_message(message)
            return await _answer_request(
                request, waiting, headers, message, session.client, first_within
            )
        finally:
            session.client.forget(message)

    async def _stream(self, request: web.BaseRequest, session: Session) -> web.StreamResponse:
        """GET: the session's stream of what the server says unasked."""
        queue = session.client.open_stream()
        response = _event_stream({SESSION_HEADER: session.id})
        await response.prepare(request)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if item is None:
                    break
                await response.write(_event(item.data))
            await response.write_eof()
        finally:
            if session.client.stream is queue:
                session.client.stream = None
        return response

    # -- ending sessions ---------------------------------------------------------------------

    def _notice_lapse(self, session: Session) -> None:
        """On each request: a session whose grant lapsed has its server stopped (in the
        background; the request itself is denied by the gateway's own checks)."""
        if session.lapsed is None:
            decision = session.gateway.lapsed()
            # A call that spent a grant's last use is still covered by it: let it finish.
            exhausted = decision is not None and decision.reason is Reason.USES_EXHAUSTED
            if decision is not None and not (exhausted and session.client.waiting):
                self._spawn(self._lapse(session, decision))

    async def _lapse(self, session: Session, decision: Decision) -> None:
        if session.lapsed is not None or session.id not in self.sessions:
            return
        reason = (decision.reason or Reason.INTEGRITY).value
        session.lapsed = f"its grant can do nothing more ({reason})"
        session.gateway.say(f"session of agent {session.agent}: {session.lapsed}; stopping")
        session.gateway.fail_pending(session.lapsed)
        await session.gateway.stop(session.lapsed)

    async def _end(self, session: Session, why: str) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        if session.exits is not None and session.exits is not asyncio.current_task():
            session.exits.cancel()  # (a server stopped on purpose is not one that exited)
        session.gateway.fail_pending(why)
        session.client.close()
        await session.gateway.stop(why)

    async def _when_server_exits(self, session: Session) -> None:
        await session.gateway.server_gone.wait()
        await self._end(session, f"MCP server {session.server.name} exited")

    async def _watch(self) -> None:
        """Every `recheck` seconds: end the idle sessions, stop the lapsed ones' servers."""
        while True:
            await asyncio.sleep(self.recheck)
            now = time.monotonic()
            for session in [*self.sessions.values()]:
                if not session.client.waiting and now - session.last_seen > self.idle:
                    session.gateway.say(f"session of agent {session.agent} idle: ending it")
                    await self._end(session, "the session was idle too long")
                else:
                    self._notice_lapse(session)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _answer_request(
    request: web.BaseRequest,
    waiting: asyncio.Queue[Outgoing | None],
    headers: dict[str, str],
    message: Message,
    client: HttpClient,
    first_within: float | None = None,
) -> web.StreamResponse:
    """The answer to one request: JSON when the answer is the first thing to send (and the
    client takes JSON), else an event stream of what comes first, then the answer. With
    `first_within`, TimeoutError (nothing sent yet) when nothing comes within it."""
    accept = request.headers.get("Accept", "")
    takes_events = "text/event-stream" in accept
    takes_json = not accept or "application/json" in accept or "*/*" in accept
    if first_within is not None:
        first: Outgoing | None = await asyncio.wait_for(waiting.get(), first_within)
    else:
        try:
            first = await asyncio.wait_for(waiting.get(), KEEPALIVE if takes_events else None)
        except TimeoutError:
            first = Outgoing("")  # nothing yet: open the stream, with a keepalive
    if first is None or (first.final and takes_json) or not takes_events:
        while first is not None and not first.final:  # (JSON only: the rest goes elsewhere)
            client.later(first)
            first = await waiting.get()
        if message.method == "initialize" and first is not None:
            client.initialized = first.ok
        data = first.data if first is not None else policy.dumps(policy.error_response(
            message.id, policy.INVALID_REQUEST, "cancelled by the client")).decode()  # fmt: skip
        return web.Response(body=data.encode(), content_type="application/json", headers=headers)
    response = _event_stream(headers)
    await response.prepare(request)
    item: Outgoing | None = first
    while item is not None:
        await response.write(_event(item.data) if item.data else b": keepalive\n\n")
        if item.final:
            if message.method == "initialize":
                client.initialized = item.ok
            break
        try:
            item = await asyncio.wait_for(waiting.get(), KEEPALIVE)
        except TimeoutError:
            item = Outgoing("")
    await response.write_eof()
    return response


def _event_stream(headers: Mapping[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    response.enable_chunked_encoding()
    return response


def _event(data: str) -> bytes:
    """One server-sent event (the JSON holds no newline: compact, its own escaped)."""
    return b"event: message\ndata: " + data.rstrip("\n").encode() + b"\n\n"


def _denied(decision: Decision) -> _Refused:
    """A grant refused outside a session's gateway: the broker's status table."""
    status = status_for(decision.reason)
    reason = decision.reason.value if decision.reason else "denied"
    return _Refused(status, reason, http_paths.challenge_for(status))
