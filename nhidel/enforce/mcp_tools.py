"""`nhidel mcp tools SERVER`: start a registered server once, ask for its tools, and suggest
the scopes and `--resource-arg` lines a human needs to write a ceiling.

The server is started exactly as the gateway starts it (the sealed registration, its minimal
environment with its secrets), answered `roots/list` from the registration, and stopped once
it has listed its tools. Its stderr is kept and, redacted, shown only when it fails.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from nhidel.enforce import mcp_policy as policy
from nhidel.enforce.context import Enforcer
from nhidel.enforce.mcp_gateway import server_cwd, server_environment
from nhidel.enforce.redact import Redactor
from nhidel.errors import NhidelError, NotFoundError
from nhidel.paths import Paths
from nhidel.registrations import McpServer

TIMEOUT = 30.0  # seconds for the server to start and list its tools
PROTOCOL_VERSION = "2025-06-18"
# Argument names that usually name a resource (a path, a URI, an id).
_RESOURCE_NAME = re.compile(
    r"(?i)^(paths?|source|destination|target|file(name|path)?s?|dir(ectory)?|folder|uris?|urls?"
    r"|ids?|repo(sitory)?|.*(_|-)(path|paths|file|dir|uri|url|id)|.*(Path|Paths|File|Dir|Uri|Url"
    r"|Id))$"
)


class ToolsUnavailableError(NhidelError):
    """The server did not start, or did not list its tools."""


@dataclass(frozen=True, slots=True)
class Argument:
    name: str
    type: str
    required: bool
    resource: bool  # looks like it names a resource


@dataclass(frozen=True, slots=True)
class Tool:
    server: str
    name: str
    description: str
    arguments: tuple[Argument, ...] = field(default_factory=tuple)

    @property
    def scope(self) -> str | None:
        """The scope that grants every call of it, or None when no scope can name it."""
        return f"{self.server}:{self.name}" if policy.nameable(self.name) else None

    @property
    def resource_args(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arguments if a.resource)

    def to_json(self) -> dict[str, Any]:
        scope = self.scope
        return {
            "name": self.name,
            "description": self.description,
            "arguments": [
                {"name": a.name, "type": a.type, "required": a.required, "resource": a.resource}
                for a in self.arguments
            ],
            "scope": scope,
            "resource_scope": f"{scope}:<resource>*" if scope and self.resource_args else None,
            "resource_args": [f"{self.name}={a}" for a in self.resource_args],
        }


def tool_from_json(server: str, raw: Any) -> Tool | None:
    """A tool of a `tools/list` result, or None for an entry that is not one."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None
    schema = _of(raw.get("inputSchema"), dict, {})
    properties: dict[str, Any] = _of(schema.get("properties"), dict, {})
    required: list[Any] = _of(schema.get("required"), list, [])
    arguments = []
    for name, spec in properties.items():
        spec = spec if isinstance(spec, dict) else {}
        kind = spec.get("type", "any")
        if kind == "array" and isinstance(spec.get("items"), dict):
            kind = f"array of {spec['items'].get('type', 'any')}"
        looks = bool(_RESOURCE_NAME.match(str(name))) or spec.get("format") in (
            "uri",
            "uri-reference",
        )
        textual = kind in ("string", "array of string")
        arguments.append(Argument(str(name), str(kind), name in required, looks and textual))
    return Tool(server, raw["name"], _summary(raw.get("description")), tuple(arguments))


def _of(value: Any, kind: type, default: Any) -> Any:
    return value if isinstance(value, kind) else default


def _summary(description: Any) -> str:
    """A description's first sentence, at most 100 characters, on one line."""
    text = " ".join(str(description or "").split())
    first = text.split(". ", 1)[0]
    return first if len(first) <= 100 else first[:99] + "…"


def list_tools(paths: Paths, enforcer: Enforcer, name: str) -> list[Tool]:
    """Start registered server `name` once (as the gateway would) and return its tools."""
    server = enforcer.config().servers.get(name)
    if server is None:
        raise NotFoundError(
            f"no MCP server named {name!r} is registered",
            f"register it first: nhidel mcp add {name} -- CMD [ARGS]...",
        )
    secrets = enforcer.secrets(server.secrets.values())
    redact = Redactor({n: secrets[n] for n in server.secrets.values()}).redact_text
    environment = server_environment(server, secrets, os.environ)
    # What a server says of its tools is output too: a description may quote its environment.
    raws = json.loads(redact(json.dumps(_ask_tools(server, environment, redact)))[0])
    return [tool for raw in raws if (tool := tool_from_json(server.name, raw)) is not None]


