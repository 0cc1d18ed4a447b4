"""A scripted stdio MCP server for the gateway's protocol tests: it keeps every message it
receives and reports them through its `report` tool, so a test sees exactly what the gateway
forwarded (and what it did not).

After `notifications/initialized` it asks the client two things the gateway must handle
itself: `roots/list` (answered from the registration) and `unknown/thing` (refused). Its
`initialize` result advertises `completions` (hidden from the client by the gateway). Its
`digest` tool answers the SHA-256 of the API_TOKEN variable it was started with, `leak` the
value itself (the gateway must redact it), `pid` its process id, and `progress` sends two
progress notifications for the call's progress token before its result.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

TOOLS = [{"name": n, "inputSchema": {"type": "object"}}
         for n in ("report", "slow", "other", "digest", "leak", "pid", "progress")]  # fmt: skip


def send(body: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


def main() -> None:
    received: list[object] = []
    for line in sys.stdin:
        message = json.loads(line)
        received.append(message)
        method, ident = message.get("method"), message.get("id")
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": ident, "result": {
                "protocolVersion": "2025-06-18", "serverInfo": {"name": "fake", "version": "1"},
                "capabilities": {"tools": {"listChanged": True}, "completions": {}}}})  # fmt: skip
        elif method == "notifications/initialized":
            send({"jsonrpc": "2.0", "id": "s1", "method": "roots/list"})
            send({"jsonrpc": "2.0", "id": "s2", "method": "unknown/thing"})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": ident, "result": {"tools": TOOLS}})
        elif method == "tools/call":
            name = message["params"]["name"]
            if name == "slow":
                time.sleep(0.5)
            text = json.dumps(received) if name == "report" else name
            if name == "digest":  # which value of its secret it holds, without showing it
                text = hashlib.sha256(os.environ.get("API_TOKEN", "").encode()).hexdigest()
            elif name == "leak":
                text = f"my token is {os.environ.get('API_TOKEN', '')}"
            elif name == "pid":
                text = str(os.getpid())
            elif name == "progress":
                token = message["params"].get("_meta", {}).get("progressToken")
                for step in (1, 2):
                    send({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                        "progressToken": token, "progress": step, "total": 2}})  # fmt: skip
            send({"jsonrpc": "2.0", "id": ident,
                  "result": {"content": [{"type": "text", "text": text}]}})  # fmt: skip
        elif ident is not None and method is not None:
            send({"jsonrpc": "2.0", "id": ident, "result": {}})


if __name__ == "__main__":
    main()
