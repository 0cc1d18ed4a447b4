#!/usr/bin/env python3
"""The MCP gateway over Streamable HTTP (`nhidel proxy`, `/mcp/SERVER`) against the same
gateway over stdio (`nhidel mcp run`): a `tools/call` round trip, sessions opened per second,
20 sessions at once, and the memory of one idle session.

Run on demand, never as a test:

    python3 benchmarks/bench_mcp_http.py [--calls 3000] [--warmup 300] [--rounds 3]
                                         [--sessions 20] [--json OUT]

The server is benchmarks/echo_mcp_server.py with a registered secret (every message toward the
client is scanned), as in bench_gateway.py, whose stdio loop is reused. The HTTP client is a raw
HTTP/1.1 keep-alive loop over the daemon's Unix socket (one POST, read its JSON answer, the
next), so what is timed is the daemon, not an HTTP library. Rounds alternate stdio and HTTP
(each a fresh session); per-call figures are pooled. Then `--sessions` sessions are opened one
after the other (sessions per second: `initialize`, its own child server started, answered)
and make their calls at once from as many threads; the daemon's resident memory before and
after, and one echo server's, give an idle session's cost. Goal (issue 18): at most 2 ms added
at p50 over the stdio gateway, and 20 concurrent sessions.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_gateway import SERVER, percentile, round_trips
from measure import PYTHON, isolated_env, nhidel_command, run_nhidel

GOAL_ADDED_P50_MS, GOAL_SESSIONS = 2.0, 20


class RawSession:
    """One MCP session over a kept-alive connection to the daemon's socket."""

    def __init__(self, path: Path, token: str) -> None:
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.conn.connect(str(path))
        self.reader = self.conn.makefile("rb")
        self.token = token
        self.session: str | None = None
        answer = self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}})  # fmt: skip
        if "result" not in answer:
            sys.exit(f"initialize failed: {answer}")
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        head = (
            "POST /mcp/echo HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            "Accept: application/json, text/event-stream\r\n"
            + (f"Mcp-Session-Id: {self.session}\r\nMCP-Protocol-Version: 2025-06-18\r\n"
               if self.session else "")
            + f"Content-Length: {len(data)}\r\n\r\n"
        )  # fmt: skip
        self.conn.sendall(head.encode() + data)
        status = self.reader.readline().split()[1]
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "mcp-session-id":
                self.session = value.strip()
        payload = self.reader.read(length) if length else b""
        if status not in (b"200", b"202"):
            sys.exit(f"HTTP {status.decode()}: {payload[:200]!r}")
        answer: dict[str, Any] = json.loads(payload) if payload else {}
        return answer

    def calls(self, count: int, warmup: int, first: int = 1) -> list[float]:
        """Milliseconds per `tools/call` after `warmup` untimed ones, one at a time."""
        times = []
        for n in range(first, first + warmup + count):
            body = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"message": f"m{n}"}}}  # fmt: skip
            started = time.perf_counter()
            answer = self.post(body)
            elapsed = time.perf_counter() - started
            if answer.get("result", {}).get("content", [{}])[0].get("text") != f"m{n}":
                sys.exit(f"unexpected answer: {answer}")
            if n >= first + warmup:
                times.append(elapsed * 1000)
        return times

    def close(self) -> None:
        self.reader.close()
        self.conn.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="timed calls a round (3000)")
    parser.add_argument("--warmup", type=int, default=300, help="untimed calls first (300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--sessions", type=int, default=20, help="sessions at once (20)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")
    args = parser.parse_args(argv)
    nhidel, how = nhidel_command()
    stdio: list[float] = []
    http: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nhidel-bench-mcp-http-") as tmp:
        root = Path(tmp)
        passphrase = root / "passphrase"
        passphrase.write_text("bench\n")
        passphrase.chmod(0o600)
        env = isolated_env(root, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(passphrase))
        run_nhidel(nhidel, env, "init", "--principal", "bench")
        subprocess.run([*nhidel, "secret", "add", "api-key"], env=env, input=b"sk-bench-0123456789",
                       check=True, capture_output=True)  # fmt: skip
        run_nhidel(nhidel, env, "mcp", "add", "echo", "--secret", "api-key=API_KEY", "--",
                   PYTHON, str(SERVER))  # fmt: skip
        run_nhidel(nhidel, env, "agent", "add", "bot", "--allow", "echo:*", "--max-ttl", "1h")
        token = run_nhidel(nhidel, env, "grant", "bot", "--scope", "echo:echo", "--ttl", "1h")
        run = root / "run"
        run.mkdir(mode=0o700)
        path = run / "proxy.sock"
        daemon = subprocess.Popen(
            [*nhidel, "proxy", "--socket", str(path)], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert daemon.stdout is not None
            daemon.stdout.readline()
            for _ in range(args.rounds):
                stdio += round_trips(
                    [*nhidel, "mcp", "run", "echo", "--agent", "bot", "--scope", "echo:echo"],
                    env, args.calls, args.warmup,
                )  # fmt: skip
                session = RawSession(path, token)
                http += session.calls(args.calls, args.warmup)
                session.close()
            figures = concurrent(daemon.pid, path, token, args.sessions, args.calls // 10)
        finally:
            daemon.terminate()
            daemon.wait(60)
    figures.update({
        "nhidel": how,
        "calls": len(http),
        "stdio_p50_ms": percentile(stdio, 50),
        "stdio_p99_ms": percentile(stdio, 99),
        "http_p50_ms": percentile(http, 50),
        "http_p99_ms": percentile(http, 99),
        "stdio_mean_ms": statistics.fmean(stdio),
        "http_mean_ms": statistics.fmean(http),
    })  # fmt: skip
    figures["added_p50_ms"] = figures["http_p50_ms"] - figures["stdio_p50_ms"]
    figures["added_p99_ms"] = figures["http_p99_ms"] - figures["stdio_p99_ms"]
    report(figures, args.sessions, how)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def concurrent(daemon: int, path: Path, token: str, count: int, calls: int) -> dict[str, Any]:
    """`count` sessions opened one after the other, then `calls` calls each, all at once."""
    before = rss_mib(daemon)
    started = time.perf_counter()
    sessions = [RawSession(path, token) for _ in range(count)]
    opened = time.perf_counter() - started
    time.sleep(0.5)  # (the servers' start-up settles before memory is read)
    after = rss_mib(daemon)
    servers = [rss_mib(pid) for pid in children(daemon)]
    times: list[list[float]] = [[] for _ in sessions]

    def work(n: int) -> None:
        times[n] = sessions[n].calls(calls, 0, first=1000)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    for session in sessions:
        session.close()
    pooled = [t for each in times for t in each]
    return {
        "sessions": count,
        "sessions_answering": sum(1 for each in times if len(each) == calls),
        "sessions_per_s": count / opened,
        "concurrent_calls_per_s": len(pooled) / wall,
        "concurrent_p50_ms": percentile(pooled, 50),
        "concurrent_p99_ms": percentile(pooled, 99),
        "daemon_mib_per_idle_session": (after - before) / count,
        "server_mib": statistics.median(servers) if servers else None,
    }


def report(figures: dict[str, Any], sessions: int, how: str) -> None:
    print("| tools/call round trip | p50 ms | p99 ms | mean ms |")
    print("| --- | --- | --- | --- |")
    for name in ("stdio", "http"):
        print(f"| {name} gateway | {figures[f'{name}_p50_ms']:.3f} | "
              f"{figures[f'{name}_p99_ms']:.3f} | {figures[f'{name}_mean_ms']:.3f} |")  # fmt: skip
    print(f"| added by HTTP | {figures['added_p50_ms']:.3f} | {figures['added_p99_ms']:.3f} | |")
    print(f"\n{figures['sessions_answering']} of {sessions} sessions at once: "
          f"{figures['concurrent_calls_per_s']:.0f} calls/s, p50 {figures['concurrent_p50_ms']:.2f}"
          f" ms, p99 {figures['concurrent_p99_ms']:.2f} ms; {figures['sessions_per_s']:.1f} "
          f"sessions opened a second; an idle session: {figures['daemon_mib_per_idle_session']:.2f}"
          f" MiB in the daemon + {figures['server_mib'] or 0:.1f} MiB its server")  # fmt: skip
    met_p50 = figures["added_p50_ms"] <= GOAL_ADDED_P50_MS
    met_sessions = figures["sessions_answering"] >= GOAL_SESSIONS
    print(f"\ngoal: added <= {GOAL_ADDED_P50_MS} ms at p50: {'met' if met_p50 else 'NOT met'}; "
          f"{GOAL_SESSIONS} concurrent sessions: {'met' if met_sessions else 'NOT met'} "
          f"({figures['calls']} calls each way, {how})")  # fmt: skip


if __name__ == "__main__":
    main()