def _ask_tools(
    server: McpServer,
    environment: Mapping[str, str],
    redact: Callable[[str], tuple[str, list[str]]],
) -> list[Any]:
    try:
        process = subprocess.Popen(  # noqa: S603 - the sealed registration's own command
            server.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(environment),
            cwd=server_cwd(server, environment),
            start_new_session=True,
        )
    except OSError as exc:
        raise ToolsUnavailableError(
            f"MCP server {server.name} could not be started: {exc.strerror or exc}",
            "check its registration: nhidel mcp list",
        ) from None
    lines: queue.Queue[bytes] = queue.Queue()
    errors: list[bytes] = []
    assert process.stdout is not None and process.stderr is not None  # noqa: S101 - PIPE
    threading.Thread(target=_drain, args=(process.stdout, lines.put), daemon=True).start()
    stderr_reader = threading.Thread(target=_drain, args=(process.stderr, errors.append),
                                     daemon=True)  # fmt: skip
    stderr_reader.start()
    deadline = time.monotonic() + TIMEOUT

    def send(body: Mapping[str, Any]) -> None:
        assert process.stdin is not None  # noqa: S101 - PIPE
        process.stdin.write(policy.dumps(body))
        process.stdin.flush()

    def answer(request_id: int) -> dict[str, Any]:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise failed("did not answer within 30 seconds") from None
            if not line:
                raise failed(f"exited (status {process.wait()})")
            try:
                message = policy.parse_message(line)
            except policy.NotRelayed:
                continue
            if message.kind is policy.Kind.REQUEST:
                send(
                    policy.response(message.id, policy.roots_result(server.roots))
                    if message.method == "roots/list"
                    else policy.error_response(message.id, policy.METHOD_NOT_FOUND, "not here")
                )
            elif message.kind is policy.Kind.RESPONSE and message.id == request_id:
                if "error" in message.body:
                    raise failed(f"answered with an error: {message.body['error']}")
                result: dict[str, Any] = message.body["result"]
                return result

    def failed(why: str) -> ToolsUnavailableError:
        if process.poll() is not None:
            stderr_reader.join(2)  # all it said before it exited
        said = b"".join(errors).decode("utf-8", "replace").strip().splitlines()[-3:]
        tail = redact(" | ".join(said))[0]
        return ToolsUnavailableError(
            f"MCP server {server.name} {why}" + (f"; it said: {tail}" if tail else ""),
            "check its registration: nhidel mcp list",
        )

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {"roots": {"listChanged": False}} if server.roots else {},
            "clientInfo": {"name": "nhidel-mcp-tools", "version": "1"},
        }})  # fmt: skip
        answer(1)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools: list[Any] = []
        cursor: Any = None
        for request_id in range(2, 102):  # at most 100 pages
            params = {"cursor": cursor} if cursor else {}
            send({"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": params})
            page = answer(request_id)
            tools += page.get("tools", []) if isinstance(page.get("tools"), list) else []
            cursor = page.get("nextCursor")
            if not cursor:
                break
        return tools
    except (BrokenPipeError, OSError):
        raise failed(f"exited (status {process.wait()})") from None
    finally:
        _stop(process)


def _drain(stream: IO[bytes], put: Callable[[bytes], None]) -> None:
    for line in stream:
        put(line)
    put(b"")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None:
        try:
            process.stdin.close()
        except OSError:
            pass
    try:
        process.wait(2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def render(tools: list[Tool], server: str) -> list[str]:
    """The human listing: each tool, its arguments, its scope and resource hints."""
    out: list[str] = []
    resource_lines: list[str] = []
    for tool in tools:
        out.append(f"{tool.name}" + (f"  {tool.description}" if tool.description else ""))
        for a in tool.arguments:
            marks = ", ".join(m for m in ("required" if a.required else "",
                                          "resource?" if a.resource else "") if m)  # fmt: skip
            out.append(f"    {a.name}: {a.type}" + (f" ({marks})" if marks else ""))
        scope = tool.scope
        if scope is None:
            out.append("    scope: none can name it (no grant covers it through the gateway)")
        elif tool.resource_args:
            out.append(f"    scope: {scope}:<resource>*  (with --resource-arg below)")
            resource_lines += [f"--resource-arg {tool.name}={a}" for a in tool.resource_args]
        else:
            out.append(f"    scope: {scope}")
    if resource_lines:
        out.append("")
        out.append(f"arguments that look like resources (check them; to use them: nhidel mcp "
                   f"remove {server}, then nhidel mcp add {server} with these lines):")  # fmt: skip
        out += [f"  {line}" for line in resource_lines]
    return out
