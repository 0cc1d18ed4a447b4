"""The Streamable HTTP side of the MCP gateway, without a server: which Origins are served, and
where each message the gateway sends the client goes (its POST, the GET stream, kept)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from nhidel.enforce.mcp_http import BACKLOG, HttpClient, Outgoing, is_mcp_path, origin_allowed
from nhidel.enforce.mcp_policy import parse_message


@pytest.mark.parametrize(
    "origin",
    [None, "http://localhost", "http://localhost:3000", "https://127.0.0.1:8787", "http://[::1]:9"],
)
def test_no_origin_and_loopback_origins_are_served(origin: str | None) -> None:
    assert origin_allowed(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "null",
        "file://",
        "chrome-extension://abc",
        "http://localhost:99999",
        "http://user@evil.example",
        "",
    ],
)
def test_any_other_origin_is_refused(origin: str) -> None:
    assert not origin_allowed(origin)


def test_only_mcp_paths_are_the_gateways() -> None:
    assert is_mcp_path("/mcp/fs") and is_mcp_path("/mcp") and is_mcp_path("/mcp/fs?x=1")
    assert not is_mcp_path("/mcpx/fs") and not is_mcp_path("/github/mcp/fs")


def request(ident: Any, method: str = "tools/call", progress: Any = None) -> Any:
    params: dict[str, Any] = {"name": "t"}
    if progress is not None:
        params["_meta"] = {"progressToken": progress}
    return parse_message(json.dumps({"jsonrpc": "2.0", "id": ident, "method": method,
                                     "params": params}))  # fmt: skip


def send(client: HttpClient, body: dict[str, Any]) -> None:
    client.send(body, json.dumps(body) + "\n")


def drained(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        item = queue.get_nowait()
        items.append(None if item is None else (json.loads(item.data), item.final))
    return items


def test_an_answer_goes_to_the_post_that_asked_and_nowhere_else() -> None:
    client = HttpClient()
    first, second = client.expect(request(1)), client.expect(request("1"))
    send(client, {"jsonrpc": "2.0", "id": "1", "result": {}})
    assert drained(first) == []
    assert drained(second) == [({"jsonrpc": "2.0", "id": "1", "result": {}}, True)]
    client.forget(request(1))
    send(client, {"jsonrpc": "2.0", "id": 1, "result": {}})  # its POST is gone: dropped
    assert not client.backlog and drained(first) == []


def test_progress_goes_to_the_post_whose_request_named_its_token() -> None:
    client = HttpClient()
    slow = client.expect(request(1, progress="p1"))
    other = client.expect(request(2))
    note = {"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": "p1", "progress": 1}}  # fmt: skip
    send(client, note)
    assert drained(slow) == [(note, False)] and drained(other) == []


def test_what_the_server_says_unasked_goes_to_the_get_stream_else_a_post_else_is_kept() -> None:
    client = HttpClient()
    note = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    send(client, note)
    assert [json.loads(i.data) for i in client.backlog] == [note]
    waiting = client.expect(request(1))
    send(client, note)
    assert drained(waiting) == [(note, False)]
    stream = client.open_stream()
    send(client, note)
    assert drained(stream) == [(note, False), (note, False)]  # the kept one first
    assert drained(waiting) == []
    client.close()
    assert drained(stream) == [None]


def test_a_json_only_post_passes_what_is_not_its_answer_to_the_get_stream_or_keeps_it() -> None:
    client = HttpClient()
    waiting = client.expect(request(1))
    note = {"jsonrpc": "2.0", "method": "notifications/message"}
    client.later(Outgoing(json.dumps(note)))
    assert drained(waiting) == [] and len(client.backlog) == 1


def test_kept_messages_are_bounded_and_a_newer_get_stream_replaces_an_older() -> None:
    client = HttpClient()
    for n in range(BACKLOG + 5):
        send(client, {"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": n}})
    assert len(client.backlog) == BACKLOG
    older = client.open_stream()
    newer = client.open_stream()
    assert drained(older)[-1] is None and drained(newer) == []
    assert client.stream is newer


def test_a_cancelled_request_ends_its_post_without_an_answer() -> None:
    client = HttpClient()
    waiting = client.expect(request(5))
    client.cancelled(5)
    assert drained(waiting) == [None]
