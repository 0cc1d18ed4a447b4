"""The MCP gateway: a registered server started as a child, and every message between it and
the client relayed only as nhidel.enforce.mcp_policy allows.

`Gateway` is one session, whatever the client's transport: its policy, grant checks,
decision records, redaction and child server are the same for both ways in. What differs is
only the client's side: `relay_stdio` feeds it the lines of stdin and `LineClient` writes its
messages to stdout (`mcp run`); nhidel.enforce.mcp_http feeds it the bodies of HTTP requests
and routes its messages to their response streams (`nhidel proxy`).

One asyncio loop, one thread: the client's messages are checked and answered in order, the
server's (its stdout) are relayed back redacted, its stderr is redacted and written to
nhidel's stderr with the server's name in front. All grant checks and decision records happen
on this one thread (the ledger connection belongs to it). A stdio session ends when the client
closes stdin, the server exits, or a terminating signal arrives; the caller then revokes a
grant minted for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from nhidel.actions.approvals import GO, HELD, WITHDRAWN, Verdict
from nhidel.enforce import mcp_policy as policy
from nhidel.enforce.approval_hold import APPROVAL_REASONS, reason_of, refusal_text
from nhidel.enforce.context import Enforcer
from nhidel.enforce.mcp_policy import Action, Kind, Message, NotRelayed
from nhidel.enforce.redact import Redactor
from nhidel.errors import IntegrityError, NhidelError
from nhidel.integrity.approvals import Call
from nhidel.registrations import McpServer
from nhidel.scopes import Scope
from nhidel.tokens.decision import Decision, Reason

# Variables of nhidel's own environment a server gets (besides its registered ones).
PASSED_VARIABLES = ("PATH", "HOME", "LANG", "LANGUAGE")
PASSED_PREFIXES = ("LC_",)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
RESTART_WAIT = 30.0  # seconds a restarted server has to answer the replayed initialize
STOP_GRACE = 2.0  # seconds a server has to exit after its stdin closes, then SIGTERM, SIGKILL
SERVER_STOPPED = -32003  # a request that arrived after the session's server was stopped


def server_environment(
    server: McpServer, secrets: Mapping[str, str], parent: Mapping[str, str]
) -> dict[str, str]:
    """The server's whole environment: PATH, HOME and the locale from `parent`, then the
    registered variables, then the registered secrets (`secrets`: name -> value). Nothing
    else of nhidel's environment (no D-Bus address, no NHIDEL_*, no passphrase)."""
    env = {
        k: v for k, v in parent.items() if k in PASSED_VARIABLES or k.startswith(PASSED_PREFIXES)
    }
    env.update(server.env)
    for variable, name in server.secrets.items():
        env[variable] = secrets[name]
    return env


def server_cwd(server: McpServer, parent: Mapping[str, str]) -> str:
    """Where the server starts: its first registered root, else HOME, else /."""
    for candidate in (*server.roots[:1], parent.get("HOME", "")):
        if candidate and os.path.isdir(candidate):
            return candidate
    return "/"


@dataclass
class Ending:
    """How a session ended: the client left, the server exited (its status), or a signal."""

    client_closed: bool = False
    server_status: int | None = None
    signum: int | None = None


class ClientSide(Protocol):
    """Where the gateway's messages to the client go (each already checked and redacted)."""

    def send(self, body: Mapping[str, Any], data: str) -> None:
        """Deliver one message: `body` as the gateway built it (to route it by), `data` its
        redacted JSON text, one line ending in a newline (what the client receives)."""


