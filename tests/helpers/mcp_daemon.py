"""`nhidel proxy` as a real process for the MCP-over-HTTP tests: a home with servers and
agents registered, the daemon on a Unix socket, raw requests to it, and the official `mcp`
SDK's client in a process of its own that holds nothing but its grant
(tests/helpers/mcp_http_client.py)."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from helpers.mcp_servers import server_binary
from helpers.processes import REPO, command, init_cheaply, isolated_env, ok

SECRET_VALUE = "sk-live-5d2c8e71b9a0-Qx"
FAKE_SERVER = REPO / "tests" / "helpers" / "fake_mcp_server.py"
ACCEPT = "application/json, text/event-stream"
VERSION = "2025-06-18"
DIGEST = hashlib.sha256(SECRET_VALUE.encode()).hexdigest()
WAIT = 30.0  # seconds: only a hung daemon or client takes this long


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie has exited; its parent (the daemon) has not collected it yet.
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(") ")[-1].startswith("Z")


class Client:
    """The SDK client process (tests/helpers/mcp_http_client.py), one operation at a time;
    with `connect`, its stdio client running `nhidel mcp connect SOCKET SERVER`."""

    def __init__(self, daemon: Daemon, server: str, token: str, *, connect: bool = False) -> None:
        empty = daemon.root / f"agent-{len(daemon.clients)}"
        empty.mkdir()
        self.empty = empty
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(empty),
            "NHIDEL_HOME": str(empty),
            "PYTHONPATH": str(REPO / "tests"),
            "MCP_GRANT": token,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "helpers.mcp_http_client", f"http://localhost/mcp/{server}",
             "--socket", str(daemon.socket), *(["--connect"] if connect else [])],
            env=env, cwd=empty, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self._answer()
        assert first == {"ready": True}, first

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def _answer(self) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = json.loads(self.lines.get(timeout=WAIT))
        except queue.Empty:
            self.process.kill()
            raise AssertionError("the SDK client did not answer") from None
        return answer

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        assert "error" not in answer, answer
        return answer

    def tools(self) -> set[str]:
        return set(self.ask("list")["tools"])

    def call(self, tool: str, **args: Any) -> dict[str, Any]:
        return self.ask("call", tool=tool, args=args)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Daemon:
    """A home with a principal, the secret, the filesystem server (`fs`) and a scripted one
    (`fake`, given the secret), agents `bot` and `other`, and `nhidel proxy` on a socket."""

    def __init__(self, root: Path, *options: str) -> None:
        self.root = root
        passphrase = root / "passphrase"
        passphrase.write_text("mcp http tests\n")
        passphrase.chmod(0o600)
        self.env = isolated_env(
            root, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(passphrase)
        )
        self.home = Path(self.env["NHIDEL_HOME"])
        self.allowed = root / "allowed"
        self.allowed.mkdir()
        (self.allowed / "a.txt").write_text("alpha\n")
        init_cheaply(self.env, "--principal", "alice")
        ok(self.env, "secret", "add", "api-key", input=SECRET_VALUE)
        filesystem = server_binary("mcp-server-filesystem")
        ok(self.env, "mcp", "add", "fs", "--resource-arg", "read_text_file=path",
           "--resource-arg", "write_file=path", "--root", str(self.allowed), "--",
           str(filesystem), str(self.allowed))  # fmt: skip
        ok(self.env, "mcp", "add", "fake", "--secret", "api-key=API_TOKEN", "--",
           sys.executable, str(FAKE_SERVER))  # fmt: skip
        everything = server_binary("mcp-server-everything")
        ok(self.env, "mcp", "add", "every", "--secret", "api-key=API_KEY", "--",
           str(everything), "stdio")  # fmt: skip
        for agent in ("bot", "other"):
            allowed = [a for s in ("fs:*", "fs:*:*", "fake:*", "every:*", "brief:*", "mute:*")
                       for a in ("--allow", s)]  # fmt: skip
            ok(self.env, "agent", "add", agent, *allowed, "--max-ttl", "1h")
        run = root / "run"
        run.mkdir(mode=0o700)
        self.socket = run / "proxy.sock"
        self.stderr = root / "proxy-stderr.txt"
        self.process = subprocess.Popen(
            command("proxy", "--socket", str(self.socket), *options), env=self.env,
            cwd=self.env["HOME"], text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.stderr.open("w"), start_new_session=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == f"unix:{self.socket}", self.log()
        self.http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://localhost",
            timeout=WAIT,
        )  # fmt: skip
        self.clients: list[Client] = []

    def log(self) -> str:
        return self.stderr.read_text()

    def grant(self, agent: str, *scopes: str) -> tuple[str, str]:
        """(token, grant id) of a 10-minute grant."""
        args = [a for scope in scopes for a in ("--scope", scope)]
        issued = json.loads(
            ok(self.env, "grant", agent, *args, "--ttl", "10m", "--format", "json").stdout
        )
        return issued["token"], issued["id"]

    def client(self, server: str, token: str, *, connect: bool = False) -> Client:
        client = Client(self, server, token, connect=connect)
        self.clients.append(client)
        return client

    def post(
        self, server: str, body: Any, token: str | None, session: str | None = None,
        **headers: str,
    ) -> httpx.Response:  # fmt: skip
        """A raw POST (a body that is not JSON is sent as it is)."""
        sent = {"Accept": ACCEPT, "Content-Type": "application/json", **headers}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if session is not None:
            sent["Mcp-Session-Id"] = session
            sent.setdefault("MCP-Protocol-Version", VERSION)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post(f"/mcp/{server}", content=content, headers=sent)

    def open_session(self, server: str, token: str) -> str:
        """initialize and notifications/initialized, raw; the session id."""
        answer = self.post(server, {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                    "params": {"protocolVersion": VERSION, "capabilities": {},
                                               "clientInfo": {"name": "raw", "version": "1"}}},
                           token)  # fmt: skip
        assert answer.status_code == 200, answer.text
        session = answer.headers["Mcp-Session-Id"]
        notified = self.post(server, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                             token, session)  # fmt: skip
        assert notified.status_code == 202, notified.text
        return session

    def call(self, server: str, token: str, session: str, tool: str) -> dict[str, Any]:
        """A raw tools/call: its JSON-RPC answer."""
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool}}
        answer = self.post(server, call, token, session)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = json.loads(answer.text)
        return body

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def records(self, event: str) -> list[dict[str, Any]]:
        text = "".join(p.read_text() for p in sorted(self.home.glob("audit*.jsonl*")))
        return [r for r in map(json.loads, text.splitlines()) if r["event"] == event]
