#!/usr/bin/env python3
"""Every nhidel benchmark in one run: one table of medians and ratios, the goals, and JSON.

Run on demand, never as a test:

    python3 benchmarks/run.py [--quick] [--json OUT]

Each suite is a `bench_*.py` script in this directory, run in a fresh interpreter with
`--json`; the figures are what its `main(argv)` returns (and writes). Ratios
divide by baselines measured in this same run: `python -c pass` and `python -c "import typer"`
(the Typer floor) for command lines, timed by bench_cli at the start and again at the end, their
runs pooled; raw Ed25519 verify from `cryptography` for verify throughput, timed by
bench_verify. A suite that is missing or fails shows "not available" and the run goes on.
Progress and each suite's own output go to stderr; the table and the goals go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from measure import (
    PYTHON,
    clean_python,
    find_hyperfine,
    hyperfine,
    isolated_env,
    source_revision,
)

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results.json"
BUDGET_S = 300
PYTHON_ROW = "python -c pass"
TYPER = "python -c 'import typer'"
PACKAGES = ("typer", "click", "rich", "cryptography", "keyring", "secretstorage", "pydantic")

# Per suite: the arguments of a full run (each script's defaults, which fit the 5-minute budget
# on 2 shared cores) and of --quick, which is for checking the runner, not for figures.
SUITES: dict[str, dict[str, list[str]]] = {
    "bench_cli": {"full": [], "quick": ["--runs", "5", "--warmup", "1"]},
    "bench_completion": {"full": [], "quick": ["--runs", "5", "--warmup", "1"]},
    "bench_audit": {
        "full": [],
        "quick": ["--records", "100000", "--small", "10000", "--runs", "1"],
    },
    "bench_verify": {
        "full": [],
        "quick": ["--tokens", "2000", "--repeats", "50000", "--rounds", "1"],
    },
    "bench_list": {
        "full": [],
        "quick": ["--runs", "5", "--warmup", "1", "--screens", "5"],
    },
    "bench_latency": {
        "full": [],
        "quick": ["--tokens", "2000", "--rounds", "1", "--seconds", "1"],
    },
}


@dataclass
class Suite:
    name: str
    status: str  # "ok", "not available", "failed"
    seconds: float = 0.0
    reason: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


def run_suite(name: str, argv: list[str]) -> Suite:
    """Run benchmarks/<name>.py in a fresh interpreter and read the figures its main() wrote as
    JSON; never let one suite stop the run.

    A fresh process per suite: in-process throughput figures (bench_verify's library rows) came
    out ~10 % lower after the other suites had run in the same interpreter (a larger heap makes
    each garbage collection pass slower).
    """
    script = HERE / f"{name}.py"
    if not script.exists():
        return Suite(name, "not available", reason=f"benchmarks/{name}.py does not exist")
    print(f"\n== {name} {' '.join(argv)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nhidel-bench-") as scratch:
        out = Path(scratch) / "figures.json"
        # The suites print their own tables: to stderr here, so stdout holds only ours. Their
        # exit status says whether their own goals were met; the JSON is what counts here.
        done = subprocess.run(
            [PYTHON, str(script), *argv, "--json", str(out)],
            stdout=sys.stderr,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        seconds = time.perf_counter() - start
        try:
            result = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            reason = f"exit {done.returncode}, no figures ({type(exc).__name__})"
            return Suite(name, "failed", seconds, reason)
    print(f"== {name}: {seconds:.0f} s", file=sys.stderr, flush=True)
    if not isinstance(result, dict):
        return Suite(name, "failed", seconds, f"it wrote {type(result).__name__}, not an object")
    return Suite(name, "ok", seconds, result=result)


def dig(data: dict[str, Any], *path: str) -> Any:
    """data[path[0]][path[1]]..., or None where any step is missing."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


@dataclass
class Row:
    section: str
    name: str
    value: float | None  # None: not available
    unit: str  # "ms", "/s", "MiB"
    x_python: float | None = None
    x_typer: float | None = None
    percent: float | None = None  # of `percent_of`
    percent_of: str | None = None
    source: str = ""
    note: str | None = None


@dataclass
class Goal:
    text: str
    issue: int
    value: float | None
    limit: float
    unit: str
    at_most: bool = True  # False: value must be at least the limit

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit


class Table:
    """The rows and goals, built from the suites' dicts against this run's baselines."""

    def __init__(self, suites: dict[str, Suite], end: dict[str, list[float]]) -> None:
        self.suites = suites
        self.rows: list[Row] = []
        self.goals: list[Goal] = []
        cli = self.result("bench_cli")
        # Each baseline is the median of its runs at the start (bench_cli) and at the end of the
        # run pooled: the machine is shared, and a burst of load at either end moves it less.
        self.start_ms: dict[str, float] = {}
        self.end_ms: dict[str, float] = {}
        self.pooled_ms: dict[str, float] = {}
        for name in (PYTHON_ROW, TYPER):
            start = dig(cli, "results", name, "times_s") or []
            if start:
                self.start_ms[name] = statistics.median(start) * 1000
            if end.get(name):
                self.end_ms[name] = statistics.median(end[name]) * 1000
            if start:
                self.pooled_ms[name] = statistics.median(start + end.get(name, [])) * 1000
        self.python_ms = self.pooled_ms.get(PYTHON_ROW)
        self.typer_ms = self.pooled_ms.get(TYPER)

    def result(self, suite: str) -> dict[str, Any]:
        return self.suites[suite].result if suite in self.suites else {}

    def missing(self, suite: str) -> str:
        found = self.suites.get(suite)
        if found is None:
            return f"{suite} not run"
        return found.reason or f"{suite}: no such figure"

    def command(self, name: str, suite: str, ms: float | None, note: str | None = None) -> Row:
        """A command-line row: median ms, with x python and x typer."""
        row = Row("command line (median ms)", name, ms, "ms", source=suite, note=note)
        if ms is not None and self.python_ms and self.typer_ms:
            row.x_python, row.x_typer = ms / self.python_ms, ms / self.typer_ms
        if ms is None:
            row.note = self.missing(suite)
        self.rows.append(row)
        return row

    def rate(
        self, name: str, suite: str, per_s: float | None, base: float | None, base_name: str
    ) -> Row:
        """A throughput row: per second, and the percentage of `base`."""
        row = Row("verify throughput (checks/s)", name, per_s, "/s", source=suite)
        if per_s is not None and base:
            row.percent, row.percent_of = 100 * per_s / base, base_name
        if per_s is None:
            row.note = self.missing(suite)
        self.rows.append(row)
        return row

    def other(self, section: str, name: str, suite: str, value: float | None, unit: str) -> Row:
        row = Row(section, name, value, unit, source=suite)
        if value is None:
            row.note = self.missing(suite)
        self.rows.append(row)
        return row

    def goal(
        self,
        text: str,
        issue: int,
        value: float | None,
        limit: float,
        unit: str,
        *,
        at_most: bool = True,
    ) -> None:
        self.goals.append(Goal(text, issue, value, limit, unit, at_most))

    def build(self) -> None:
        self.command_rows()
        self.throughput_rows()
        self.latency_rows()
        self.audit_rows()
        self.memory_rows()

    def command_rows(self) -> None:
        cli = self.result("bench_cli")

        def ms(name: str) -> float | None:
            return dig(cli, "results", name, "median_ms")

        kdf = dig(cli, "kdf", "median_ms")
        self.command("python -c pass (baseline, start and end)", "bench_cli", self.python_ms)
        self.command(
            "python -c 'import typer' (Typer floor, start and end)", "bench_cli", self.typer_ms
        )
        version = self.command("nhidel --version", "bench_cli", ms("nhidel --version"))
        self.goal(
            "`nhidel --version` within 2x bare python start", 6, version.x_python, 2.0, "x python"
        )
        self.command("grant, file keystore", "bench_cli", ms("grant (file keystore)"))
        kdf_row = self.command(
            "scrypt KDF alone (in-process)", "bench_cli", kdf, note="deliberate: n=2^17, r=8, p=1"
        )
        kdf_row.x_python = kdf_row.x_typer = None  # not a command
        derived = cli.get("derived_ms", {})
        grant_file = self.command(
            "grant, file keystore, minus KDF",
            "bench_cli",
            derived.get("grant (file keystore) - KDF"),
        )
        self.goal(
            "`grant` (file keystore, fsynced audit append) minus the KDF within 1.8x the "
            "Typer floor",
            6,
            grant_file.x_typer,
            1.8,
            "x typer",
        )
        grant_ss = self.command("grant, Secret Service", "bench_cli", ms("grant (Secret Service)"))
        self.goal(
            "`grant` with the real Secret Service within 2.5x the Typer floor",
            6,
            grant_ss.x_typer,
            2.5,
            "x typer",
        )
        verify_ss = self.command(
            "verify, Secret Service", "bench_cli", ms("verify (Secret Service)")
        )
        self.goal(
            "`verify` on the command line (keys pinned in the Secret Service) within 2x "
            "the Typer floor",
            6,
            verify_ss.x_typer,
            2.0,
            "x typer",
        )
        self.command("verify, file keystore", "bench_cli", ms("verify (file keystore)"))
        verify_file = self.command(
            "verify, file keystore, minus KDF",
            "bench_cli",
            derived.get("verify (file keystore) - KDF"),
        )
        self.goal(
            "`verify` on the command line (file keystore) minus the KDF within 2x the Typer floor",
            6,
            verify_file.x_typer,
            2.0,
            "x typer",
        )

        listing = self.result("bench_list")
        json_row = self.command(
            "list --json, 100k ledger (10k active)", "bench_list", listing.get("json_ms")
        )
        self.goal(
            "`list --json` with 100,000 grants (10,000 active) within 2x the Typer floor",
            6,
            json_row.x_typer,
            2.0,
            "x typer",
        )
        screen = self.command(
            "list (table), first screen, 100k ledger",
            "bench_list",
            listing.get("first_screen_ms"),
        )
        for row, paired in ((json_row, "json_x_typer"), (screen, "first_screen_x_typer")):
            if paired in listing:
                row.note = f"{listing[paired]:.2f}x the Typer floor bench_list timed with it"
        self.goal(
            "`list` table: first screen within 2x the Typer floor",
            6,
            screen.x_typer,
            2.0,
            "x typer",
        )

        completion = self.result("bench_completion")
        for name, label in (
            ("nhidel revoke <TAB>", "revoke <TAB>, 10k active grants"),
            (
                "nhidel revoke g<TAB>, with expired history",
                "revoke g<TAB>, 10k active + 90k expired",
            ),
        ):
            figures = dig(completion, "rows", name) or {}
            row = self.command(label, "bench_completion", figures.get("median_ms"))
            paired = figures.get("x_python")
            if paired is not None:
                # The goal is judged against the `python -c pass` timed in the same hyperfine
                # call: completion runs a minute after bench_cli's baselines, on a shared machine.
                row.note = (
                    f"{paired:.2f}x its paired `python -c pass` ({figures['python_ms']:.1f} ms)"
                )
            self.goal(
                f"`{label}` within 2.5x bare python start (paired baseline)",
                4,
                paired,
                2.5,
                "x python",
            )
            if name == "nhidel revoke <TAB>":
                self.goal(
                    f"`{label}` within 2x a clean venv's `python -c pass` (paired baseline)",
                    14,
                    paired,
                    2.0,
                    "x python",
                )

    def throughput_rows(self) -> None:
        verify = self.result("bench_verify")
        raw = verify.get("raw_ed25519_per_s")
        self.rate(
            "raw Ed25519 verify, cryptography (baseline)", "bench_verify", raw, raw, "raw Ed25519"
        )
        fresh = self.rate(
            "library verify, fresh tokens (group commit)",
            "bench_verify",
            verify.get("library_fresh_per_s"),
            raw,
            "raw Ed25519",
        )
        self.goal(
            "library verify of fresh tokens at least 80 % of raw Ed25519",
            6,
            fresh.percent,
            80.0,
            "% of raw",
            at_most=False,
        )
        self.goal(
            "library verify of fresh tokens (decisions group-committed) at least 100 % of raw "
            "Ed25519 (cryptography)",
            14,
            fresh.percent,
            100.0,
            "% of raw",
            at_most=False,
        )
        self.rate(
            "raw Ed25519 verify, libsodium (PyNaCl, as nhidel calls it)",
            "bench_verify",
            verify.get("raw_sodium_per_s"),
            raw,
            "raw Ed25519",
        )
        remote_fresh = self.rate(
            "RemoteVerifier, fresh tokens",
            "bench_verify",
            verify.get("remote_fresh_per_s"),
            raw,
            "raw Ed25519",
        )
        self.goal(
            "RemoteVerifier of fresh tokens at least 130 % of raw Ed25519 (cryptography)",
            14,
            remote_fresh.percent,
            130.0,
            "% of raw",
            at_most=False,
        )
        remote_repeated = self.rate(
            "RemoteVerifier, repeated token",
            "bench_verify",
            verify.get("remote_repeated_per_s"),
            raw,
            "raw Ed25519",
        )
        self.goal(
            "RemoteVerifier of a repeated token at least 200,000 checks/s",
            14,
            remote_repeated.value,
            200_000,
            "/s",
            at_most=False,
        )
        repeated = self.rate(
            "library verify, repeated token",
            "bench_verify",
            verify.get("library_repeated_per_s"),
            raw,
            "raw Ed25519",
        )
        self.goal(
            "library verify of a repeated token at least 200,000 checks/s",
            6,
            repeated.value,
            200_000,
            "/s",
            at_most=False,
        )
        batch_fresh = verify.get("batch_fresh_per_s")
        batch = self.rate(
            "verify --batch, fresh tokens",
            "bench_verify",
            batch_fresh,
            fresh.value,
            "library fresh",
        )
        impossible = batch_fresh is not None and raw is not None and batch_fresh > raw
        if impossible:
            # Each fresh token needs one signature check: faster than raw Ed25519 cannot be.
            batch.note = "faster than raw Ed25519 verify: not a valid measurement"
        self.goal(
            "`verify --batch` (fresh tokens) at least 80 % of library throughput",
            6,
            None if impossible else batch.percent,
            80.0,
            "% of library",
            at_most=False,
        )
        batch = self.rate(
            "verify --batch, repeated token",
            "bench_verify",
            verify.get("batch_repeated_per_s"),
            repeated.value,
            "library repeated",
        )
        self.goal(
            "`verify --batch` (repeated token) at least 80 % of library throughput",
            6,
            batch.percent,
            80.0,
            "% of library",
            at_most=False,
        )

    def latency_rows(self) -> None:
        latency = self.result("bench_latency")
        section = "per-check latency, Verifier.check (µs)"
        for kind, label in (("fresh", "fresh tokens"), ("repeated", "a repeated token")):
            for audit in ("off", "on"):
                figures = latency.get(f"{kind}_audit_{audit}") or {}
                for name in ("p50", "p999", "max"):
                    self.other(
                        section,
                        f"{label}, audit {audit}: {name.replace('p999', 'p99.9')}",
                        "bench_latency",
                        figures.get(f"{name}_us"),
                        "µs",
                    )
            self.goal(
                f"per-check latency with the group commit running ({label}): p99.9 at most 2x "
                "the audit-off figure",
                14,
                latency.get(f"{kind}_p999_on_vs_off"),
                2.0,
                "x",
            )
            on_max = dig(latency, f"{kind}_audit_on", "max_us")
            self.goal(
                f"per-check latency with the group commit running ({label}): max under 5 ms",
                14,
                on_max / 1000 if on_max is not None else None,
                5,
                "ms",
            )
        for threads in (1, 2):
            self.other(
                section,
                f"a repeated token, audit on, {threads} thread{'s' if threads > 1 else ''} (/s)",
                "bench_latency",
                latency.get(f"threads_{threads}_per_s"),
                "/s",
            )

    def audit_rows(self) -> None:
        audit = self.result("bench_audit")
        section = "audit log"
        self.other(
            section,
            "append with fsync, 1 writer",
            "bench_audit",
            audit.get("appends_per_s_1_writer_fsync"),
            "/s",
        )
        self.other(
            section,
            "append with fsync, 8 writers (total)",
            "bench_audit",
            audit.get("appends_per_s_8_writers_fsync"),
            "/s",
        )
        records = audit.get("records")
        label = f"{records:,} records" if records else "the large log"
        rate = self.other(
            section,
            f"audit verify in-process, {label}",
            "bench_audit",
            audit.get("verify_records_per_s"),
            "/s",
        )
        self.goal(
            "`audit verify` at least 150,000 records/s", 3, rate.value, 150_000, "/s", at_most=False
        )
        cli_run = dig(audit, "cli_verify", str(records), "cli_verify_keyring")
        self.other(
            section,
            f"`nhidel audit verify` command, {label}, Secret Service (wall)",
            "bench_audit",
            cli_run["wall_s"] if cli_run else None,
            "s",
        )
        lag = self.other(
            section, "tail -f lag", "bench_audit", audit.get("tail_f_lag_ms_median"), "ms"
        )
        self.goal("`audit tail -f` lag within 250 ms", 3, lag.value, 250, "ms")

    def memory_rows(self) -> None:
        section = "peak RSS (MiB)"
        cli = self.result("bench_cli")
        for name, label in (
            ("python -c pass", "python -c pass (baseline)"),
            ("python -c 'import typer'", "python -c 'import typer'"),
            ("grant (file keystore)", "grant, file keystore (scrypt: 128 MiB)"),
            ("grant (Secret Service)", "grant, Secret Service"),
        ):
            self.other(section, label, "bench_cli", dig(cli, "rss", name, "rss_mib"), "MiB")
        listing = self.result("bench_list")
        grants = dig(listing, "ledger", "grants") or 100_000
        active = dig(listing, "ledger", "small_ledger_grants") or 10_000
        self.other(
            section,
            f"list --json, {active:,}-grant ledger (all active)",
            "bench_list",
            listing.get("json_rss_mib_small"),
            "MiB",
        )
        self.other(
            section,
            f"list --json, {grants:,}-grant ledger ({active:,} active)",
            "bench_list",
            listing.get("json_rss_mib"),
            "MiB",
        )
        self.goal(
            f"`list --json` memory does not grow with the ledger: {grants:,} grants within "
            f"1.25x of {active:,}",
            6,
            listing.get("rss_ratio"),
            1.25,
            "x",
        )
        audit = self.result("bench_audit")
        logs = audit.get("cli_verify", {})
        sizes = sorted(int(records) for records in logs)
        for records in sizes:
            facts = logs[str(records)]
            for key, keystore in (
                ("cli_verify_keyring", "Secret Service"),
                ("cli_verify", "file keystore"),
            ):
                if key in facts:
                    self.other(
                        section,
                        f"audit verify, {records:,} records, {keystore}",
                        "bench_audit",
                        facts[key]["rss_mib"],
                        "MiB",
                    )
        if len(sizes) >= 2:
            small, large = (
                dig(logs, str(n), "cli_verify_keyring", "rss_mib") for n in (sizes[0], sizes[-1])
            )
            self.goal(
                f"`audit verify` memory does not grow with the log: {sizes[-1]:,} records "
                f"within 1.25x of {sizes[0]:,}",
                6,
                large / small if small and large else None,
                1.25,
                "x",
            )


def render(table: Table) -> str:
    lines = [
        "| row | median | x python | x typer | % of base | source |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    section = None
    for row in table.rows:
        if row.section != section:
            section = row.section
            lines.append(f"| **{section}** | | | | | |")
        lines.append(
            f"| {row.name} | {figure(row.value, row.unit)} | {times(row.x_python)} | "
            f"{times(row.x_typer)} | "
            f"{f'{row.percent:.0f} % of {row.percent_of}' if row.percent is not None else ''} | "
            f"{row.source}{f': {row.note}' if row.note else ''} |"
        )
    return "\n".join(lines)


def figure(value: float | None, unit: str) -> str:
    if value is None:
        return "not available"
    if unit == "/s":
        return f"{value:,.0f} /s"
    return f"{value:,.1f} {unit}"


def times(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"


def render_goals(goals: list[Goal]) -> str:
    lines = []
    for goal in goals:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[goal.met]
        if goal.value is None:
            figures = ""
        elif goal.unit.startswith("%"):
            figures = (
                f": {goal.value:.0f} {goal.unit} (goal {'≤' if goal.at_most else '≥'} "
                f"{goal.limit:.0f})"
            )
        elif goal.unit == "/s":
            figures = f": {goal.value:,.0f}/s (goal ≥ {goal.limit:,.0f}/s)"
        elif goal.unit == "ms":
            figures = f": {goal.value:.0f} ms (goal ≤ {goal.limit:.0f} ms)"
        else:
            figures = f": {goal.value:.2f}{goal.unit} (goal ≤ {goal.limit}{goal.unit})"
        lines.append(f"- {verdict} (issue {goal.issue}): {goal.text}{figures}")
    return "\n".join(lines)


def baselines_again(runs: int) -> dict[str, list[float]]:
    """`python -c pass` and `import typer` timed again at the end: seconds per run."""
    found = find_hyperfine()
    if found is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="nhidel-bench-") as tmp:
        results = hyperfine(
            found[0],
            [(PYTHON_ROW, [clean_python(), "-c", "pass"]), (TYPER, [PYTHON, "-c", "import typer"])],
            isolated_env(Path(tmp)),
            runs,
            2,
            Path(tmp),
        )
    return {name: result["times"] for name, result in results.items()}


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    hyperfine_found = find_hyperfine()
    found["hyperfine"] = hyperfine_found[1] if hyperfine_found else "not installed"
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer runs and a 100,000-record audit log: checks the runner, not for figures",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="OUT",
        default=DEFAULT_JSON,
        help=f"where to write the results (default {DEFAULT_JSON})",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    started = time.perf_counter()
    load_before = os.getloadavg()

    suites = {name: run_suite(name, plan[mode]) for name, plan in SUITES.items()}
    end_baselines = baselines_again(5 if args.quick else 20)
    table = Table(suites, end_baselines)
    table.build()
    wall = time.perf_counter() - started
    load_after = os.getloadavg()

    print(render(table))
    print()
    print(render_goals(table.goals))
    print()
    for suite in suites.values():
        line = f"{suite.name}: {suite.status}, {suite.seconds:.0f} s"
        print(line + (f" ({suite.reason})" if suite.reason else ""))
    for name, pooled in table.pooled_ms.items():
        print(
            f"{name}: {table.start_ms.get(name, 0):.1f} ms at the start, "
            f"{table.end_ms.get(name, 0):.1f} ms at the end, {pooled:.1f} ms pooled (the base)"
        )
    print(
        f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, on "
        f"{os.cpu_count()} CPUs; {mode} run, {wall:.0f} s in all"
        f"{'' if wall <= BUDGET_S else f' (over the {BUDGET_S} s budget)'}"
    )

    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "wall_s": wall,
        "revision": source_revision(),
        "python": PYTHON,
        "versions": versions(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "baselines_ms": {
            "start": table.start_ms,
            "end": table.end_ms,
            "pooled": table.pooled_ms,
            "end_times_s": end_baselines,
        },
        "rows": [asdict(row) for row in table.rows],
        "goals": [{**asdict(goal), "met": goal.met} for goal in table.goals],
        "suites": {name: asdict(suite) for name, suite in suites.items()},
    }
    args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 1 if any(suite.status == "failed" for suite in suites.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
