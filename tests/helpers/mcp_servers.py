"""The MCP reference servers and the official `mcp` SDK client, for the gateway's tests.

tests/run.sh installs the servers pinned by tests/mcp_servers/package-lock.json into
tests/mcp_servers/node_modules. A missing server (or SDK) skips its tests with the command
that installs it; under CI=true it fails instead: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers.processes import REPO

SERVERS = REPO / "tests" / "mcp_servers"
INSTALL_HINT = "run tests/run.sh (it runs: npm ci --prefix tests/mcp_servers)"


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true forbids skipping")
    pytest.skip(f"{reason}: {INSTALL_HINT}")


def server_binary(name: str) -> Path:
    """tests/mcp_servers/node_modules/.bin/NAME, or a skip (a failure in CI)."""
    path = SERVERS / "node_modules" / ".bin" / name
    if not path.exists():
        _missing(f"the MCP reference server {name} is not installed")
    return path


def require_sdk() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        _missing("the mcp SDK is not installed (pip install -e '.[test]')")


def nhidel_command(*args: str) -> tuple[str, list[str]]:
    """The gateway's command as a client would start it."""
    return sys.executable, ["-m", "nhidel", *args]
