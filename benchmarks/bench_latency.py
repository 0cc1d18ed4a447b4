"""Per-check latency of `Verifier.check` with the audit group commit running, against audit off.

    python3 benchmarks/bench_latency.py [--tokens 6000] [--rounds 3] [--seconds 3] [--json OUT]

Each check is timed alone (`time.perf_counter_ns` around one `Verifier.check`), so a check that
waits for the group commit (its lock, its sealing holding the GIL, its fsync or its keystore
mark write) shows up in the tail. Rows (microseconds: p50, p99, p99.9, max):
- fresh_audit_on / fresh_audit_off: `--rounds` passes over `--tokens` distinct tokens, each pass
  with a new Verifier (every check a signature check and a distinct decision record);
  `Verifier(audit=False)` for off
- repeated_audit_on / repeated_audit_off: one token checked again and again for `--seconds`
  (the remembered-decision path; identical decisions coalesce into one record a window)
- threads_1_per_s / threads_2_per_s: checks per wall second of the repeated token, audit on,
  from one thread and from two threads sharing one Verifier, for `--seconds` each

The group commit writes at most a second after a decision, so a row must run for several
seconds to include several writes: the fresh rows run about a second a pass, and the
repeated rows `--seconds`. The keystore is the encrypted file keystore, as in bench_verify.
Goal (issue 14): p99.9 with audit on at most 2x the audit-off figure, max under 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench_verify import SCOPE, Fixture

from nhidel.verifiers.local import Verifier


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    """p50, p99, p99.9 and max of `samples_ns`, in microseconds."""
    ordered = sorted(samples_ns)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000

    return {"p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999),
            "max_us": ordered[-1] / 1000, "checks": len(ordered)}  # fmt: skip


def timed_checks(check: Callable[[str], bool], tokens: Sequence[str]) -> list[int]:
    """Nanoseconds each check of `tokens` took."""
    clock = time.perf_counter_ns
    samples = []
    for token in tokens:
        start = clock()
        allowed = check(token)
        samples.append(clock() - start)
        if not allowed:
            raise AssertionError("a benchmark token was denied")
    return samples


def fresh(fixture: Fixture, rounds: int, *, audit: bool) -> dict[str, float]:
    samples: list[int] = []
    for _ in range(rounds):
        with Verifier(fixture.paths, fixture.keystore, audit=audit) as verifier:
            samples += timed_checks(lambda t: verifier.check(t, (SCOPE,)).allowed, fixture.tokens)
    return percentiles(samples)


def repeated(fixture: Fixture, seconds: float, *, audit: bool) -> dict[str, float]:
    token = fixture.tokens[0]
    samples: list[int] = []
    with Verifier(fixture.paths, fixture.keystore, audit=audit) as verifier:
        check = verifier.check
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            samples += timed_checks(lambda t: check(t, (SCOPE,)).allowed, [token] * 1000)
    return percentiles(samples)


def throughput(fixture: Fixture, seconds: float, threads: int) -> float:
    """Checks per wall second of one token from `threads` threads sharing a Verifier."""
    token = fixture.tokens[0]
    counts = [0] * threads
    with Verifier(fixture.paths, fixture.keystore) as verifier:
        check = verifier.check
        verifier.check(token, (SCOPE,))  # remembered before the clock starts
        go = threading.Event()
        end = 0.0

        def work(slot: int) -> None:
            go.wait()
            done = 0
            while time.perf_counter() < end:
                for _ in range(100):
                    check(token, (SCOPE,))
                done += 100
            counts[slot] = done

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        start = time.perf_counter()
        end = start + seconds
        go.set()
        for worker in workers:
            worker.join()
        return sum(counts) / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6000, help="distinct fresh tokens")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the fresh tokens")
    parser.add_argument("--seconds", type=float, default=3.0, help="of each repeated row")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as home:
        fixture = Fixture(Path(home), args.tokens)
        for audit in (False, True):
            name = "on" if audit else "off"
            results[f"fresh_audit_{name}"] = fresh(fixture, args.rounds, audit=audit)
            results[f"repeated_audit_{name}"] = repeated(fixture, args.seconds, audit=audit)
        results["threads_1_per_s"] = throughput(fixture, args.seconds, 1)
        results["threads_2_per_s"] = throughput(fixture, args.seconds, 2)
    for kind in ("fresh", "repeated"):
        on, off = results[f"{kind}_audit_on"], results[f"{kind}_audit_off"]
        results[f"{kind}_p999_on_vs_off"] = on["p999_us"] / off["p999_us"]
    results.update(tokens=args.tokens, rounds=args.rounds, seconds=args.seconds,
                   wall_s=time.perf_counter() - started, load=os.getloadavg()[0])  # fmt: skip
    for name, value in results.items():
        if isinstance(value, dict):
            print(f"{name:24} " + "  ".join(f"{k} {v:10,.1f}" for k, v in value.items()))
        else:
            print(f"{name:24} {value:14,.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
