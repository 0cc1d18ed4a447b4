"""The HTTP broker: `/ROUTE/PATH` with a grant in, the route's upstream with its secret out.

Per request, in this order (SPEC.md "The HTTP broker"; each refusal sends nothing upstream):
the target and headers it will forward at all (400, `http_paths`), a grant at all (401), the
sealed configuration still the one sealed (503 `integrity`), the route (404), the body's
declared size (413), the grant for `ROUTE:METHOD:PATH` (401/403/503), then, when an
approval mark of the agent's sealed ceiling covers that scope, a human's yes (the body read
whole first: the approval is for this exact request; held up to `--approval-hold`, then 403
`approval_pending` with `Retry-After`; the grant checked again after the yes); a use spent
durably as the request goes on when the grant has `max_uses`. Then the upstream URL is built from
the route, the request streamed to it over verified TLS (the route's own CA when it has one,
else the system's; never a proxy or CA variable from the environment), and the answer
streamed back with the injected secret redacted from its headers and body. A redirect is
handed back, not followed. A streamed answer is cut when its grant stops covering it (checked
between chunks and once a second on a quiet stream). Each request is one decision record and
one log entry.

`/mcp/...` is the MCP gateway's (nhidel.enforce.mcp_http), `/requests...` the grant requests'
(nhidel.enforce.requests_endpoint): each handed to it whole.

aiohttp is imported only here, in mcp_http and in requests_endpoint (and by the command that
runs this): other commands never pay for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from nhidel.actions.approvals import GO, HELD, WITHDRAWN, Verdict
from nhidel.enforce import http_paths, mcp_http, requests_endpoint
from nhidel.enforce.approval_hold import reason_of, refusal_text
from nhidel.enforce.http_paths import Refused, Target, status_for
from nhidel.errors import IntegrityError, NhidelError, UsageError
from nhidel.integrity.approvals import Call
from nhidel.registrations import RESERVED_ROUTE_NAMES
from nhidel.scopes import Scope, parse_scope
from nhidel.tokens.decision import Decision, Reason

if TYPE_CHECKING:
    from nhidel.enforce.context import Enforcer
    from nhidel.enforce.redact import Redactor
    from nhidel.keys.keystore import KeyStore
    from nhidel.paths import Paths
    from nhidel.registrations import Route


@dataclass(frozen=True)
class Limits:
    """What one broker allows; the defaults suit a person's agents on one machine."""

    max_body: int = 1 << 30  # a request body larger than this is 413
    max_in_flight: int = 256  # requests at once; more are 429
    upstream_timeout: float = 60.0  # connect, send the body, and get the answer's headers: 504
    recheck_every: float = 1.0  # a quiet stream's grant is checked this often
    flush_idle: float = 0.2  # a quiet stream's bytes held for redaction go after this long
    shutdown_grace: float = 10.0  # on SIGTERM, how long in-flight requests may take to finish
    session_idle: float = 1800.0  # an MCP session with no request for this long is ended
    sessions_per_agent: int = 32  # MCP sessions one agent may hold open; more are 429
    server_timeout: float = 30.0  # a session's MCP server silent this long after start: 504


@dataclass
class Exchange:
    """What one request's log line and decision record say (never a token, body or secret)."""

    method: str
    path: str  # without the query
    route: str | None = None
    agent: str | None = None
    grant: str | None = None
    status: int = 0
    bytes: int = 0
    allowed: bool = False
    reason: str | None = None
    scope: str | None = None  # ROUTE:METHOD:PATH, once the path is one the broker checks
    approval: str | None = None  # the approval request it was held for, if any
    started: float = field(default_factory=time.perf_counter)

    def log_fields(self) -> dict[str, Any]:
        """The log entry: time, route, method, path, status, bytes, duration, agent, grant id
        (short), decision and reason."""
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "decision": "allowed" if self.allowed else "denied",
            "status": self.status,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "bytes": self.bytes,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 1),
            "agent": self.agent,
            "grant": self.grant[:10] if self.grant else None,
            "reason": self.reason,
        }


class _Denied(Exception):  # noqa: N818 - an answer, not a crash
    def __init__(
        self,
        status: int,
        reason: str,
        headers: dict[str, str] | None = None,
        said: dict[str, str] | None = None,  # more of the JSON body than `error`
    ) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}
        self.said = said or {}


