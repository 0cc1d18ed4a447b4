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
