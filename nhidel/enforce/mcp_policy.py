"""What the MCP gateway relays, decided one JSON-RPC message at a time (pure: no I/O).

SPEC.md "The MCP gateway": from the client the gateway relays only what it checks, and what it
forwards is the message it checked, serialised again (never the raw line). This module reads a
line into a `Message`, says what to do with a client's or a server's message (`Action`),
turns a `tools/call` into the scopes to check (`call_scopes`: `SERVER:TOOL[:RESOURCE]`, one per
value of every registered resource argument), filters a `tools/list` result to the tools a
grant covers, and builds the answers the gateway gives itself (errors, denials, `roots/list`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from nhidel.integrity.approvals import canonical_sha256
from nhidel.scopes import Scope

MAX_LINE = 64 << 20  # one message; a file read whole comes back in one

# JSON-RPC 2.0 error codes the gateway answers with.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
DENIED = -32001  # a request the grant does not cover (not a tools/call: those get a result)
RESTARTED = -32002  # a request the server was restarted before answering (send it again)

# Client capabilities passed to the server: what the gateway relays server -> client (the
# client applies its own policy to them). `roots` is the gateway's own, from the registration;
# everything else (experimental, tasks, anything newer) is removed.
RELAYED_CLIENT_CAPABILITIES = ("sampling", "elicitation")
# Server capabilities the client is not told about: it would ask for what is refused.
HIDDEN_SERVER_CAPABILITIES = ("completions", "tasks")
# Server -> client requests passed on; `roots/list` is answered by the gateway; others refused.
RELAYED_SERVER_REQUESTS = frozenset({"sampling/createMessage", "elicitation/create", "ping"})
RESOURCE_METHODS = frozenset({
    "resources/list", "resources/templates/list", "resources/read", "resources/subscribe",
    "resources/unsubscribe",
})  # fmt: skip
PROMPT_METHODS = frozenset({"prompts/list", "prompts/get"})
# A tool whose name is one of these could never be told apart from SERVER:resources.
RESERVED_ACTIONS = frozenset({"resources", "prompts"})

_ACTION = re.compile(r"[a-z0-9][a-z0-9_.-]*")  # a scope's action (nhidel.scopes)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")


class Kind(Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


@dataclass(frozen=True, slots=True)
class Message:
    """One parsed JSON-RPC message: its kind, method (None for a response), id and body."""

    kind: Kind
    body: dict[str, Any]
    method: str | None = None

    @property
    def id(self) -> Any:
        return self.body.get("id")

    @property
    def params(self) -> dict[str, Any]:
        params = self.body.get("params")
        return params if isinstance(params, dict) else {}


class NotRelayed(Exception):  # noqa: N818 - a verdict on a message, not a failure of the gateway
    """A message the gateway will not relay: answered with a JSON-RPC error when it had an id."""

    def __init__(self, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class Action(Enum):
    FORWARD = "forward"  # relay as it is (re-serialised)
    INITIALIZE = "initialize"  # relay with the capabilities rewritten
    TOOLS_LIST = "tools/list"  # check the grant, relay, filter the result
    TOOLS_CALL = "tools/call"  # check every scope of the call
    RESOURCES = "resources"  # needs SERVER:resources
    PROMPTS = "prompts"  # needs SERVER:prompts
    RESPONSE = "response"  # a response: relay only to a request the other side sent
    ROOTS = "roots"  # the server asks for roots: the gateway answers
    DROP = "drop"  # a notification not relayed (the client's roots/list_changed)
    REFUSE = "refuse"  # a JSON-RPC error back to the sender


def parse_message(line: bytes | str) -> Message:
    """One line of newline-delimited JSON-RPC; NotRelayed for anything but a single, well-formed
    message (a batch is refused whole: each of its parts would have to be checked alone)."""
    try:
        body = json.loads(line)
    except (ValueError, RecursionError):
        raise NotRelayed(PARSE_ERROR, "not a JSON-RPC message: the line is not JSON") from None
    if isinstance(body, list):
        raise NotRelayed(INVALID_REQUEST, "JSON-RPC batches are not relayed: send one message")
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
        raise NotRelayed(INVALID_REQUEST, "not a JSON-RPC 2.0 message")
    if _surrogate_escape(line):  # only then can a string hold a lone surrogate
        try:
            dumps(body)
        except UnicodeEncodeError:
            raise NotRelayed(
                INVALID_REQUEST,
                "a string holds a lone surrogate: not UTF-8 text",
                body.get("id") if _valid_id(body.get("id")) else None,
            ) from None
    has_id = "id" in body
    if has_id and not _valid_id(body["id"]):
        raise NotRelayed(INVALID_REQUEST, "a JSON-RPC id is a string or an integer")
    method = body.get("method")
    if method is None:
        if not has_id or ("result" in body) == ("error" in body):
            raise NotRelayed(INVALID_REQUEST, "not a JSON-RPC request, notification or response")
        return Message(Kind.RESPONSE, body)
    if not isinstance(method, str):
        raise NotRelayed(INVALID_REQUEST, "a JSON-RPC method is a string", body.get("id"))
    if "params" in body and not isinstance(body["params"], dict):
        raise NotRelayed(INVALID_PARAMS, "MCP params are an object", body.get("id"))
    return Message(Kind.REQUEST if has_id else Kind.NOTIFICATION, body, method)


_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _surrogate_escape(line: bytes | str) -> bool:
    """Whether `line` spells a UTF-16 surrogate as a JSON escape (valid in pairs only)."""
    if isinstance(line, str):
        return _SURROGATE_ESCAPE_TEXT.search(line) is not None
    return _SURROGATE_ESCAPE_BYTES.search(line) is not None


def id_key(value: Any) -> tuple[str, Any]:
    """A request id as a dictionary key that never confuses 1 with "1"."""
    return (type(value).__name__, value)


def client_action(message: Message) -> Action:
    """What the gateway does with a message from the client."""
    if message.kind is Kind.RESPONSE:
        return Action.RESPONSE
    method = message.method
    if message.kind is Kind.NOTIFICATION:
        # The roots are the registration's: the client may not announce others. Only what
        # MCP names a notification passes: a `tools/call` without an id is never checked, so
        # it must never reach a server careless enough to run it.
        if method == "notifications/roots/list_changed" or not str(method).startswith(
            "notifications/"
        ):
            return Action.DROP
        return Action.FORWARD
    if method == "initialize":
        return Action.INITIALIZE
    if method == "ping":
        return Action.FORWARD
    if method == "tools/list":
        return Action.TOOLS_LIST
    if method == "tools/call":
        # A task-augmented call (2025-11-25) answers with a task, not the result: not relayed.
        return Action.REFUSE if "task" in message.params else Action.TOOLS_CALL
    if method in RESOURCE_METHODS:
        return Action.RESOURCES
    if method in PROMPT_METHODS:
        return Action.PROMPTS
    return Action.REFUSE


def server_action(message: Message) -> Action:
    """What the gateway does with a message from the server."""
    if message.kind is Kind.RESPONSE:
        return Action.RESPONSE
    if message.kind is Kind.NOTIFICATION:
        return Action.FORWARD
    if message.method == "roots/list":
        return Action.ROOTS
    if message.method in RELAYED_SERVER_REQUESTS:
        return Action.FORWARD
    return Action.REFUSE


def initialize_params(params: Mapping[str, Any], *, has_roots: bool) -> dict[str, Any]:
    """The client's `initialize` params with only the capabilities the gateway relays, and
    `roots` (the gateway's, answered from the registration) when the server has roots."""
    given = params.get("capabilities")
    given = given if isinstance(given, dict) else {}
    capabilities = {k: given[k] for k in RELAYED_CLIENT_CAPABILITIES if k in given}
    if has_roots:
        capabilities["roots"] = {"listChanged": False}
    return {**params, "capabilities": capabilities}


def initialize_result(result: Any) -> Any:
    """The server's `initialize` result without the capabilities the gateway refuses."""
    if not isinstance(result, dict) or not isinstance(result.get("capabilities"), dict):
        return result
    capabilities = {
        k: v for k, v in result["capabilities"].items() if k not in HIDDEN_SERVER_CAPABILITIES
    }
    return {**result, "capabilities": capabilities}


class CallRefused(Exception):  # noqa: N818 - a verdict on a call
    """A `tools/call` refused before any grant is asked (`scope_not_granted`)."""


def call_scopes(
    server: str, params: Mapping[str, Any], resource_args: Mapping[str, Sequence[str]]
) -> tuple[str, tuple[Scope, ...]]:
    """The tool's name and the scopes a `tools/call` needs: `SERVER:TOOL` for a tool with no
    registered resource argument, else `SERVER:TOOL:VALUE` for every value of each (every
    element of a list). CallRefused for a value that is missing, empty, not a string, or a
    path that could mean another one (`.`, `..`, `//`, percent-encoded segments)."""
    tool = params.get("name")
    if not isinstance(tool, str) or not tool:
        raise CallRefused("the call names no tool")
    if not nameable(tool):
        raise CallRefused(f"tool {_quoted(tool)} cannot be named in a scope, so no grant covers it")
    arguments = params.get("arguments", {})
    if not isinstance(arguments, dict):
        raise CallRefused(f"the arguments of {tool} are not an object")
    names = resource_args.get(tool, ())
    if not names:
        return tool, (Scope(server, tool),)
    scopes: dict[Scope, None] = {}
    for name in names:
        value = arguments.get(name)
        values = value if isinstance(value, list) else [value]
        if not values:
            raise CallRefused(f"argument {name} of {tool} is an empty list")
        for one in values:
            scopes.setdefault(Scope(server, tool, resource_value(tool, name, one)), None)
    return tool, tuple(scopes)


def resource_value(tool: str, name: str, value: Any) -> str:
    """`value` as a resource, or CallRefused saying what is wrong with it."""
    if value is None:
        raise CallRefused(f"argument {name} of {tool} is missing")
    if not isinstance(value, str):
        raise CallRefused(f"argument {name} of {tool} is not a string")
    if not value:
        raise CallRefused(f"argument {name} of {tool} is empty")
    why = path_fault(value)
    if why is not None:
        raise CallRefused(f"argument {name} of {tool} {why}: give the plain absolute path")
    return value


def path_fault(value: str) -> str | None:
    """Why `value` may name another resource than it reads as, or None. A `scheme://` prefix
    is set aside; one leading and one trailing `/` are allowed."""
    if any(not ch.isprintable() for ch in value):
        return "holds a control character"
    rest = value
    scheme = _SCHEME.match(value)
    if scheme:
        rest = value[scheme.end() :]
    if "\\" in rest:
        return "holds a backslash"
    segments = rest.split("/")
    if segments[0] == "" and len(segments) > 1:
        segments = segments[1:]  # an absolute path's leading '/' (file:///path's too)
    if len(segments) > 1 and segments[-1] == "":
        segments = segments[:-1]  # a directory's trailing '/'
    for segment in segments:
        if segment in (".", ".."):
            return f"holds a {segment!r} segment"
        if segment == "":
            return "holds an empty segment ('//')"
        if _ENCODED.search(segment):
            return "holds a percent-encoded segment"
    return None


def nameable(tool: Any) -> bool:
    """Whether a scope can name `tool` (its action: lowercase, not `resources`/`prompts`)."""
    return (
        isinstance(tool, str)
        and len(tool) <= 128
        and _ACTION.fullmatch(tool) is not None
        and tool not in RESERVED_ACTIONS
    )


def tool_listed(server: str, tool: Any, granted: Iterable[Scope]) -> bool:
    """Whether some granted scope could cover a call of `tool` (a resource-scoped grant such as
    `fs:read_file:/tmp/*` lists read_file: some calls of it are allowed)."""
    if not nameable(tool):
        return False
    return any(s.service == server and s.action in ("*", tool) for s in granted)


def filter_tools(result: Any, server: str, granted: Iterable[Scope]) -> Any:
    """A `tools/list` result with only the tools the grant covers."""
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return result
    scopes = tuple(granted)
    tools = [
        t
        for t in result["tools"]
        if isinstance(t, dict) and tool_listed(server, t.get("name"), scopes)
    ]
    return {**result, "tools": tools}


def names_kind(server: str, granted: Iterable[Scope], kind: str) -> bool:
    """Whether the grant names `SERVER:resources` or `SERVER:prompts` itself (`SERVER:*`
    covers tools only)."""
    return any(s.service == server and s.action == kind for s in granted)


def roots_result(roots: Sequence[str]) -> dict[str, Any]:
    """The answer to the server's `roots/list`: the registered roots as file:// URIs."""
    return {
        "roots": [
            {"uri": "file://" + quote(root), "name": PurePosixPath(root).name or root}
            for root in roots
        ]
    }


def denial_result(reason: str, detail: str) -> dict[str, Any]:
    """The tool result a denied call gets (never reaching the server): the model reads why."""
    line = " ".join(f"denied: {reason}: {detail}".split())
    return {"content": [{"type": "text", "text": line}], "isError": True}


def offset_progress(
    body: Mapping[str, Any], offsets: Mapping[tuple[str, Any], int]
) -> Mapping[str, Any]:
    """A server's progress notification moved past the progress the gateway sent while it
    held the call (`offsets`: token -> the last value sent), so values keep increasing."""
    params = body.get("params")
    if not isinstance(params, dict):
        return body
    offset = offsets.get(id_key(params.get("progressToken")))
    progress = params.get("progress")
    if offset is None or not isinstance(progress, int | float) or isinstance(progress, bool):
        return body
    moved = {**params, "progress": progress + offset + 1}
    total = params.get("total")
    if isinstance(total, int | float) and not isinstance(total, bool):
        moved["total"] = total + offset + 1
    return {**body, "params": moved}


def response(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def dumps(body: Mapping[str, Any]) -> bytes:
    """One message as a line: compact JSON (no newline inside), then a newline."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def arguments_sha256(params: Mapping[str, Any]) -> str:
    """The hash of a call's arguments in canonical JSON (sorted keys): what the decision
    record keeps instead of the arguments."""
    return canonical_sha256(params.get("arguments", {}))


def _valid_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _quoted(text: str) -> str:
    return json.dumps(text[:80])
