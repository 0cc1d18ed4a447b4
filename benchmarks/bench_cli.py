#!/usr/bin/env python3
"""Start-up and per-command wall time of the nhidel CLI, measured with hyperfine, and the peak
memory of `nhidel grant`.

Run on demand, never as a test:

    python3 benchmarks/bench_cli.py [--runs N] [--warmup W] [--json OUT]

Every row is a separate process started by hyperfine with -N (no intermediate shell), after a few
warm-up runs; the figures are medians because the machine is shared and noisy. The encrypted-file
keystore and the real Secret Service (gnome-keyring under a private D-Bus session, started with
tests/helpers/keyring_service.py) each get their own throw-away NHIDEL_HOME prepared with
`nhidel init` and `nhidel agent add bot --allow a:b --max-ttl 1h`. Nothing outside the temp dirs
is touched.

Needs hyperfine (Debian/Ubuntu: apt-get install hyperfine; elsewhere: cargo install hyperfine),
and for the Secret Service rows dbus-daemon and gnome-keyring-daemon
(apt-get install dbus gnome-keyring).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
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
    run_nhidel,
    secret_service,
    source_revision,
    summarise,
)

PASSPHRASE = "benchmark passphrase"  # noqa: S105 - a throw-away keystore in a temp dir
KDF_RUNS = 6
RSS_RUNS = 3
PYTHON_ROW = "python -c pass"
TYPER_ROW = "python -c 'import typer'"


def prepare_home(nhidel: list[str], env: dict[str, str]) -> str:
    """`nhidel init`, register the agent, and return one token for the verify rows."""
    run_nhidel(nhidel, env, "init")
    run_nhidel(nhidel, env, "agent", "add", "bot", "--allow", "a:b", "--max-ttl", "1h")
    # The longest TTL the agent allows, so the token outlives the benchmark.
    return run_nhidel(nhidel, env, "grant", "bot", "--scope", "a:b", "--ttl", "1h")


def time_kdf(home: Path, passphrase: bytes, runs: int) -> list[float]:
    """Seconds per scrypt derivation, in this process, with the keystore's own parameters."""
    from nhidel.keys import keystore

    kdf = json.loads((home / "keystore.json").read_text())["kdf"]
    keystore._derive(passphrase, kdf)  # warm-up: imports and first allocation
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        keystore._derive(passphrase, kdf)
        times.append(time.perf_counter() - start)
    return times


def median_rss(argv: list[str], env: dict[str, str], runs: int = RSS_RUNS) -> dict[str, Any]:
    """Peak RSS of `argv`, the median of `runs` runs (it varies by a few hundred KiB)."""
    samples = [peak_rss(argv, env)["rss_kib"] for _ in range(runs)]
    kib = statistics.median(samples)
    return {"rss_kib": kib, "rss_mib": kib / 1024, "samples_kib": samples}


