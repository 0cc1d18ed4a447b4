"""`nhidel mcp connect SOCKET SERVER`: a stdio MCP client in a sandbox reaches a registered
server through the daemon's Unix socket (SPEC.md "The MCP gateway"), with its grant alone.

It is a transport adapter and nothing more: every check, record, redaction and refusal is the
daemon's (`mcp_http.py`), so it reads no nhidel file, opens no keystore and needs no nhidel
home. Each line on stdin is one JSON-RPC message, POSTed to `/mcp/SERVER` as the Streamable
HTTP transport asks (the grant from `NHIDEL_TOKEN`; the session id and protocol version once
`initialize` gave them); what comes back (a JSON body, or each event of a stream) goes to
stdout, a line each. After `notifications/initialized` it opens the session's GET stream for
what the server says unasked. Messages after `initialize` are posted at once, each on its own
request, as the SDK's own HTTP client posts them: a long call holds up no cancellation or ping.

A request the daemon refuses with an HTTP status is answered with a JSON-RPC error naming the
status and reason (the daemon's own JSON-RPC error when it sent one), and a line on stderr.
When the session is gone (404, the GET stream ended) or the daemon cannot be reached, the
relay ends with an error: the client sees its server exit and may start it again, opening a
new session. End of stdin ends the session (DELETE).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

import aiohttp

from nhidel.enforce import mcp_policy as policy
from nhidel.enforce.mcp_gateway import LineClient, client_reader
from nhidel.enforce.mcp_http import PROTOCOL_VERSIONS, SESSION_HEADER, VERSION_HEADER
from nhidel.enforce.mcp_policy import Kind, Message, NotRelayed

CONNECT_TIMEOUT = 10.0  # seconds to reach the daemon's socket; a call itself may take any time
INTERNAL_ERROR = -32603  # JSON-RPC's: the daemon refused a request for a reason not the grant's


@dataclass
class Ending:
    """How a relay ended: the client closed stdin, a signal arrived, or the session is over."""

    signum: int | None = None
    why: str | None = None  # set when the session is over (the relay failed)


class Relay:
    """One session with the daemon, relayed to a stdio client."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        token: str,
        out: LineClient,
        say: Callable[[str], None],
    ) -> None:
        self.http, self.url, self.out, self.say = http, url, out, say
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
        }
        self.over = asyncio.Event()
        self.why: str | None = None
        self.stream: asyncio.Task[None] | None = None

    def end(self, why: str) -> None:
        if not self.over.is_set():
            self.why = why
            self.over.set()

    async def post(self, message: Message, line: bytes) -> None:
        """Send one client message (`line`, as the client wrote it); relay what comes back.
        Never raises: a failure is answered (a request gets an error) or ends the session."""
        try:
            async with self.http.post(
                self.url,
                data=line,
                headers={**self.headers, "Content-Type": "application/json"},
            ) as response:
                await self._answered(message, response)
        except aiohttp.ClientError as exc:
            self.end(f"the daemon could not be reached: {_why(exc)}")
        if message.method == "notifications/initialized" and self.stream is None:
            self.stream = asyncio.get_running_loop().create_task(self._listen())

    async def _answered(self, message: Message, response: aiohttp.ClientResponse) -> None:
        if message.method == "initialize" and SESSION_HEADER in response.headers:
            self.headers[SESSION_HEADER] = response.headers[SESSION_HEADER]
        if response.status == 404 and SESSION_HEADER in self.headers:
            self.end("the daemon ended the session (404 unknown_session)")
        if response.status >= 400:
            await self._refused(message, response)
            return
        if response.content_type == "text/event-stream":
            await self._events(response, message)
        elif response.content_type == "application/json":
            body = await response.read()
            self.write_text(body.decode("utf-8", "replace"))
            if message.method == "initialize":
                self._negotiated(body)

    async def _refused(self, message: Message, response: aiohttp.ClientResponse) -> None:
        text = (await response.read()).decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and "jsonrpc" in body:
            self.write(body)  # the daemon's own JSON-RPC error for this message
            return
        reason = body.get("error") if isinstance(body, dict) else None
        summary = f"HTTP {response.status} {reason or response.reason or ''}".strip()
        self.say(f"the daemon refused {message.method or 'a message'}: {summary}")
        if message.kind is Kind.REQUEST:
            code = policy.DENIED if response.status in (401, 403) else INTERNAL_ERROR
            self.write(policy.error_response(message.id, code, f"nhidel proxy: {summary}"))

    def _negotiated(self, body: bytes) -> None:
        """Later requests name the protocol version the server chose (when the daemon
        speaks it; else they name none, and the daemon assumes its default)."""
        try:
            version = json.loads(body)["result"]["protocolVersion"]
        except (ValueError, KeyError, TypeError):
            return
        if version in PROTOCOL_VERSIONS:
            self.headers[VERSION_HEADER] = version

    async def _events(self, response: aiohttp.ClientResponse, message: Message | None) -> None:
        """Each event's data to the client, a line each (an SSE comment is a keepalive)."""
        data: list[str] = []
        async for raw in response.content:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line and data:
                text = "\n".join(data)
                data.clear()
                self.write_text(text)
                if message is not None and message.method == "initialize":
                    self._negotiated(text.encode())

    async def _listen(self) -> None:
        """The session's GET stream: what the server says unasked, until the session ends."""
        try:
            async with self.http.get(self.url, headers=self.headers) as response:
                if response.status == 405:
                    return  # a daemon without one: answers come on their POSTs only
                if response.status >= 400:
                    self.end(f"the daemon refused the session's stream (HTTP {response.status})")
                    return
                await self._events(response, None)
        except aiohttp.ClientError as exc:
            self.end(f"the daemon could not be reached: {_why(exc)}")
            return
        self.end("the daemon ended the session")

    async def close(self) -> None:
        """End the session (DELETE), once the client is gone."""
        if self.stream is not None:
            self.stream.cancel()
        if SESSION_HEADER in self.headers and self.why is None:
            try:
                async with self.http.delete(self.url, headers=self.headers):
                    pass
            except aiohttp.ClientError:
                pass  # (the daemon is gone: so is the session)

    def write(self, body: dict[str, Any]) -> None:
        self.out.send(body, policy.dumps(body).decode() + "\n")

    def write_text(self, text: str) -> None:
        """One message the daemon sent, as one line (compact JSON has no newline in it)."""
        text = text.strip()
        if not text:
            return
        if "\n" in text:
            try:
                text = policy.dumps(json.loads(text)).decode()
            except ValueError:
                return  # not a message: nothing a line-framed client could take
        self.out.send({}, text + "\n")


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def relay(
    socket_path: str,
    server: str,
    token: str,
    client_in: IO[bytes],
    client_out: IO[bytes],
    say: Callable[[str], None],
) -> Ending:
    """Relay the client's stdio to `/mcp/SERVER` of the daemon at `socket_path` until the
    client closes stdin, a terminating signal arrives, or the session is over."""
    loop = asyncio.get_running_loop()
    ending = Ending()
    stop = asyncio.Event()

    def signalled(signum: int) -> None:
        ending.signum = signum
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, signalled, signum)
    pump: list[asyncio.Task[None]] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
    connector = aiohttp.UnixConnector(path=socket_path)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            url = f"http://localhost/mcp/{server}"
            session = Relay(http, url, token, LineClient(client_out), say)
            reader = await client_reader(client_in, pump)
            waits: list[asyncio.Task[Any]] = [
                loop.create_task(session.over.wait()),
                loop.create_task(stop.wait()),
            ]
            try:
                await _pump(reader, session, waits)
            finally:
                for waiting in waits:
                    waiting.cancel()
                await session.close()
            ending.why = session.why
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        for task in pump:
            task.cancel()
    return ending


