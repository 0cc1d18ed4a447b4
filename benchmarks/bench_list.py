#!/usr/bin/env python3
"""`nhidel list` with 100,000 grants in the ledger, 10,000 of them active, against the Typer floor.

Run on demand, never as a test:

    python3 benchmarks/bench_list.py [--runs N] [--warmup W] [--screens S] [--json OUT]
                                     [--grants G] [--active A]

Two throw-away NHIDEL_HOMEs get ledgers filled by SQL in one transaction (schema from nhidel's
own Ledger class): the large one holds G grants (default 100,000), A of them active (default
10,000) and the rest, in turn, expired, revoked and used up. The revoked and used-up ones have
not expired yet: the worst case for the default listing, which must not step over them. The
small one holds only the A active grants, so both print the same listing.

- hyperfine -N (real interpreter, no shell) times `python -c pass`, `python -c "import typer"`
  (the Typer floor), `nhidel list --json`, `nhidel list --all --json` and the whole table
  (`nhidel list`, stdout a pipe) on the large ledger, and `nhidel list --json` on an empty
  ledger (start-up alone: `listing_ms` is the difference); figures are medians.
- First screen: this script starts `nhidel list` with stdout a pipe and notes when the first 40
  lines have arrived (and when the output ends), S times (default 15); the median is reported.
- Peak RSS (ru_maxrss from wait4, like /usr/bin/time -v) of `list --json` on both ledgers, the
  median of 3 runs each: memory must not grow with the ledger.

Goal (issue 6): `list --json` and the table's first screen within 2x the Typer floor, and the
peak RSS on the large ledger about that on the small one. Exit 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from measure import (
    HYPERFINE_HINT,
    PYTHON,
    clean_python,
    find_hyperfine,
    hyperfine,
    isolated_env,
    nhidel_command,
    peak_rss,
    summarise,
)

from nhidel.ledger.store import Ledger
from nhidel.models import new_grant_id
from nhidel.paths import Paths

SCREEN_LINES = 40
RSS_RUNS = 3
GOAL_X_TYPER = 2.0
GOAL_RSS_RATIO = 1.25
SCOPES = ("repo:read:acme/api", "ticket:create:queue/support repo:read:acme/web", "release:publish")
REASONS = (None, "nightly release", 'review "api" for Zoë')
KINDS = ("expired", "revoked", "exhausted")
EMPTY = "nhidel list --json, empty ledger"


def fill_ledger(home: Path, total: int, active: int, now: int) -> dict[str, int]:
    """`total` grants, the first `active` active, the rest in turn expired, revoked, used up."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    rng = random.Random(6)  # noqa: S311 - test data, not secrets
    counts = dict.fromkeys(("active", *KINDS), 0)
    rows = []
    for n in range(total):
        kind = "active" if n < active else KINDS[n % 3]
        counts[kind] += 1
        issued = now - 86_400 + rng.randrange(80_000)
        expires = now - 1 - rng.randrange(80_000) if kind == "expired" else now + 600 + n
        max_uses = 3 if kind == "exhausted" or n % 7 == 0 else None
        rows.append((
            new_grant_id(), f"agent-{n % 50}", SCOPES[n % 3], "api.example.com" if n % 4 else None,
            issued, issued, expires, max_uses, 3 if kind == "exhausted" else 0, REASONS[n % 3],
            "kid-1", "0" * 64, now - 60 if kind == "revoked" else None,
            "incident" if kind == "revoked" else None,
        ))  # fmt: skip
    with Ledger(Paths(home, home)) as ledger, ledger.transaction():
        ledger.db.executemany(
            "INSERT INTO grants (id, agent, scope, aud, issued_at, not_before, expires_at, "
            "max_uses, uses, reason, kid, token_sha256, revoked_at, revoke_reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return counts


def first_screen(argv: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    """Start `argv` with stdout a pipe: when SCREEN_LINES lines had arrived, and when all had."""
    screens, totals = [], []
    for _ in range(runs + 1):  # the first is a warm-up
        start = time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert child.stdout is not None
        seen = 0
        while seen < SCREEN_LINES and child.stdout.readline():
            seen += 1
        screen = time.perf_counter() - start
        while child.stdout.read(1 << 16):
            pass
        child.wait()
        total = time.perf_counter() - start
        if child.returncode != 0 or seen < SCREEN_LINES:
            sys.exit(f"{' '.join(argv)} failed (exit {child.returncode}, {seen} lines)")
        screens.append(screen)
        totals.append(total)
    screens, totals = screens[1:], totals[1:]
    return {
        "median_ms": statistics.median(screens) * 1000,
        "min_ms": min(screens) * 1000,
        "max_ms": max(screens) * 1000,
        "whole_output_median_ms": statistics.median(totals) * 1000,
        "runs": runs,
        "times_s": screens,
    }


def rss(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    runs = [peak_rss(argv, env)["rss_kib"] for _ in range(RSS_RUNS)]
    return {"rss_mib": statistics.median(runs) / 1024, "runs_kib": runs}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs (default 3)")
    parser.add_argument("--screens", type=int, default=15, help="first-screen runs (default 15)")
    parser.add_argument("--grants", type=int, default=100_000, help="large ledger (100000)")
    parser.add_argument("--active", type=int, default=10_000, help="active grants (10000)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")
    args = parser.parse_args(argv)
    found = find_hyperfine()
    if found is None:
        sys.exit(HYPERFINE_HINT)
    exe, hyperfine_version = found
    nhidel, how = nhidel_command()
    started = time.perf_counter()
    now = int(time.time())
    with tempfile.TemporaryDirectory(prefix="nhidel-bench-list-") as tmp:
        root = Path(tmp)
        # Without bytecode writes, every run would recompile each module changed since the last
        # write: let the warm-ups write it, as an installed nhidel has it.
        env = isolated_env(root / "large", COLUMNS="100")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        small_env = isolated_env(root / "small", COLUMNS="100")
        small_env.pop("PYTHONDONTWRITEBYTECODE", None)
        counts = fill_ledger(Path(env["NHIDEL_HOME"]), args.grants, args.active, now)
        fill_ledger(Path(small_env["NHIDEL_HOME"]), args.active, args.active, now)
        fill_s = time.perf_counter() - started
        listed = json.loads(subprocess.check_output([*nhidel, "list", "--json"], env=env))
        assert len(listed) == args.active, f"{len(listed)} grants listed"
        commands = {
            "python -c pass": [clean_python(), "-c", "pass"],
            "python -c 'import typer'": [PYTHON, "-c", "import typer"],
            "nhidel list --json": [*nhidel, "list", "--json"],
            "nhidel list --all --json": [*nhidel, "list", "--all", "--json"],
            "nhidel list (whole table, to a pipe)": [*nhidel, "list"],
        }
        timed = hyperfine(exe, list(commands.items()), env, args.runs, args.warmup, root)
        # The same command on an empty ledger: start-up alone, to tell it from the listing.
        empty_env = isolated_env(root / "empty", COLUMNS="100")
        empty_env.pop("PYTHONDONTWRITEBYTECODE", None)
        fill_ledger(Path(empty_env["NHIDEL_HOME"]), 0, 0, now)
        empty = (EMPTY, [*nhidel, "list", "--json"])
        timed |= hyperfine(exe, [empty], empty_env, args.runs, args.warmup, root)
        screen = first_screen([*nhidel, "list"], env, args.screens)
        rss_small = rss([*nhidel, "list", "--json"], small_env)
        rss_large = rss([*nhidel, "list", "--json"], env)
    rows = {name: summarise(result) for name, result in timed.items()}
    typer_ms = rows["python -c 'import typer'"]["median_ms"]
    json_ms = rows["nhidel list --json"]["median_ms"]
    results: dict[str, Any] = {
        "json_ms": json_ms,
        "all_json_ms": rows["nhidel list --all --json"]["median_ms"],
        "table_ms": rows["nhidel list (whole table, to a pipe)"]["median_ms"],
        "first_screen_ms": screen["median_ms"],
        "python_ms": rows["python -c pass"]["median_ms"],
        "typer_ms": typer_ms,
        "json_x_typer": json_ms / typer_ms,
        "empty_json_ms": rows[EMPTY]["median_ms"],
        "listing_ms": json_ms - rows[EMPTY]["median_ms"],
        "first_screen_x_typer": screen["median_ms"] / typer_ms,
        "json_rss_mib": rss_large["rss_mib"],
        "json_rss_mib_small": rss_small["rss_mib"],
        "rss_ratio": rss_large["rss_mib"] / rss_small["rss_mib"],
        "ledger": {"grants": args.grants, **counts, "small_ledger_grants": args.active},
        "hyperfine": rows,
        "first_screen": screen,
        "rss": {"large": rss_large, "small": rss_small},
        "setup": {
            "nhidel": how, "python": PYTHON, "hyperfine": hyperfine_version,
            "runs": args.runs, "warmup": args.warmup, "fill_s": fill_s,
            "seconds": time.perf_counter() - started, "load_average": os.getloadavg()[0],
        },
    }  # fmt: skip
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def report(results: dict[str, Any]) -> None:
    ledger, typer_ms = results["ledger"], results["typer_ms"]
    print(f"ledger: {ledger['grants']:,} grants ({ledger['active']:,} active, "
          f"{ledger['expired']:,} expired, {ledger['revoked']:,} revoked, "
          f"{ledger['exhausted']:,} used up); {results['setup']['nhidel']}")  # fmt: skip
    print("| what | median | x typer |")
    print("| --- | ---: | ---: |")
    for name, row in results["hyperfine"].items():
        print(f"| `{name}` | {row['median_ms']:.1f} ms | {row['median_ms'] / typer_ms:.2f} |")
    screen = results["first_screen"]
    print(f"| `nhidel list`: first {SCREEN_LINES} lines on a pipe | {screen['median_ms']:.1f} ms "
          f"| {results['first_screen_x_typer']:.2f} |")  # fmt: skip
    print(f"| `nhidel list --json` peak RSS, {ledger['small_ledger_grants']:,}-grant ledger | "
          f"{results['json_rss_mib_small']:.1f} MiB | |")  # fmt: skip
    print(f"| `nhidel list --json` peak RSS, {ledger['grants']:,}-grant ledger | "
          f"{results['json_rss_mib']:.1f} MiB | |")  # fmt: skip
    goals = (
        ("list --json within 2x the Typer floor", results["json_x_typer"], GOAL_X_TYPER),
        ("first screen within 2x the Typer floor", results["first_screen_x_typer"], GOAL_X_TYPER),
        ("peak RSS, large ledger / small ledger", results["rss_ratio"], GOAL_RSS_RATIO),
    )
    for what, value, limit in goals:
        verdict = "met" if value <= limit else "NOT met"
        print(f"goal: {what}: {value:.2f} (limit {limit}): {verdict}")


if __name__ == "__main__":
    figures = main()
    met = (
        figures["json_x_typer"] <= GOAL_X_TYPER
        and figures["first_screen_x_typer"] <= GOAL_X_TYPER
        and figures["rss_ratio"] <= GOAL_RSS_RATIO
    )
    raise SystemExit(0 if met else 1)