def goal(text: str, value: float, limit: float, unit: str) -> dict[str, Any]:
    """One goal of issue 6: `value` (a ratio) must not exceed `limit`."""
    return {"goal": text, "value": value, "limit": limit, "unit": unit, "met": value <= limit}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Time every row, print the table and the goals; return everything as a dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command (default 20)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="warm-up runs per command (default 3)"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    if args.runs < 2 or args.warmup < 0:
        parser.error("--runs must be at least 2 and --warmup at least 0")

    found = find_hyperfine()
    if found is None:
        sys.exit(HYPERFINE_HINT)
    exe, version = found
    nhidel, how = nhidel_command()
    print(f"python: {PYTHON}\nnhidel: {how}\n{version}; {os.cpu_count()} CPUs", file=sys.stderr)
    load_before = os.getloadavg()

    rows: dict[str, dict[str, Any]] = {}
    rss: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="nhidel-bench-") as tmp:
        root = Path(tmp)
        work = root / "hyperfine"
        work.mkdir()
        bench = {"exe": exe, "runs": args.runs, "warmup": args.warmup, "workdir": work}

        base_env = isolated_env(root / "base")
        baselines = [
            (PYTHON_ROW, [clean_python(), "-c", "pass"]),
            (TYPER_ROW, [PYTHON, "-c", "import typer"]),
        ]
        rows.update(
            hyperfine(
                commands=[*baselines, ("nhidel --version", [*nhidel, "--version"])],
                env=base_env,
                **bench,
            )
        )
        for name, command in baselines:
            rss[name] = median_rss(command, base_env)

        print("file keystore: preparing a home", file=sys.stderr)
        passphrase_file = root / "passphrase"
        passphrase_file.write_text(PASSPHRASE + "\n")
        passphrase_file.chmod(0o600)
        file_env = isolated_env(
            root / "file",
            NHIDEL_KEYSTORE="file",
            NHIDEL_PASSPHRASE_FILE=str(passphrase_file),
        )
        token = prepare_home(nhidel, file_env)
        file_home = Path(file_env["NHIDEL_HOME"])
        grant = [*nhidel, "grant", "bot", "--scope", "a:b"]
        # Half the KDF runs before the file rows and half after, so a change in the machine's
        # load during the rows shifts both sides of "grant minus KDF" alike.
        kdf_times = time_kdf(file_home, PASSPHRASE.encode(), KDF_RUNS // 2)
        rows.update(hyperfine(commands=[("grant (file keystore)", grant)], env=file_env, **bench))
        rows.update(
            hyperfine(
                commands=[("verify (file keystore)", [*nhidel, "verify", "--scope", "a:b"])],
                env={**file_env, "NHIDEL_TOKEN": token},
                **bench,
            )
        )
        kdf_times += time_kdf(file_home, PASSPHRASE.encode(), KDF_RUNS - KDF_RUNS // 2)
        rss["grant (file keystore)"] = median_rss(grant, file_env)

        print("Secret Service: starting a private D-Bus session and gnome-keyring", file=sys.stderr)
        with secret_service() as service_env:
            if service_env is None:
                notes["keyring"] = "Secret Service rows not measured: the daemon could not start"
            else:
                # The daemons' env (its bus, HOME and XDG dirs) plus a home of its own.
                keyring_env = {
                    **service_env,
                    "NHIDEL_HOME": str(root / "keyring" / "home"),
                    "NO_COLOR": "1",
                }
                keyring_env.pop("NHIDEL_KEYSTORE", None)
                keyring_env.pop("NHIDEL_TOKEN", None)
                token = prepare_home(nhidel, keyring_env)
                rows.update(
                    hyperfine(
                        commands=[("grant (Secret Service)", grant)], env=keyring_env, **bench
                    )
                )
                rows.update(
                    hyperfine(
                        commands=[
                            ("verify (Secret Service)", [*nhidel, "verify", "--scope", "a:b"])
                        ],
                        env={**keyring_env, "NHIDEL_TOKEN": token},
                        **bench,
                    )
                )
                rss["grant (Secret Service)"] = median_rss(grant, keyring_env)

    summary = {name: summarise(result) for name, result in rows.items()}
    python_ms = summary[PYTHON_ROW]["median_ms"]
    typer_ms = summary[TYPER_ROW]["median_ms"]
    kdf_ms = statistics.median(kdf_times) * 1000

    print(file=sys.stderr)
    header = f"{'command':<28}{'median':>9}{'min':>9}{'max':>9}{'x python':>10}{'x typer':>9}"
    print(header)
    print("-" * len(header))
    for name, row in summary.items():
        row["x_python"] = row["median_ms"] / python_ms
        row["x_typer"] = row["median_ms"] / typer_ms
        print(
            f"{name:<28}{row['median_ms']:>9.1f}{row['min_ms']:>9.1f}{row['max_ms']:>9.1f}"
            f"{row['x_python']:>10.2f}{row['x_typer']:>9.2f}"
        )
    print(
        f"{'scrypt KDF (in-process)':<28}{kdf_ms:>9.1f}{min(kdf_times) * 1000:>9.1f}"
        f"{max(kdf_times) * 1000:>9.1f}"
    )
    derived = {
        f"{name} - KDF": summary[name]["median_ms"] - kdf_ms
        for name in ("grant (file keystore)", "verify (file keystore)")
    }
    for name, value in derived.items():
        print(f"{name:<28}{value:>9.1f}{'':>18}{value / python_ms:>10.2f}{value / typer_ms:>9.2f}")
    print("(milliseconds, medians; x python = / `python -c pass`, x typer = / `import typer`)")
    print()
    print(f"peak RSS, median of {RSS_RUNS} runs:")
    for name, row in rss.items():
        print(f"  {name:<28}{row['rss_mib']:>8.1f} MiB")
    load_after = os.getloadavg()
    print(
        f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, "
        f"on {os.cpu_count()} CPUs; nhidel ran as {how}"
    )

    goals = [
        goal("nhidel --version within 2x bare python start",
             summary["nhidel --version"]["x_python"], 2.0, "x python"),
        goal("grant (file keystore) minus KDF within 1.8x the Typer floor",
             derived["grant (file keystore) - KDF"] / typer_ms, 1.8, "x typer"),
    ]  # fmt: skip
    if "grant (Secret Service)" in summary:
        goals += [
            goal("grant (Secret Service) within 2.5x the Typer floor",
                 summary["grant (Secret Service)"]["x_typer"], 2.5, "x typer"),
            goal("verify (Secret Service) within 2x the Typer floor",
                 summary["verify (Secret Service)"]["x_typer"], 2.0, "x typer"),
        ]  # fmt: skip
    goals.append(
        goal("verify (file keystore) minus KDF within 2x the Typer floor",
             derived["verify (file keystore) - KDF"] / typer_ms, 2.0, "x typer"),
    )  # fmt: skip
    print()
    for item in goals:
        print(f"{'met    ' if item['met'] else 'NOT met'}  {item['goal']}: "
              f"{item['value']:.2f} {item['unit']} (limit {item['limit']})")  # fmt: skip
    for note in notes.values():
        print(note)

    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": PYTHON,
        "python_version": sys.version.split()[0],
        "nhidel": how,
        "revision": source_revision(),
        "hyperfine": version,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "runs": args.runs,
        "warmup": args.warmup,
        "results": summary,
        "kdf": {
            "median_ms": kdf_ms,
            "times_s": kdf_times,
            "note": "nhidel.keys.keystore._derive in-process, the keystore's own scrypt parameters",
        },
        "derived_ms": derived,
        "rss": rss,
        "goals": goals,
        "notes": notes,
    }
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return document


if __name__ == "__main__":
    main()
