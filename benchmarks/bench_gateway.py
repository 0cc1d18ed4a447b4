#!/usr/bin/env python3
"""The stdio MCP gateway's added latency: `tools/call` round trips through `nhidel mcp run`
against the same calls straight to the server.

Run on demand, never as a test:

    python3 benchmarks/bench_gateway.py [--calls 3000] [--warmup 300] [--rounds 3] [--json OUT]

The server is benchmarks/echo_mcp_server.py (a few lines of Python answering at once), so the
difference is the gateway's: parsing, the grant check (a cached verify, the sealed
configuration stat'ed), the decision record (group-committed), re-serialising, and redaction
(a secret is registered for the server, so every message toward the client is scanned).
The client is a raw JSON-RPC loop over pipes: one request, wait for its answer, the next.
Each round starts a fresh gateway (a grant minted with --scope, the file keystore) and a fresh
direct server; per-call figures are pooled over the rounds. Goal (issue 17): at most 1 ms
added at p50 and 5 ms at p99.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from measure import PYTHON, isolated_env, nhidel_command, run_nhidel

SERVER = Path(__file__).resolve().parent / "echo_mcp_server.py"
GOAL_P50_MS, GOAL_P99_MS = 1.0, 5.0


def round_trips(
    command: Sequence[str], env: dict[str, str], calls: int, warmup: int
) -> list[float]:
    """Milliseconds per `tools/call` after `warmup` untimed ones, one at a time."""
    process = subprocess.Popen(
        list(command), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    send, receive = process.stdin, process.stdout

    def call(body: dict[str, Any]) -> dict[str, Any]:
        send.write(json.dumps(body).encode() + b"\n")
        send.flush()
        answer: dict[str, Any] = json.loads(receive.readline())
        return answer

    call({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}})  # fmt: skip
    send.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    times = []
    for n in range(1, warmup + calls + 1):
        body = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": f"m{n}"}}}  # fmt: skip
        started = time.perf_counter()
        answer = call(body)
        elapsed = time.perf_counter() - started
        if answer.get("result", {}).get("content", [{}])[0].get("text") != f"m{n}":
            sys.exit(f"unexpected answer: {answer}")
        if n > warmup:
            times.append(elapsed * 1000)
    send.close()
    process.wait(30)
    return times


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="timed calls a round (3000)")
    parser.add_argument("--warmup", type=int, default=300, help="untimed calls first (300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")
    args = parser.parse_args(argv)
    nhidel, how = nhidel_command()
    direct: list[float] = []
    gateway: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nhidel-bench-gateway-") as tmp:
        root = Path(tmp)
        passphrase = root / "passphrase"
        passphrase.write_text("bench\n")
        passphrase.chmod(0o600)
        env = isolated_env(root, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(passphrase))
        run_nhidel(nhidel, env, "init", "--principal", "bench")
        # A registered secret, so every message toward the client is scanned as in real use.
        subprocess.run([*nhidel, "secret", "add", "api-key"], env=env, input=b"sk-bench-0123456789",
                       check=True, capture_output=True)  # fmt: skip
        run_nhidel(nhidel, env, "mcp", "add", "echo", "--secret", "api-key=API_KEY", "--",
                   PYTHON, str(SERVER))  # fmt: skip
        run_nhidel(nhidel, env, "agent", "add", "bot", "--allow", "echo:*", "--max-ttl", "1h")
        for _ in range(args.rounds):
            direct += round_trips([PYTHON, str(SERVER)], env, args.calls, args.warmup)
            gateway += round_trips(
                [*nhidel, "mcp", "run", "echo", "--agent", "bot", "--scope", "echo:echo"],
                env, args.calls, args.warmup,
            )  # fmt: skip
    figures = {
        "nhidel": how,
        "calls": len(direct),
        "direct_p50_ms": percentile(direct, 50),
        "direct_p99_ms": percentile(direct, 99),
        "gateway_p50_ms": percentile(gateway, 50),
        "gateway_p99_ms": percentile(gateway, 99),
        "direct_mean_ms": statistics.fmean(direct),
        "gateway_mean_ms": statistics.fmean(gateway),
    }
    figures["added_p50_ms"] = figures["gateway_p50_ms"] - figures["direct_p50_ms"]
    figures["added_p99_ms"] = figures["gateway_p99_ms"] - figures["direct_p99_ms"]
    print("| tools/call round trip | p50 ms | p99 ms | mean ms |")
    print("| --- | --- | --- | --- |")
    for name in ("direct", "gateway"):
        print(f"| {name} | {figures[f'{name}_p50_ms']:.3f} | {figures[f'{name}_p99_ms']:.3f} "
              f"| {figures[f'{name}_mean_ms']:.3f} |")  # fmt: skip
    print(f"| added by the gateway | {figures['added_p50_ms']:.3f} | {figures['added_p99_ms']:.3f}"
          " | |")  # fmt: skip
    met_p50 = figures["added_p50_ms"] <= GOAL_P50_MS
    met_p99 = figures["added_p99_ms"] <= GOAL_P99_MS
    print(f"\ngoal: added <= {GOAL_P50_MS} ms at p50: {'met' if met_p50 else 'NOT met'}; "
          f"<= {GOAL_P99_MS} ms at p99: {'met' if met_p99 else 'NOT met'} "
          f"({figures['calls']} calls each, {how})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
