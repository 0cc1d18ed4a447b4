"""`nhidel mcp config`: each client's entry that starts the gateway, never a secret or token."""

from __future__ import annotations

import json
import sys
import tomllib

import pytest
from helpers.support import Cli

SECRET = "sk-never-in-a-client-config"


@pytest.fixture
def registered(ready: Cli) -> Cli:
    ready.ok("secret", "add", "api-key", input=SECRET)
    ready.ok("agent", "add", "bot", "--allow", "fs:*:*", "--allow", "fs:list", "--max-ttl", "1h")
    ready.ok("mcp", "add", "fs", "--secret", "api-key=API_KEY", "--", sys.executable, "-V")
    return ready


RUN = ["-m", "nhidel", "mcp", "run", "fs", "--agent", "bot", "--scope", "fs:read:/srv/*",
       "--ttl", "30m"]  # fmt: skip


def config(cli: Cli, client: str) -> str:
    result = cli.ok("mcp", "config", "fs", "--agent", "bot", "--scope", "fs:read:/srv/*",
                    "--ttl", "30m", "--client", client)  # fmt: skip
    assert SECRET not in result.stdout + result.stderr
    assert "eyJ" not in result.stdout  # no token either
    return result.stdout


@pytest.mark.parametrize("client", ["claude", "cursor"])
def test_claude_and_cursor_get_mcp_servers_json_running_this_python(
    registered: Cli, client: str
) -> None:
    entry = json.loads(config(registered, client))["mcpServers"]["fs"]
    assert entry["command"] == sys.executable and entry["args"] == RUN
    assert set(entry["env"]) == {"NHIDEL_HOME"}


def test_vscode_gets_servers_with_type_stdio(registered: Cli) -> None:
    entry = json.loads(config(registered, "vscode"))["servers"]["fs"]
    assert entry["type"] == "stdio" and entry["args"] == RUN


def test_codex_gets_a_toml_table(registered: Cli) -> None:
    entry = tomllib.loads(config(registered, "codex"))["mcp_servers"]["fs"]
    assert entry["command"] == sys.executable and entry["args"] == RUN


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["nope", "--agent", "bot"], 3, "nhidel mcp add nope"),
        (["fs", "--agent", "bot", "--scope", "fs:write"], 6, "beyond agent bot's ceiling"),
        (["fs", "--agent", "bot", "--scope", "other:read"], 2, "not for MCP server fs"),
        (["fs", "--agent", "bot", "--scope", "fs:list", "--ttl", "2h"], 6, "maximum of 1h"),
        (["fs", "--agent", "bot", "--ttl", "5m"], 2, "--ttl is for a grant minted with --scope"),
        (["fs", "--agent", "bot", "--client", "emacs"], 2, "unknown --client"),
    ],
)
def test_what_mcp_run_would_refuse_is_refused_before_printing(
    registered: Cli, args: list[str], code: int, words: str
) -> None:
    result = registered("mcp", "config", *args)
    assert result.exit_code == code and result.stdout == ""
    assert words in result.stderr


# -- --http: the client reaches nhidel proxy with its grant alone ---------------------------

DAEMON = "http://127.0.0.1:8787"
AUTHORISED = {"claude": "Bearer ${NHIDEL_TOKEN}", "cursor": "Bearer ${env:NHIDEL_TOKEN}",
              "vscode": "Bearer ${env:NHIDEL_TOKEN}"}  # fmt: skip


def http_config(cli: Cli, client: str, url: str = DAEMON) -> str:
    result = cli.ok("mcp", "config", "fs", "--agent", "bot", "--http", url, "--client", client)
    assert SECRET not in result.stdout + result.stderr and "eyJ" not in result.stdout
    assert "NHIDEL_TOKEN=$(nhidel grant bot --scope 'fs:*'" in result.stderr  # how to get one
    return result.stdout


@pytest.mark.parametrize(
    ("client", "key", "kind"), [("claude", "mcpServers", "http"), ("cursor", "mcpServers", None),
                                ("vscode", "servers", "http")],
)  # fmt: skip
def test_json_clients_get_the_daemons_url_and_the_grant_from_their_own_variable_syntax(
    registered: Cli, client: str, key: str, kind: str | None
) -> None:
    entry = json.loads(http_config(registered, client))[key]["fs"]
    assert entry == {
        **({"type": kind} if kind else {}),
        "url": f"{DAEMON}/mcp/fs",
        "headers": {"Authorization": AUTHORISED[client]},
    }


def test_codex_gets_a_url_and_bearer_token_env_var(registered: Cli) -> None:
    entry = tomllib.loads(http_config(registered, "codex"))["mcp_servers"]["fs"]
    assert entry == {"url": f"{DAEMON}/mcp/fs", "bearer_token_env_var": "NHIDEL_TOKEN"}


@pytest.mark.parametrize(
    ("given", "url"),
    [
        (f"{DAEMON}/", f"{DAEMON}/mcp/fs"),
        (f"{DAEMON}/mcp/fs", f"{DAEMON}/mcp/fs"),  # already the server's: kept
        ("https://gw.internal/nhidel", "https://gw.internal/nhidel/mcp/fs"),  # behind a proxy
    ],
)
def test_the_url_is_the_daemons_address_plus_mcp_server_once(
    registered: Cli, given: str, url: str
) -> None:
    assert json.loads(http_config(registered, "claude", given))["mcpServers"]["fs"]["url"] == url


def test_vscode_reaches_the_daemons_unix_socket_and_other_clients_are_told_how(
    registered: Cli,
) -> None:
    entry = json.loads(http_config(registered, "vscode", "unix:/run/u/nhidel/proxy.sock"))
    assert entry["servers"]["fs"]["url"] == "unix:///run/u/nhidel/proxy.sock#/mcp/fs"
    refused = registered("mcp", "config", "fs", "--agent", "bot", "--http",
                         "unix:/run/u/nhidel/proxy.sock", "--client", "codex")  # fmt: skip
    assert refused.exit_code == 2 and "cannot reach the Unix socket" in refused.stderr
    assert "nhidel proxy --listen" in refused.stderr and refused.stdout == ""


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--scope", "fs:list"], 2, "with --http the client sends its own"),
        (["--ttl", "5m"], 2, "with --http the client sends its own"),
        (["--http", "ftp://127.0.0.1:1"], 2, "invalid --http"),
        (["--http", "http://u:p@127.0.0.1:1"], 2, "invalid --http"),
        (["--http", f"{DAEMON}?token=x"], 2, "invalid --http"),
        (["--http", f"{DAEMON}/mcp/other"], 2, "names MCP server other, not fs"),
        (["--agent", "nobody"], 3, "nobody"),
    ],
)
def test_a_bad_http_entry_request_is_refused_before_printing(
    registered: Cli, args: list[str], code: int, words: str
) -> None:
    base = ["mcp", "config", "fs", "--agent", "bot", "--http", DAEMON]
    result = registered(*base, *args)
    assert result.exit_code == code and result.stdout == "", result.stderr
    assert words in result.stderr


def test_plain_http_to_another_host_is_warned_about(registered: Cli) -> None:
    result = registered.ok(
        "mcp", "config", "fs", "--agent", "bot", "--http", "http://10.0.0.2:8787"
    )
    assert "grant crosses the network unencrypted" in result.stderr
    quiet = registered.ok("mcp", "config", "fs", "--agent", "bot", "--http", DAEMON)
    assert "unencrypted" not in quiet.stderr