class _Cut(Exception):  # noqa: N818 - a stream ended on purpose
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Broker:
    """The request handler, with what it keeps between requests: the enforcer (opened on the
    loop's thread: SQLite connections stay on theirs), the upstream connection pool and the
    TLS contexts by CA."""

    def __init__(
        self,
        enforcer: Enforcer,
        *,
        aud: str | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
        limits: Limits = Limits(),
    ) -> None:
        self.enforcer = enforcer
        self.aud = aud
        self.log = log
        self.limits = limits
        self.in_flight = 0
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[str | None, ssl.SSLContext] = {}
        self._redactors: dict[str, tuple[str, Redactor]] = {}  # secret name -> (value, it)
        self.mcp = mcp_http.McpHttp(
            enforcer, aud=aud, idle=limits.session_idle, recheck=limits.recheck_every,
            max_body=limits.max_body, sessions_per_agent=limits.sessions_per_agent,
            server_timeout=limits.server_timeout,
        )  # fmt: skip
        self.requests = requests_endpoint.RequestsEndpoint(enforcer, aud=aud)

    async def start(self) -> None:
        # trust_env=False: no HTTP(S)_PROXY, no .netrc. No cookie jar: a cookie one upstream
        # set must not ride along on another agent's request.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.limits.max_in_flight),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.limits.upstream_timeout),
        )
        self.requests.start()

    async def close(self) -> None:
        await self.requests.close()
        await self.mcp.close()
        if self._session is not None:
            await self._session.close()

    # -- one request ---------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request (aiohttp calls this for every request on every connection)."""
        if request.raw_path == "/healthz" and request.method == "GET":
            return web.Response(text="ok\n")  # says nothing else: no version, no routes
        exchange = Exchange(request.method, request.raw_path.partition("?")[0])
        if mcp_http.is_mcp_path(request.raw_path):
            return await self._mcp(request, exchange)
        if requests_endpoint.is_requests_path(request.raw_path):
            return await self.requests.handle(request)  # (its records are grant.requested)
        self.in_flight += 1
        try:
            return await self._answer(request, exchange)
        except _Denied as denied:
            response = _error(denied.status, denied.reason, denied.headers, denied.said)
            exchange.status, exchange.reason = denied.status, denied.reason
            exchange.bytes = response.content_length or 0
            if request.body_exists and not request.content.at_eof():
                response.force_close()  # a body not read: do not wait for the rest of it
            return response
        except BaseException:
            exchange.status = exchange.status or 500  # a bug, or cancelled at shutdown
            raise
        finally:
            self.in_flight -= 1
            self._finish(exchange)

    async def _mcp(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """An MCP request: its gateway's own records are the decisions; a request refused
        before it reached a session's gateway is recorded here, as a broker's is."""
        try:
            return await self.mcp.handle(request, exchange)
        finally:
            if exchange.allowed:
                if self.log is not None:
                    self.log(exchange.log_fields())
            else:
                self._finish(exchange)

    async def _answer(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        try:
            target = http_paths.parse_target(request.raw_path, request.method)
            exchange.route = target.route
            exchange.path = "/" + target.path if target.path else "/"
            refusal = http_paths.refused_request_header(request.headers.keys())
            if refusal is not None:
                raise refusal
            token = http_paths.bearer_grant(request.headers.getall("Authorization", []))
            scope = parse_scope(target.scope(request.method))
            exchange.scope = str(scope)
        except Refused as refused:
            raise _Denied(400, refused.reason) from None
        except UsageError:
            raise _Denied(400, "bad_path") from None  # a path no scope can name (a '*' inside)
        if self.in_flight > self.limits.max_in_flight:
            raise _Denied(429, "too_many_requests", {"Retry-After": "1"})
        if token is None:
            raise _Denied(401, "no_grant", {"WWW-Authenticate": "Bearer"})
        route = self._route(target)
        if (request.content_length or 0) > self.limits.max_body:
            raise _Denied(413, "body_too_large")
        decision = self.enforcer.verifier.check(token, [scope], aud=self.aud)
        if decision.grant is not None:
            exchange.agent, exchange.grant = decision.grant.agent, decision.grant.id
        if not decision.allowed:
            raise _deny(decision)
        body: bytes | None = None  # read whole only when a human must approve this request
        try:
            mark = self.enforcer.approvals.mark_for(exchange.agent or "", [scope])
        except IntegrityError:
            raise _Denied(503, Reason.INTEGRITY.value) from None
        if mark is not None:
            body = await self._whole_body(request)
            await self._held(request, exchange, target, mark, body)
            # Checked again (it may have been revoked during the hold), and only now, as the
            # request goes on, a use spent; the route may have been removed or changed too.
            decision = self.enforcer.check(token, scope, aud=self.aud)
            route = self._route(target)
        else:
            decision = self.enforcer.spend(token, [scope], decision, aud=self.aud)
        if not decision.allowed:
            raise _deny(decision)
        try:
            secret = self.enforcer.secrets([route.secret])[route.secret]
        except IntegrityError:
            raise _Denied(503, Reason.INTEGRITY.value) from None
        exchange.allowed = True
        return await self._forward(request, exchange, route, target, secret, token, scope, body)

    def _route(self, target: Target) -> Route:
        try:
            route = self.enforcer.config().routes.get(target.route)
        except IntegrityError:
            raise _Denied(503, Reason.INTEGRITY.value) from None
        if route is None or route.name in RESERVED_ROUTE_NAMES:  # (an older nhidel's: doctor says)
            raise _Denied(404, "unknown_route")
        return route

    async def _whole_body(self, request: web.BaseRequest) -> bytes:
        """The request body, read whole (bounded by the body limit) so that the approval is
        for these exact bytes and these same bytes go upstream."""
        if not request.body_exists:
            return b""
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # allowed so far
        read = bytearray()
        async for chunk in request.content.iter_any():
            read += chunk
            if len(read) > self.limits.max_body:
                raise _Denied(413, "body_too_large")
        return bytes(read)

    async def _held(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        target: Target,
        mark: Scope,
        body: bytes,
    ) -> None:
        """Hold a request an approval mark covers until a yes (it returns), or refuse it: a
        no, no answer in time, or still none past the hold (`approval_pending`). A client
        that goes away while held withdraws the request."""
        assert exchange.agent is not None and exchange.grant is not None  # noqa: S101 - granted
        approvals = self.enforcer.approvals
        call = Call(exchange.agent, exchange.grant, target.route,
                    f"{request.method} {exchange.path}", (),
                    http_paths.request_sha256(request.method, target, body))  # fmt: skip
        arguments = http_paths.request_arguments(target.query, request.content_type, body)
        held: list[Verdict] = []
        try:
            verdict = await approvals.hold(
                call, via="http", mark=mark, arguments=arguments, opened=held.append
            )
        except asyncio.CancelledError:  # the client went away (aiohttp cancels its handler)
            with contextlib.suppress(NhidelError):
                for waiting in held:
                    approvals.withdraw(waiting, WITHDRAWN)
            exchange.approval = held[0].request.id if held and held[0].request else None
            exchange.reason = Reason.APPROVAL_PENDING.value + " (withdrawn)"
            raise
        except NhidelError:
            raise _Denied(503, Reason.INTEGRITY.value) from None
        exchange.approval = verdict.approval or (verdict.request.id if verdict.request else None)
        if verdict.outcome != GO:
            raise _approval_refusal(verdict, int(self.enforcer.clock()))

    async def _forward(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        route: Route,
        target: Target,
        secret: str,
        token: str,
        scope: Scope,
        whole: bytes | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream (its body streamed, or `whole` when it was read for an
        approval) and relay the answer."""
        assert self._session is not None  # noqa: S101 - started before it serves
        headers = http_paths.forward_request_headers(
            request.headers.items(), request.headers.getall("Connection", []), route.header
        )
        headers.append((route.header, route.format.replace("{secret}", secret)))
        headers.append(("Accept-Encoding", http_paths.ACCEPT_ENCODING))
        body: Any = whole or None
        if whole is None:
            body = self._body(request, exchange) if request.body_exists else None
            if request.headers.get("Expect", "").lower() == "100-continue":
                # Only now, allowed: a client (curl) that waits for this sends its body now.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            async with asyncio.timeout(self.limits.upstream_timeout):
                upstream = await self._session.request(
                    request.method,
                    _upstream_url(route, target),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    ssl=self._ssl_context(route.ca_pem),
                    proxy=None,
                )
        except (_Cut, TimeoutError, aiohttp.ClientError, OSError, ssl.SSLError, ValueError) as exc:
            raise _upstream_failure(exc, exchange) from None
        async with upstream:
            return await self._relay(request, exchange, route, secret, token, scope, upstream)

    async def _relay(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        route: Route,
        secret: str,
        token: str,
        scope: Scope,
        upstream: aiohttp.ClientResponse,
    ) -> web.StreamResponse:
        if not http_paths.decodable(upstream.headers.getall("Content-Encoding", [])):
            raise _Denied(502, "undecodable_body")
        redactor = self._redactor(route.secret, secret)
        found: list[str] = []
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in http_paths.forward_response_headers(
            upstream.headers.items(), upstream.headers.getall("Connection", [])
        ):
            _, hit = redactor.redact_text(name)
            if hit:  # a secret as a header's name: the header is dropped
                found.extend(hit)
                continue
            clean, hit = redactor.redact_text(value)
            headers.add(name, clean)
            found.extend(hit)
        reason, hit = redactor.redact_text(upstream.reason or "")
        found.extend(hit)
        response = web.StreamResponse(status=upstream.status, reason=reason or None)
        response.headers.extend(headers)
        exchange.status = upstream.status
        await response.prepare(request)
        stream = redactor.stream()
        watch = asyncio.get_running_loop().create_task(self._watch(token, scope, upstream))
        try:
            while (chunk := await self._next_chunk(upstream, stream)) != b"":
                self._still_covered(token, scope)
                out = stream.finish() if chunk is None else stream.feed(chunk)
                if out:
                    await response.write(out)
                    exchange.bytes += len(out)
            if watch.done():  # the watcher closed the upstream: its end is a cut, not the end
                raise _Cut(watch.result())
            tail = stream.finish()
            if tail:
                await response.write(tail)
                exchange.bytes += len(tail)
            await response.write_eof()
        except (_Cut, aiohttp.ClientError, ConnectionError) as stopped:
            lapsed = watch.done() and not watch.cancelled()
            exchange.reason = watch.result() if lapsed else getattr(stopped, "reason", "cut")
            _abort(request)  # no final chunk: the client sees a cut, not a complete answer
        finally:
            watch.cancel()
            found.extend(n for n in stream.names_hit if n not in found)
            for name in dict.fromkeys(found):
                self._record_redaction(exchange, name)
        return response

    async def _next_chunk(self, upstream: aiohttp.ClientResponse, stream: Any) -> bytes | None:
        """The upstream's next bytes (b"" at the end), or None when the stream has gone quiet
        while the redactor holds bytes back: an event of a server-sent stream must not wait
        for the next one. Flushing there means a secret the upstream sends split around a
        pause of `limits.flush_idle` is not recognised (a deliberate trade, in the README)."""
        if not stream.held:
            return await upstream.content.readany()
        try:
            async with asyncio.timeout(self.limits.flush_idle):
                return await upstream.content.readany()
        except TimeoutError:
            return None

    async def _body(self, request: web.BaseRequest, exchange: Exchange) -> Any:
        """The request body as it arrives, never held whole; cut past the body limit (aiohttp
        reports the cut as a failed upload: `exchange.reason` says why)."""
        seen = 0
        async for chunk in request.content.iter_any():
            seen += len(chunk)
            if seen > self.limits.max_body:
                exchange.reason = "body_too_large"
                raise _Cut("body_too_large")
            yield chunk

    def _still_covered(self, token: str, scope: Scope) -> None:
        """Between chunks: the grant must still cover the request (not revoked or expired)."""
        reason = self._lapse(token, scope)
        if reason is not None:
            raise _Cut(reason)

    def _lapse(self, token: str, scope: Scope) -> str | None:
        decision = self.enforcer.verifier.check(token, [scope], aud=self.aud)
        # Its use was spent to start this request: a grant used up by it still covers it.
        if decision.allowed or decision.reason is Reason.USES_EXHAUSTED:
            return None
        return decision.reason.value if decision.reason else "denied"

    async def _watch(self, token: str, scope: Scope, upstream: aiohttp.ClientResponse) -> str:
        """On a quiet stream: check the grant once a second, and end the stream when it lapses
        (closing the upstream wakes the relay loop)."""
        while True:
            await asyncio.sleep(self.limits.recheck_every)
            reason = self._lapse(token, scope)
            if reason is not None:
                upstream.close()
                return reason

    def _ssl_context(self, ca_pem: str | None) -> ssl.SSLContext:
        context = self._contexts.get(ca_pem)
        if context is None:
            context = self._contexts[ca_pem] = tls_context(ca_pem)
        return context

    def _redactor(self, name: str, value: str) -> Redactor:
        from nhidel.enforce.redact import Redactor

        cached = self._redactors.get(name)
        if cached is not None and cached[0] == value:
            return cached[1]
        redactor = Redactor({name: value})  # built once per value: a replaced one is dropped
        self._redactors[name] = (value, redactor)
        return redactor

    def _record_redaction(self, exchange: Exchange, name: str) -> None:
        self.enforcer.record(
            "secret.redacted",
            agent=exchange.agent,
            grant=exchange.grant,
            route=exchange.route,
            secret=name,
        )

    def _finish(self, exchange: Exchange) -> None:
        entry = exchange.log_fields()
        self.enforcer.record(
            "http.allowed" if exchange.allowed else "http.denied",
            agent=exchange.agent,
            grant=exchange.grant,
            scopes=None if exchange.scope is None else [exchange.scope],
            reason=exchange.reason,
            route=exchange.route,
            method=exchange.method,
            path=exchange.path,
            status=exchange.status,
            bytes=exchange.bytes,
            duration_ms=entry["duration_ms"],
            **({} if exchange.approval is None else {"approval": exchange.approval}),
        )
        if self.log is not None:
            self.log(entry)


def _deny(decision: Decision) -> _Denied:
    status = status_for(decision.reason)
    reason = decision.reason.value if decision.reason else "denied"
    return _Denied(status, reason, http_paths.challenge_for(status))


def _approval_refusal(verdict: Verdict, now: int) -> _Denied:
    """403 for a held request that does not go on, in the denial format, naming the approval
    request; `approval_pending` says when to retry and what the human must run."""
    reason = reason_of(verdict)
    status = status_for(reason)
    headers = http_paths.challenge_for(status)
    ident = verdict.request.id if verdict.request is not None else "?"
    said = {"approval": ident}
    if verdict.outcome == HELD and verdict.request is not None:
        left = verdict.request.lapses_at - now
        headers["Retry-After"] = str(http_paths.approval_retry_after(left))
        said["hint"] = f"run nhidel approve {ident}, then retry"
    else:
        said["detail"] = refusal_text(verdict)
    return _Denied(status, reason.value if reason else "denied", headers, said)


def _upstream_failure(exc: BaseException, exchange: Exchange) -> _Denied:
    if exchange.reason == "body_too_large":
        return _Denied(413, "body_too_large")
    if isinstance(exc, TimeoutError):
        return _Denied(504, "upstream_timeout")
    return _Denied(502, "upstream_failed")


def _error(
    status: int, reason: str, headers: dict[str, str], said: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": reason, **(said or {})}).encode(),
        content_type="application/json",
        headers=headers,
    )


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _upstream_url(route: Route, target: Target) -> URL:
    """The route's own scheme and authority, its path prefix, then the checked path and the
    query as sent; nothing from the request can reach the authority."""
    parts = urlsplit(route.url)
    path = http_paths.upstream_path(route.url, target)
    text = f"{parts.scheme}://{parts.netloc}{path}"
    return URL(f"{text}?{target.query}" if target.query else text, encoded=True)


def tls_context(ca_pem: str | None) -> ssl.SSLContext:
    """Verified TLS: only `ca_pem` when the route has its own CA, else the system's store as
    OpenSSL was built to find it (SSL_CERT_FILE and SSL_CERT_DIR are ignored: a variable in
    the broker's environment must not decide which upstream it trusts)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname checked, certificate required
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem is not None:
        context.load_verify_locations(cadata=ca_pem)
        return context
    where = ssl.get_default_verify_paths()
    cafile = where.openssl_cafile if Path(where.openssl_cafile).is_file() else None
    capath = where.openssl_capath if Path(where.openssl_capath).is_dir() else None
    if cafile or capath:
        context.load_verify_locations(cafile=cafile, capath=capath)
    return context


# -- listening ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    """Where a broker listens: a bound socket, and how a client names it."""

    sock: socket.socket
    url: str  # http://HOST:PORT, or unix:PATH
    socket_path: Path | None = None

    def route_url(self, route: str) -> str:
        """The base URL a tool uses for `route` (TCP listeners; a socket's client adds it)."""
        base = self.url if self.socket_path is None else "http://localhost"
        return f"{base}/{route}"


def listen_tcp(host: str, port: int) -> Listener:
    """A TCP listener on HOST:PORT (port 0: one the system picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return Listener(sock, f"http://{shown}:{bound}")


def listen_unix(path: Path) -> Listener:
    """A Unix socket at `path`, 0600 from the moment it exists (a stale one of ours, with
    nobody listening, is replaced; a live one is refused)."""
    import os
    import stat

    try:
        parent = os.stat(path.parent)
    except OSError as exc:
        raise UsageError(f"cannot use {path.parent}: {exc.strerror}", None) from None
    if parent.st_uid != os.getuid() or parent.st_mode & 0o022:
        # Whoever may write there could swap the socket for their own and collect grants.
        raise UsageError(
            f"{path.parent} is not a directory only you can write to",
            "put the socket in a directory of your own with mode 700",
        )
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
            raise UsageError(f"{path} exists and is not a socket of yours", "choose another path")
        if _answers(path):
            raise UsageError(
                f"a broker is already listening on {path}", "stop it, or give another --socket"
            )
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    return Listener(sock, f"unix:{path}", path)


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def serve(
    listener: Listener,
    open_enforcer: Callable[[], Enforcer],
    *,
    aud: str | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    limits: Limits = Limits(),
    ready: Callable[[], None] | None = None,
    stop: asyncio.Event,
) -> None:
    """Serve on `listener` until `stop` is set; then stop accepting, let in-flight requests
    finish (for up to `limits.shutdown_grace`; then their connections are closed) and close
    everything."""
    from nhidel.hardening import protect_secrets_in_memory

    protect_secrets_in_memory()  # it will hold secrets: no core file, no same-user ptrace
    _quiet_aiohttp_logs()
    enforcer = open_enforcer()
    broker = Broker(enforcer, aud=aud, log=log, limits=limits)
    try:
        await broker.start()
        # lingering_time: after refusing a body (413, a denial) read what is still coming for
        # at most a second, so the client sees the answer rather than a reset.
        # handler_cancellation: a client that goes away ends its request at once (a stream
        # it no longer reads is closed upstream too, not kept open until the upstream speaks).
        server = web.Server(
            broker.handle, access_log=None, lingering_time=1.0, handler_cancellation=True
        )
        runner = web.ServerRunner(server, shutdown_timeout=limits.shutdown_grace)
        await runner.setup()
        site = web.SockSite(runner, listener.sock)
        await site.start()
        if ready is not None:
            ready()
        try:
            await stop.wait()
        finally:
            broker.mcp.end_streams()  # (an MCP session's GET stream would never finish)
            await runner.cleanup()  # stops accepting, waits for requests in flight (bounded)
    finally:
        await broker.close()
        enforcer.close()
        if listener.socket_path is not None:
            with contextlib.suppress(OSError):
                listener.socket_path.unlink()


def _quiet_aiohttp_logs() -> None:
    """aiohttp logs a request it could not parse with its bytes (headers, a grant among them)
    and a traceback; the broker's own line per request is its log."""
    import logging

    for name in ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.client"):
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.addHandler(logging.NullHandler())


class RunningBroker:
    """A broker on its own thread and event loop, for a caller that is not asyncio (`exec
    --proxy` runs one for its child's lifetime; tests run one per test):

        running = start_broker(paths, keystore, listen_tcp("127.0.0.1", 0))
        running.url                    # http://127.0.0.1:PORT, the child's proxy URL
        running.route_url("github")    # http://127.0.0.1:PORT/github, a route's base URL
        ...                            # run the child
        running.stop()                 # stops accepting, finishes requests in flight
    """

    def __init__(self, listener: Listener, thread: threading.Thread) -> None:
        self.listener = listener
        self.url = listener.url
        self._thread = thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.failure: BaseException | None = None

    def route_url(self, route: str) -> str:
        return self.listener.route_url(route)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish in-flight requests, and wait for the thread."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


def start_broker(
    paths: Paths,
    keystore: KeyStore,
    listener: Listener,
    *,
    aud: str | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    limits: Limits = Limits(),
) -> RunningBroker:
    """Start a broker on `listener` in a thread; return once it accepts requests."""
    from nhidel.enforce.context import Enforcer

    started = threading.Event()
    running: RunningBroker

    def main() -> None:
        loop = asyncio.new_event_loop()
        running._loop, running._stop = loop, asyncio.Event()
        try:
            loop.run_until_complete(
                serve(
                    listener,
                    lambda: Enforcer(paths, keystore),
                    aud=aud,
                    log=log,
                    limits=limits,
                    ready=started.set,
                    stop=running._stop,
                )
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the starter
            running.failure = exc
        finally:
            started.set()
            loop.close()

    thread = threading.Thread(target=main, name="nhidel-broker", daemon=True)
    running = RunningBroker(listener, thread)
    thread.start()
    started.wait()
    if running.failure is not None:
        raise running.failure
    return running


@contextlib.contextmanager
def running_broker(
    paths: Paths, keystore: KeyStore, listener: Listener, **options: Any
) -> Iterator[RunningBroker]:
    """`start_broker` for the length of a `with` block."""
    broker = start_broker(paths, keystore, listener, **options)
    try:
        yield broker
    finally:
        broker.stop()