class LineClient:
    """The stdio transport's client side: one message a line on the client's stdout."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out

    def send(self, body: Mapping[str, Any], data: str) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.out.write(data.encode())
            self.out.flush()


class Gateway:
    """One session between a client (its transport's `ClientSide`) and `server`."""

    def __init__(
        self,
        enforcer: Enforcer,
        server: McpServer,
        *,
        agent: str,
        token: str,
        renew_hint: str,
        redactor: Redactor,
        environment: Mapping[str, str],
        client: ClientSide,
        log: IO[str],
        aud: str | None = None,
    ) -> None:
        self.enforcer = enforcer
        self.server = server
        self.agent = agent
        self.token = token
        self.renew_hint = renew_hint
        self.redactor = redactor
        self.environment = dict(environment)
        self.client = client
        self.log = log
        self.aud = aud  # grants must name it (`proxy --aud`)
        self.grant_id: str | None = None
        # Requests the client sent that were forwarded: what to do with their responses.
        self._client_requests: dict[tuple[str, Any], tuple[str, tuple[Scope, ...]]] = {}
        # Requests the server sent that were passed to the client: only these get responses.
        self._server_requests: set[tuple[str, Any]] = set()
        self._process: asyncio.subprocess.Process | None = None
        self.ending = Ending()
        self.server_gone = asyncio.Event()  # the server ended (not one stopped to restart it)
        self._stopped: str | None = None  # why the server was stopped for good
        self._readers: list[asyncio.Task[None]] = []  # each server's stdout, relayed
        self._stderr_tasks: list[asyncio.Task[None]] = []
        # What a restart replays to a new server: the client's initialize, and whether the
        # client had said initialized; and the secrets' values the server was started with.
        self._initialize: dict[str, Any] | None = None
        self._initialized: dict[str, Any] | None = None
        self._replayed: dict[tuple[str, Any], asyncio.Future[None]] = {}
        self._secret_values = {name: self.environment[variable]
                               for variable, name in server.secrets.items()}  # fmt: skip
        self._secrets_seen: object = None  # the sealed state the values were last read at
        self._restarts = 0
        # Calls held for a human's yes (nhidel.enforce.approval_hold), by request id; and the
        # progress a held call's token was given, so the server's own progress comes after it.
        self._held: dict[tuple[str, Any], asyncio.Task[None]] = {}
        self._progress_offsets: dict[tuple[str, Any], int] = {}  # token -> progress sent
        self._offset_of: dict[tuple[str, Any], tuple[str, Any]] = {}  # request -> its token

    # -- the session -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the server (OSError when it cannot be started) and relay what it says."""
        with contextlib.suppress(IntegrityError):  # (refused on the first call, if so)
            self._secrets_seen = self.enforcer.verifier.current_state()
        await self._start_server()

    async def stop(self, why: str = "the session ended") -> None:
        """Stop the server for good (stdin closed, SIGTERM, SIGKILL) and its readers; a
        request that comes after is answered with an error saying `why`."""
        self._stopped = why
        held = list(self._held.values())
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        process = self._process
        if process is not None:
            if process.returncode is None:
                await _stop_process(process)
            elif self.ending.server_status is None and not self.ending.client_closed:
                self.ending.server_status = process.returncode
        for reader in self._readers:
            reader.cancel()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.gather(*self._stderr_tasks), STOP_GRACE)

    def fail_pending(self, why: str) -> None:
        """Answer every request still waiting for the server with an error saying `why`."""
        for key, (method, _) in list(self._client_requests.items()):
            self.to_client(policy.error_response(
                key[1], SERVER_STOPPED, f"{method} was not answered: {why}"
            ))  # fmt: skip
        self._client_requests.clear()

    def lapsed(self) -> Decision | None:
        """Why this session can do nothing more (its grant revoked, expired or used up; the
        registration removed or changed; the sealed state untrusted), or None."""
        decision = self._refusal()
        if decision is not None:
            return decision
        looked = self.enforcer.verifier.check(self.token, any_scope=True, aud=self.aud)
        return None if looked.allowed else looked

    async def _start_server(self) -> None:
        """Start the registered server with `self.environment`, and relay what it says."""
        process = await asyncio.create_subprocess_exec(
            *self.server.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.environment,
            cwd=server_cwd(self.server, self.environment),
            limit=policy.MAX_LINE,
            # Its own session: a Ctrl-C meant for the client's process group reaches only the
            # gateway, which then stops the server in order (stdin closed, SIGTERM, SIGKILL).
            start_new_session=True,
        )
        self._process = process
        self._readers.append(asyncio.create_task(self._from_server(process)))
        self._stderr_tasks.append(asyncio.create_task(self._server_stderr(process)))

    async def _follow_secrets(self) -> None:
        """Before an allowed call reaches the server: if a secret it was started with has been
        replaced (`secret add --replace`, a sealed change), start it again with the new value,
        so the replacement reaches this session on its next action, as at the broker."""
        if not self._secret_values:
            return
        try:
            sealed = self.enforcer.verifier.current_state()
            if sealed is self._secrets_seen:
                return
            self._secrets_seen = sealed
            values = self.enforcer.secrets(self._secret_values)
        except NhidelError as exc:  # (the call itself was allowed on the sealed state)
            self.say(f"could not read the secrets it is given again: {exc.message}")
            return
        if values != self._secret_values:
            await self._restart_server(values)

    async def _restart_server(self, values: dict[str, str]) -> None:
        """Stop the server, start it with the new secret values (and redact those from now
        on), and replay the client's `initialize` (its answer kept from the client) and
        `notifications/initialized`. Requests the old server had not answered get an error
        the client can retry on."""
        self.say("a secret it is given was replaced: starting it again with the new value")
        old, self._process = self._process, None
        if old is not None:
            await _stop_process(old)
        for key, (method, _) in list(self._client_requests.items()):
            self.to_client(policy.error_response(
                key[1], policy.RESTARTED, f"the server was restarted (a secret it is "
                f"given was replaced) before it answered {method}; send it again",
            ))  # fmt: skip
        self._client_requests.clear()
        self._server_requests.clear()
        self._secret_values = values
        self.redactor = Redactor(values)
        for variable, name in self.server.secrets.items():
            self.environment[variable] = values[name]
        await self._start_server()
        if self._initialize is None:
            return
        self._restarts += 1
        ident = f"nhidel-restart-{self._restarts}"
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._replayed[policy.id_key(ident)] = answered
        await self._to_server({**self._initialize, "id": ident})
        try:
            await asyncio.wait_for(answered, RESTART_WAIT)
        except TimeoutError:
            self.say("did not answer initialize again after its restart; stopping")
            self.server_gone.set()
            return
        if self._initialized is not None:
            await self._to_server(self._initialized)

    # -- client -> server --------------------------------------------------------------------

    async def client_line(self, line: bytes) -> None:
        """One line from a stdio client: parsed, then handled (or refused) as a message."""
        try:
            message = policy.parse_message(line)
        except NotRelayed as refused:
            self.to_client(policy.error_response(refused.request_id, refused.code, refused.message))
            return
        await self.client_message(message)

    async def client_message(self, message: Message) -> None:
        """One message from the client: checked, then relayed, answered or dropped."""
        action = policy.client_action(message)
        key = policy.id_key(message.id)
        if message.kind is Kind.REQUEST and (key in self._client_requests or key in self._held):
            # Its response would be taken for the earlier one's (a filtered tools/list's).
            self.to_client(policy.error_response(
                message.id, policy.INVALID_REQUEST, "a request with this id is still pending"
            ))  # fmt: skip
            return
        if action is Action.FORWARD:
            if message.kind is Kind.REQUEST:
                await self._request(key, str(message.method), message.body)
                return
            if message.method == "notifications/initialized":
                self._initialized = message.body
            elif message.method == "notifications/cancelled":
                # The client stopped waiting: a late answer is for nothing it asked.
                cancelled = policy.id_key(message.params.get("requestId"))
                self._client_requests.pop(cancelled, None)
                # The server never saw a held call: its request is withdrawn, and its id is
                # free at once (a task cancelled before it ran never reaches its `finally`).
                held = self._held.pop(cancelled, None)
                if held is not None:
                    held.cancel()
                    return
            await self._to_server(message.body)
        elif action is Action.INITIALIZE:
            params = policy.initialize_params(message.params, has_roots=bool(self.server.roots))
            self._initialize = {**message.body, "params": params}
            await self._request(key, "initialize", self._initialize)
        elif action is Action.TOOLS_LIST:
            await self._tools_list(message, key)
        elif action is Action.TOOLS_CALL:
            await self._tools_call(message, key)
        elif action in (Action.RESOURCES, Action.PROMPTS):
            await self._named_kind(message, key, action.value)
        elif action is Action.RESPONSE:
            if key in self._server_requests:
                self._server_requests.discard(key)
                await self._to_server(message.body)
        elif action is Action.REFUSE:
            self.to_client(policy.error_response(
                message.id, policy.METHOD_NOT_FOUND,
                f"{message.method} is not relayed by nhidel's MCP gateway",
            ))  # fmt: skip
        # Action.DROP: nothing

    async def _request(
        self,
        key: tuple[str, Any],
        method: str,
        body: Mapping[str, Any],
        scopes: tuple[Scope, ...] = (),
    ) -> None:
        """Send a client's request on to the server and remember it for its answer; one that
        comes after the server was stopped for good is answered with an error."""
        if self._stopped is not None:
            self.to_client(policy.error_response(
                key[1], SERVER_STOPPED, f"MCP server {self.server.name} has stopped: "
                f"{self._stopped}; start a new session",
            ))  # fmt: skip
            return
        self._client_requests[key] = (method, scopes)
        await self._to_server(body)

    async def _tools_list(self, message: Message, key: tuple[str, Any]) -> None:
        decision = self._refusal() or self.enforcer.verifier.check(
            self.token, any_scope=True, aud=self.aud
        )
        if not decision.allowed or decision.grant is None:
            self.to_client(policy.error_response(
                message.id, policy.DENIED, self._denial_text(decision, None)
            ))  # fmt: skip
            return
        await self._request(key, "tools/list", message.body, decision.grant.scopes)

    async def _tools_call(self, message: Message, key: tuple[str, Any]) -> None:
        started = time.perf_counter()
        params = message.params
        tool = params.get("name") if isinstance(params.get("name"), str) else None
        scopes: tuple[Scope, ...] = ()
        decision = self._refusal()
        if decision is None:
            try:
                tool, scopes = policy.call_scopes(
                    self.server.name, params, self.server.resource_args
                )
            except policy.CallRefused as refused:
                decision = Decision(False, Reason.SCOPE_NOT_GRANTED, str(refused))
            else:
                decision = self.enforcer.verifier.check(self.token, scopes, aud=self.aud)
        self._note(decision)
        mark = None
        if decision.allowed and decision.grant is not None and tool is not None:
            try:
                mark = self.enforcer.approvals.mark_for(self.agent, scopes)
            except IntegrityError as exc:
                decision = Decision(False, Reason.INTEGRITY, exc.message)
        if mark is not None and decision.grant is not None and tool is not None:
            # Held first: a use is spent only by a call that goes on (see _held_call).
            call = Call(self.agent, decision.grant.id, self.server.name, tool[:128],
                        tuple(s.resource for s in scopes if s.resource),
                        policy.arguments_sha256(params))  # fmt: skip
            self._held[key] = asyncio.create_task(
                self._held_call(message, key, call, scopes, mark, started)
            )
            return
        if decision.allowed:
            decision = self.enforcer.spend(self.token, scopes, decision, aud=self.aud)
        self.enforcer.record(
            "tool.allowed" if decision.allowed else "tool.denied",
            agent=self.agent, grant=self.grant_id, server=self.server.name,
            tool=(tool or "")[:128], resources=[s.resource for s in scopes if s.resource] or None,
            args_sha256=policy.arguments_sha256(params),
            reason=None if decision.reason is None else decision.reason.value,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )  # fmt: skip
        if not decision.allowed:
            self._refuse_call(message, decision, scopes)
            return
        await self._follow_secrets()
        await self._request(key, "tools/call", message.body)

    def _refuse_call(self, message: Message, decision: Decision, scopes: Sequence[Scope]) -> None:
        missing = scopes[0] if decision.reason is Reason.SCOPE_NOT_GRANTED and scopes else None
        reason = (decision.reason or Reason.SCOPE_NOT_GRANTED).value
        self.to_client(policy.response(
            message.id, policy.denial_result(reason, self._denial_text(decision, missing,
                                                                       prefix=False))
        ))  # fmt: skip

    async def _held_call(
        self,
        message: Message,
        key: tuple[str, Any],
        call: Call,
        scopes: tuple[Scope, ...],
        mark: Scope,
        started: float,
    ) -> None:
        """A call an approval mark covers: held for the human's answer (progress sent when it
        carried a token), then relayed, or refused with why; withdrawn when the client
        cancels it or the session ends."""
        approvals = self.enforcer.approvals
        params = message.params
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        progress = 0
        held: list[Verdict] = []

        def opened(verdict: Verdict) -> None:
            held.append(verdict)
            ident = verdict.request.id if verdict.request is not None else "?"
            self.say(f"{call.action} of agent {call.agent} waits for approval: "
                     f"nhidel approve {ident}")  # fmt: skip

        def tick(verdict: Verdict) -> None:
            nonlocal progress
            progress += 1
            ident = verdict.request.id if verdict.request is not None else "?"
            self.to_client({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                "progressToken": token, "progress": progress,
                "message": f"waiting for a human to approve: nhidel approve {ident}"}})  # fmt: skip

        try:
            verdict = await approvals.hold(
                call, via="mcp", mark=mark, arguments=params.get("arguments", {}),
                tick=tick if token is not None else None, opened=opened,
            )  # fmt: skip
            decision: Decision | None = None
            if verdict.outcome != GO:
                decision = Decision(False, reason_of(verdict), refusal_text(verdict))
            else:  # the grant checked again (a hold is long), its use spent now
                decision = self._refusal() or check_all(self.enforcer, self.token, scopes,
                                                        aud=self.aud)  # fmt: skip
                decision = None if decision.allowed else decision
        except asyncio.CancelledError:
            # Neither allowed nor denied: its approval.lapsed record says it was withdrawn.
            with contextlib.suppress(NhidelError):
                for verdict in held:
                    approvals.withdraw(verdict, WITHDRAWN)
            raise
        except NhidelError as exc:
            verdict, decision = Verdict(HELD), Decision(False, Reason.INTEGRITY, exc.message)
        finally:
            if self._held.get(key) is asyncio.current_task():  # (not a later call's, same id)
                del self._held[key]
        ident = verdict.request.id if verdict.request is not None else None
        self._record_call(call, decision, started, approval=ident)
        if decision is not None:
            reason = (decision.reason or Reason.APPROVAL_PENDING).value
            text = decision.detail if decision.reason in APPROVAL_REASONS else \
                self._denial_text(decision, None, prefix=False)  # fmt: skip
            self.to_client(policy.response(message.id, policy.denial_result(reason, text)))
            return
        if progress and token is not None:
            self._progress_offsets[policy.id_key(token)] = progress
            self._offset_of[key] = policy.id_key(token)
        await self._follow_secrets()
        await self._request(key, "tools/call", message.body)

    def _record_call(
        self, call: Call, decision: Decision | None, started: float, *, approval: str | None
    ) -> None:
        """The one decision record of a held call (`decision` None: it went on)."""
        reason = None
        if decision is not None:
            reason = (decision.reason or Reason.SCOPE_NOT_GRANTED).value
        self.enforcer.record(
            "tool.allowed" if decision is None else "tool.denied",
            agent=call.agent, grant=call.grant, server=call.target, tool=call.action,
            resources=list(call.resources) or None, args_sha256=call.args_sha256,
            reason=reason, approval=approval,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )  # fmt: skip

    async def _named_kind(self, message: Message, key: tuple[str, Any], kind: str) -> None:
        """`resources/*` or `prompts/*`: a grant that names SERVER:resources (or prompts)
        itself, checked (and a use spent) like a call."""
        started = time.perf_counter()
        scope = Scope(self.server.name, kind)
        decision = self._refusal()
        if decision is None:
            # SERVER:* covers tools only: the grant must name the kind itself.
            looked = self.enforcer.verifier.check(self.token, any_scope=True, aud=self.aud)
            if looked.allowed and looked.grant is not None:
                if policy.names_kind(self.server.name, looked.grant.scopes, kind):
                    decision = check_all(self.enforcer, self.token, (scope,), aud=self.aud)
                else:
                    decision = Decision(
                        False, Reason.SCOPE_NOT_GRANTED,
                        f"the grant does not name {scope}", looked.grant,
                    )  # fmt: skip
            else:
                decision = looked
        self._note(decision)
        self.enforcer.record(
            "tool.allowed" if decision.allowed else "tool.denied",
            agent=self.agent, grant=self.grant_id, server=self.server.name,
            tool=str(message.method), resources=None,
            args_sha256=policy.arguments_sha256({"arguments": message.params}),
            reason=None if decision.reason is None else decision.reason.value,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )  # fmt: skip
        if not decision.allowed:
            self.to_client(policy.error_response(
                message.id, policy.DENIED, self._denial_text(decision, scope)
            ))  # fmt: skip
            return
        await self._follow_secrets()
        await self._request(key, kind, message.body)

    def _refusal(self) -> Decision | None:
        """An `integrity` decision when the sealed configuration was edited, or this server's
        registration changed or went, or no longer admits the agent; else None."""
        try:
            current = self.enforcer.config().servers.get(self.server.name)
        except IntegrityError as exc:
            return Decision(False, Reason.INTEGRITY, exc.message)
        if current is None:
            return Decision(False, Reason.INTEGRITY,
                            f"MCP server {self.server.name} is no longer registered")  # fmt: skip
        if current != self.server or not current.admits(self.agent):
            return Decision(False, Reason.INTEGRITY,
                            f"MCP server {self.server.name}'s registration changed since this "
                            "gateway started it; restart the server in the client")  # fmt: skip
        return None

    def _note(self, decision: Decision) -> None:
        if decision.grant is not None:
            self.grant_id = decision.grant.id

    def _denial_text(self, decision: Decision, scope: Scope | None, *, prefix: bool = True) -> str:
        reason = decision.reason or Reason.SCOPE_NOT_GRANTED
        if reason in (Reason.EXPIRED, Reason.REVOKED, Reason.USES_EXHAUSTED,
                      Reason.NOT_YET_VALID):  # fmt: skip
            what = f"{decision.detail}; {self.renew_hint}"
        elif reason is Reason.SCOPE_NOT_GRANTED:
            ask = f"; ask the human for a grant with {scope}" if scope is not None else ""
            what = f"{decision.detail}{ask}"
        elif reason is Reason.INTEGRITY:
            what = f"{decision.detail}; nothing is allowed until the human runs nhidel doctor"
        else:
            what = decision.detail
        line = " ".join(what.split())
        return f"denied: {reason.value}: {line}" if prefix else line

    # -- server -> client --------------------------------------------------------------------

    async def _from_server(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None  # noqa: S101 - started with a pipe
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # its stream cannot be framed any more: end the session
                self.say("sent a message longer than the gateway relays; stopping it")
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                break
            if not line:
                break
            if line.strip():
                await self._server_message(line)
        status = await process.wait()
        if process is self._process:  # (not one stopped to start it again)
            self.ending.server_status = status
            self.server_gone.set()

    async def _server_message(self, line: bytes) -> None:
        try:
            message = policy.parse_message(line)
        except NotRelayed:
            self.say("sent a line that is not a single JSON-RPC message; dropped")
            return
        action = policy.server_action(message)
        key = policy.id_key(message.id)
        if action is Action.RESPONSE:
            replayed = self._replayed.pop(key, None)
            if replayed is not None:  # the answer to a restart's initialize: not the client's
                replayed.set_result(None)
                return
            pending = self._client_requests.pop(key, None)
            offset_token = self._offset_of.pop(key, None)
            if offset_token is not None:
                self._progress_offsets.pop(offset_token, None)
            if pending is None:
                return  # an answer to nothing the client asked (or to a denied request)
            body = message.body
            if "result" in body:
                if pending[0] == "tools/list":
                    body = {**body, "result": policy.filter_tools(
                        body["result"], self.server.name, pending[1])}  # fmt: skip
                elif pending[0] == "initialize":
                    body = {**body, "result": policy.initialize_result(body["result"])}
            self.to_client(body)
        elif action is Action.ROOTS:
            await self._to_server(policy.response(message.id, policy.roots_result(
                self.server.roots)))  # fmt: skip
        elif action is Action.FORWARD:
            if message.kind is Kind.REQUEST:
                self._server_requests.add(key)
            if message.method == "notifications/progress" and self._progress_offsets:
                self.to_client(policy.offset_progress(message.body, self._progress_offsets))
                return
            self.to_client(message.body)
        elif action is Action.REFUSE:
            await self._to_server(policy.error_response(
                message.id, policy.METHOD_NOT_FOUND,
                f"{message.method} is not relayed to the client by nhidel's MCP gateway",
            ))  # fmt: skip

    async def _server_stderr(self, process: asyncio.subprocess.Process) -> None:
        """The server's stderr, a line at a time (a secret is one line: none spans two), each
        redacted whole and written with the server's name in front, as soon as it ends."""
        assert process.stderr is not None  # noqa: S101 - started with a pipe
        while True:
            try:
                line = await process.stderr.readline()
            except ValueError:  # longer than MAX_LINE: asyncio has dropped it
                self.say("(a stderr line longer than the gateway relays was dropped)")
                continue
            if not line:
                return
            redacted, names = self.redactor.redact_bytes(line)
            self._record_redactions(names)
            self.say(redacted.decode("utf-8", "replace").rstrip("\n"))

    # -- writing -----------------------------------------------------------------------------

    def to_client(self, body: Mapping[str, Any]) -> None:
        """Everything toward the client is serialised here, then redacted."""
        data = policy.dumps(body).decode()
        self.client.send(body, self._redacted(data))

    async def _to_server(self, body: Mapping[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        try:
            process.stdin.write(policy.dumps(body))
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server is gone: its stdout's end says so

    def _redacted(self, text: str) -> str:
        redacted, names = self.redactor.redact_text(text)
        self._record_redactions(names)
        return redacted

    def _record_redactions(self, names: Sequence[str]) -> None:
        for name in dict.fromkeys(names):
            self.enforcer.record("secret.redacted", agent=self.agent, grant=self.grant_id,
                                 server=self.server.name, secret=name)  # fmt: skip

    def say(self, text: str) -> None:
        # No control characters: a server's stderr must not drive the terminal it lands on.
        text = _CONTROL.sub("?", text)
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.log.write(f"[{self.server.name}] {text}\n")
            self.log.flush()


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    """End a server in order: its stdin closed, then SIGTERM, then SIGKILL."""
    if process.stdin is not None:
        with contextlib.suppress(Exception):
            process.stdin.close()
    for step in (None, signal.SIGTERM, signal.SIGKILL):
        if step is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(step)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
            break
        except TimeoutError:
            continue


def check_all(
    enforcer: Enforcer, token: str, scopes: Sequence[Scope], *, aud: str | None = None
) -> Decision:
    """Whether `token` covers every one of `scopes` now; one use spent (durably) for the call
    when the grant has a use limit and it is allowed (Enforcer.check, for several scopes)."""
    return enforcer.spend(token, scopes, enforcer.verifier.check(token, scopes, aud=aud), aud=aud)


# -- the stdio transport ------------------------------------------------------------------------


async def relay_stdio(gateway: Gateway, client_in: IO[bytes]) -> Ending:
    """Start the server and relay the client's lines until it closes stdin, the server
    exits or a terminating signal arrives; then stop the server."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def signalled(signum: int) -> None:
        gateway.ending.signum = signum
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, signalled, signum)
    pump: list[asyncio.Task[None]] = []  # (kept: a task nothing holds may be collected)
    try:
        await gateway.start()
        tasks = [
            asyncio.create_task(_from_client(gateway, client_in, pump)),
            asyncio.create_task(gateway.server_gone.wait()),
            asyncio.create_task(stop.wait()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await gateway.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return gateway.ending


async def _from_client(
    gateway: Gateway, client_in: IO[bytes], pump: list[asyncio.Task[None]]
) -> None:
    reader = await client_reader(client_in, pump)
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # longer than MAX_LINE: the rest of the stream cannot be framed
            gateway.to_client(
                policy.error_response(None, policy.INVALID_REQUEST, "message too long")
            )
            break
        if not line:
            break
        if line.strip():
            await gateway.client_line(line)
    gateway.ending.client_closed = True


async def client_reader(
    client_in: IO[bytes], pump: list[asyncio.Task[None]]
) -> asyncio.StreamReader:
    """The client's stdin as lines: a pipe read by the loop itself, a regular file on a
    thread (its task kept in `pump`)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=policy.MAX_LINE)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), client_in)
    except ValueError:  # a regular file: read it on a thread instead

        async def read_file() -> None:
            while chunk := await loop.run_in_executor(None, client_in.readline):
                reader.feed_data(chunk)
            reader.feed_eof()

        pump.append(loop.create_task(read_file()))
    return reader


def serve(gateway: Gateway, client_in: IO[bytes]) -> Ending:
    """Run one stdio session to its end on a fresh event loop."""
    return asyncio.run(relay_stdio(gateway, client_in))