async def _pump(
    reader: asyncio.StreamReader, session: Relay, waits: list[asyncio.Task[Any]]
) -> None:
    """Read the client's lines and post each: `initialize` waited for (what follows needs its
    session), the rest at once; until end of stdin or one of `waits` completes."""
    requests: set[asyncio.Task[None]] = set()
    notices: set[asyncio.Task[None]] = set()
    try:
        while True:
            read = asyncio.ensure_future(_read_line(reader))
            done, _ = await asyncio.wait([read, *waits], return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                return
            line = read.result()
            if line is None:
                break
            if not line.strip():
                continue
            try:
                message = policy.parse_message(line)
            except NotRelayed as refused:
                session.write(
                    policy.error_response(refused.request_id, refused.code, refused.message)
                )
                continue
            if message.method == "initialize" and SESSION_HEADER not in session.headers:
                await _until(session.post(message, line), waits)
                continue
            task = asyncio.get_running_loop().create_task(session.post(message, line))
            pending = requests if message.kind is Kind.REQUEST else notices
            pending.add(task)
            task.add_done_callback(pending.discard)
        # End of stdin: no one waits for an answer any more, but what the client said last
        # (a cancellation, say) still goes.
        if notices:
            await asyncio.wait([*notices], timeout=CONNECT_TIMEOUT)
    finally:
        for task in [*requests, *notices]:
            task.cancel()


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line, None at end of stdin (or past MAX_LINE: the rest cannot be framed)."""
    try:
        line = await reader.readline()
    except ValueError:
        return None
    return line or None


async def _until(work: Awaitable[None], waits: list[asyncio.Task[Any]]) -> None:
    task = asyncio.ensure_future(work)
    await asyncio.wait([task, *waits], return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
