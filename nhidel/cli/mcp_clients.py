"""`mcp config`: the entry an MCP client needs to reach the gateway, in each client's shape.

The stdio entry runs this very installation as `<python> -m nhidel mcp run ...`, both
absolute: a client starts servers without the user's shell, so neither PATH nor a
virtualenv's activation can be relied on. It never holds a secret or a token (the gateway
mints its own grant, or the client's environment carries NHIDEL_TOKEN); only NHIDEL_HOME and
NHIDEL_KEYSTORE when they are set, so the gateway opens the same home and keystore as the
shell that printed it.

The HTTP entry (`--http URL`) points the client at `nhidel proxy`'s `/mcp/SERVER` with the
header `Authorization: Bearer <grant>`, the grant taken from NHIDEL_TOKEN by the client itself
(each client's own way of naming a variable); the entry holds the variable's name, never a
token. It needs no nhidel installation, home or keystore where the client runs.
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
# Claude Code documents its ${VAR} expansion for a project's .mcp.json (url and headers
# included); user-scope entries in ~/.claude.json are not documented to expand.
HTTP_WHERE = {
    **WHERE,
    "claude": "Claude Code: the project's .mcp.json, merged into its mcpServers (Claude Code "
    "documents ${NHIDEL_TOKEN} expansion there)",
}
PASSED_VARIABLES = ("NHIDEL_HOME", "NHIDEL_KEYSTORE")
GRANT_VARIABLE = "NHIDEL_TOKEN"  # where an HTTP entry's client finds the grant it sends
# How each JSON client writes "the value of variable NAME" in a header (Codex names the
# variable in `bearer_token_env_var` instead).
EXPANDED = {"claude": "${%s}", "cursor": "${env:%s}", "vscode": "${env:%s}"}


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


def server_url(base: str, server: str, client: str) -> str:
    """Where the client finds `server` on the daemon at `base` (as `nhidel proxy` printed it):
    `base` + `/mcp/SERVER`, unless `base` already ends with it. A Unix socket (`unix:PATH`)
    only for VS Code, which reaches one as `unix:///PATH#/mcp/SERVER`."""
    from urllib.parse import urlsplit

    from nhidel.errors import UsageError

    suffix = f"/mcp/{server}"
    if base.startswith("unix:"):
        socket_path = base[len("unix:") :]
        if client != "vscode" or not socket_path.startswith("/"):
            raise UsageError(
                f"--client {client} cannot reach the Unix socket {socket_path}",
                "give the daemon's TCP address (nhidel proxy --listen 127.0.0.1:8787), or "
                f"relay stdio to the socket: nhidel mcp connect {socket_path} {server}",
            )
        return f"unix://{socket_path}#{suffix}"
    parts = urlsplit(base)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
    ):
        raise UsageError(
            f"invalid --http {base!r}",
            "give the daemon's address as nhidel proxy prints it, e.g. http://127.0.0.1:8787",
        )
    path = parts.path.rstrip("/")
    if not path.endswith(suffix):
        head, _, last = path.rpartition("/")
        if head.endswith("/mcp") and last:
            raise UsageError(
                f"--http {base} names MCP server {last}, not {server}",
                "give the daemon's address alone: /mcp/SERVER is added to it",
            )
        path += suffix
    return f"{parts.scheme}://{parts.netloc}{path}"


def cleartext_off_loopback(url: str) -> bool:
    """Whether `url` sends the grant unencrypted to another machine (plain http, a host that
    is not loopback)."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname in (None, "localhost"):
        return False
    try:
        return not ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return True  # a name: where it leads is not known here


def http_entry(client: str, name: str, url: str) -> str:
    """The text to paste into `client`'s configuration to reach server `name` at `url`
    through the daemon, the grant from NHIDEL_TOKEN."""
    if client == "codex":
        return (
            f"[mcp_servers.{_toml_key(name)}]\nurl = {_toml(url)}\n"
            f"bearer_token_env_var = {_toml(GRANT_VARIABLE)}\n"
        )
    server: dict[str, object] = {"url": url}
    if client in ("claude", "vscode"):
        server = {"type": "http", **server}
    server["headers"] = {"Authorization": "Bearer " + EXPANDED[client] % GRANT_VARIABLE}
    key = "servers" if client == "vscode" else "mcpServers"
    return json.dumps({key: {name: server}}, indent=2) + "\n"


def _toml(text: str) -> str:
    return json.dumps(text)  # a TOML basic string: JSON's escapes are TOML's


def _toml_key(text: str) -> str:
    bare = text.replace("_", "").replace("-", "").isalnum() and text.isascii()
    return text if bare else _toml(text)
