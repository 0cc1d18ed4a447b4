#!/usr/bin/env python3
"""Redaction throughput: a 100 MB body streamed through `enforce.redact` with 2 secrets.

    python3 benchmarks/bench_redact.py [--mb 100] [--chunk 65536] [--rounds 3] [--json OUT]

Rows (MB per CPU second of this process, median of the rounds; the machine is shared and noisy):
- random_mb_per_s: random bytes (what a binary download looks like)
- base64_mb_per_s: base64 text (the worst ordinary case: every byte is a base64 character, so
  more positions could start one of the secrets' base64 forms)
- json_mb_per_s: a JSON API response, lines of short fields
- whole_json_mb_per_s: `redact_text` on 1 MB JSON-RPC lines (the gateway's case)

Each body holds both secrets a few times (exact, JSON-escaped, base64, hex); the run checks they
were all redacted. Chunks are fed as the broker reads them (`--chunk` bytes).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nhidel.enforce.redact import Redactor

SECRETS = {"OPENAI": "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vX7zB9" * 2, "GITHUB": "ghp_" + "x" * 36}
MB = 1_000_000


def with_hits(body: bytes) -> bytes:
    """`body` with each secret's forms written over it at a few random places."""
    rng = random.Random(17)  # noqa: S311 - placement, not security
    data = bytearray(body)
    for value in SECRETS.values():
        raw = value.encode()
        for form in (raw, json.dumps(value).encode(), base64.b64encode(raw), raw.hex().encode()):
            at = rng.randrange(len(data) - len(form))
            data[at : at + len(form)] = form
    return bytes(data)


def bodies(size: int) -> dict[str, bytes]:
    line = b'{"id": 123456, "name": "a name with words", "tags": ["x", "y"], "ok": true},\n'
    return {
        "random": with_hits(os.urandom(size)),
        "base64": with_hits(base64.b64encode(os.urandom(size * 3 // 4))),
        "json": with_hits((line * (size // len(line) + 1))[:size]),
    }


def streamed(redactor: Redactor, body: bytes, chunk: int) -> float:
    stream = redactor.stream()
    started = time.process_time()
    out = [stream.feed(body[at : at + chunk]) for at in range(0, len(body), chunk)]
    out.append(stream.finish())
    seconds = time.process_time() - started
    assert sorted(stream.names_hit) == sorted(SECRETS), "a secret was not found"
    assert SECRETS["GITHUB"].encode() not in b"".join(out)
    return len(body) / MB / seconds


def whole_json(redactor: Redactor, size: int) -> float:
    message = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": ""}]}}
    message["result"]["content"][0]["text"] = (  # type: ignore[index]
        "ordinary output of a tool, " * (size // 27) + SECRETS["OPENAI"]
    )
    line = json.dumps(message)
    started = time.process_time()
    for _ in range(10):
        out, names = redactor.redact_text(line)
    seconds = time.process_time() - started
    assert names == ["OPENAI"] and SECRETS["OPENAI"] not in out
    return 10 * len(line.encode()) / MB / seconds


def timed(rounds: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(rounds))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="body size in MB")
    parser.add_argument("--chunk", type=int, default=65536, help="bytes per chunk fed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    redactor = Redactor(SECRETS)
    results: dict[str, Any] = {}
    for kind, body in bodies(args.mb * MB).items():
        rate = [streamed(redactor, body, args.chunk) for _ in range(args.rounds)]
        results[f"{kind}_mb_per_s"] = statistics.median(rate)
    results["whole_json_mb_per_s"] = timed(args.rounds, lambda: whole_json(redactor, MB))
    results.update(mb=args.mb, chunk=args.chunk, rounds=args.rounds,
                   holdback=redactor.max_length - 1, seconds=time.perf_counter() - started,
                   load=os.getloadavg()[0])  # fmt: skip
    for name, value in results.items():
        print(f"{name:24} {value:14,.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
