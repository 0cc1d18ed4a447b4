"""The official `mcp` SDK's Streamable HTTP client as a process of its own, driven a line at a
time by a test (which must not hand it anything of nhidel's: it runs with no keystore, no
passphrase, no D-Bus address and an empty NHIDEL_HOME, as an agent in a sandbox would).

Argument: the endpoint's URL; `--socket PATH` to reach it through a Unix socket. The grant
comes from MCP_GRANT and goes in the Authorization header, as a client configured with
`"headers": {"Authorization": "Bearer ${MCP_GRANT}"}` sends it. With `--connect`, the SDK's
stdio client instead runs `nhidel mcp connect SOCKET SERVER` (SERVER from the URL's last
segment) with the grant in its NHIDEL_TOKEN, as a stdio-only client in a sandbox would.

Each line on stdin is one JSON operation, answered by one JSON line on stdout:

    {"op": "list"}                          -> {"tools": [NAME, ...]}
    {"op": "call", "tool": T, "args": {}}   -> {"text": ..., "isError": bool, "progress": [...]}
    {"op": "grant", "token": TOKEN}         -> {} (later requests carry this grant)
    {"op": "notify", "method": M, "params": {...}} -> {} (a progress or cancelled notification)
    {"op": "session"}                       -> {"id": the Mcp-Session-Id}

An operation that fails answers {"error": "..."}; end of stdin ends the session (DELETE). A
sampling request from the server is answered with SAMPLING_REPLY.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import httpx
from mcp import ClientSession, types
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

SAMPLING_REPLY = "a reply from the client's model"


async def sample(_context: Any, _params: Any) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=SAMPLING_REPLY),
        model="test-model",
    )


async def operate(session: ClientSession, client: httpx.AsyncClient, op: dict[str, Any],
                  session_id: Any) -> dict[str, Any]:  # fmt: skip
    kind = op["op"]
    if kind == "list":
        return {"tools": sorted(t.name for t in (await session.list_tools()).tools)}
    if kind == "call":
        progress: list[float] = []

        async def noted(value: float, _total: float | None, _message: str | None) -> None:
            progress.append(value)

        result = await session.call_tool(op["tool"], op.get("args", {}), progress_callback=noted)
        text = "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))
        return {"text": text, "isError": bool(result.isError), "progress": progress}
    if kind == "grant":
        client.headers["Authorization"] = f"Bearer {op['token']}"
        return {}
    if kind == "notify":
        notification: Any
        if op["method"] == "notifications/cancelled":
            notification = types.CancelledNotification(
                params=types.CancelledNotificationParams(**op["params"])
            )
        else:
            notification = types.ProgressNotification(
                params=types.ProgressNotificationParams(**op["params"])
            )
        await session.send_notification(types.ClientNotification(notification))
        return {}
    if kind == "session":
        return {"id": session_id()}
    raise ValueError(f"unknown op {kind}")


async def main(url: str, socket: str | None, connect: bool) -> None:
    if connect:
        assert socket is not None, "--connect needs --socket"
        relay = StdioServerParameters(
            command=sys.executable,
            args=["-m", "nhidel", "mcp", "connect", socket, url.rstrip("/").rpartition("/")[2]],
            env={"NHIDEL_TOKEN": os.environ["MCP_GRANT"]},
        )
        async with stdio_client(relay) as (read, write):
            await serve(read, write, None, lambda: None)  # (its grant is fixed at start)
        return
    transport = httpx.AsyncHTTPTransport(uds=socket) if socket else None
    headers = {"Authorization": f"Bearer {os.environ['MCP_GRANT']}"}
    async with httpx.AsyncClient(transport=transport, headers=headers, timeout=30) as client:
        async with streamable_http_client(url, http_client=client) as (read, write, session_id):
            await serve(read, write, client, session_id)


async def serve(read: Any, write: Any, client: Any, session_id: Any) -> None:
    """Initialize, say so, then answer the test's operations a line at a time."""
    loop = asyncio.get_running_loop()
    async with ClientSession(read, write, sampling_callback=sample) as session:
        try:
            await session.initialize()
            answer: dict[str, Any] = {"ready": True}
        except Exception as exc:  # noqa: BLE001 - reported to the test
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
        if "error" in answer:
            return
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            try:
                answer = await operate(session, client, json.loads(line), session_id)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--socket")
    parser.add_argument("--connect", action="store_true")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.url, arguments.socket, arguments.connect))
