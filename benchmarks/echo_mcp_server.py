#!/usr/bin/env python3
"""A minimal stdio MCP server for bench_gateway.py: `initialize`, `tools/list` and one tool,
`echo`, answered at once, so what is timed is the relay, not the server."""

from __future__ import annotations

import json
import sys

TOOLS = [{"name": "echo", "description": "Echo the message back",
          "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}},
                          "required": ["message"]}}]  # fmt: skip


def answer(message: dict[str, object]) -> dict[str, object] | None:
    method = message.get("method")
    if "id" not in message:
        return None
    if method == "initialize":
        result: object = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                          "serverInfo": {"name": "echo", "version": "1"}}  # fmt: skip
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        params = message.get("params")
        arguments = params.get("arguments", {}) if isinstance(params, dict) else {}
        result = {"content": [{"type": "text", "text": str(arguments.get("message"))}]}
    elif method == "ping":
        result = {}
    else:
        error = {"code": -32601, "message": f"no method {method}"}
        return {"jsonrpc": "2.0", "id": message["id"], "error": error}
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


def main() -> None:
    for line in sys.stdin:
        reply = answer(json.loads(line))
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
