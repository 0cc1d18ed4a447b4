"""`mcp config`: the entry an MCP client needs to start the gateway, in each client's shape.

The entry runs this very installation as `<python> -m nhidel mcp run ...`, both absolute: a
client starts servers without the user's shell, so neither PATH nor a virtualenv's activation
can be relied on. It never holds a secret or a token (the gateway mints its own grant, or the
client's environment carries NHIDEL_TOKEN); only NHIDEL_HOME and NHIDEL_KEYSTORE when they
are set, so the gateway opens the same home and keystore as the shell that printed it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence

CLIENTS = ("claude", "cursor", "codex", "vscode")
# Where each client reads its user-scope servers (said on stderr, next to the entry).
WHERE = {
    "claude": "Claude Code: ~/.claude.json, merged into its mcpServers (user scope)",
    "cursor": "Cursor: ~/.cursor/mcp.json",
    "codex": "Codex: ~/.codex/config.toml",
    "vscode": "VS Code: the user mcp.json (command palette: MCP: Open User Configuration)",
}
PASSED_VARIABLES = ("NHIDEL_HOME", "NHIDEL_KEYSTORE")


def gateway_argv(server: str, agent: str, scopes: Sequence[str], ttl: str | None) -> list[str]:
    """The command a client runs: this Python, this nhidel, `mcp run` with these options."""
    argv = [sys.executable, "-m", "nhidel", "mcp", "run", server, "--agent", agent]
    for scope in scopes:
        argv += ["--scope", scope]
    if ttl is not None:
        argv += ["--ttl", ttl]
    return argv


def gateway_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    return {k: environ[k] for k in PASSED_VARIABLES if environ.get(k)}


def entry(client: str, name: str, argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The text to paste into `client`'s configuration for server `name`."""
    command, args = argv[0], list(argv[1:])
    if client == "codex":
        lines = [f"[mcp_servers.{_toml_key(name)}]", f"command = {_toml(command)}",
                 f"args = [{', '.join(_toml(a) for a in args)}]"]  # fmt: skip
        if env:
            pairs = ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in env.items())
            lines.append(f"env = {{ {pairs} }}")
        return "\n".join(lines) + "\n"
    server: dict[str, object] = {"command": command, "args": args}
    if client in ("claude", "vscode"):
        server = {"type": "stdio", **server}
    if env:
        server["env"] = dict(env)
    key = "servers" if client == "vscode" else "mcpServers"
    return json.dumps({key: {name: server}}, indent=2) + "\n"


def _toml(text: str) -> str:
    return json.dumps(text)  # a TOML basic string: JSON's escapes are TOML's


def _toml_key(text: str) -> str:
    bare = text.replace("_", "").replace("-", "").isalnum() and text.isascii()
    return text if bare else _toml(text)
