#!/usr/bin/env python3
"""`nhidel revoke <TAB>` with 10,000 live grants, and `nhidel --version`, against bare Python.

Run on demand, never as a test:

    python3 benchmarks/bench_completion.py [--runs N] [--warmup W] [--json OUT]
                                           [--grants G] [--expired E]

The ledger is built with nhidel's own Ledger class in a throw-away NHIDEL_HOME: G active grants
(default 10,000), none expiring during the run. The completion row is what the bash script runs on
TAB (`_NHIDEL_COMPLETE=bash nhidel revoke ''`). A second ledger adds E expired grants (default
90,000) to the G live ones, for `revoke g<TAB>`: the one-letter prefix every id shares, which must
not make completion walk expired history. Each row is timed by hyperfine -N, the nhidel of the
interpreter running this script (its console script, a virtual environment's included), next to
`python -c pass` in the same hyperfine run: a clean virtual environment's bare start (measure.py's
`clean_python`); the ratio is of the medians. Goals: `revoke <TAB>` within 2x (issue 14), `g<TAB>`
with expired history within 2.5x and --version within 2x (issue 4).
"""

from __future__ import annotations

import argparse
import json
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
    summarise,
)

from nhidel.ledger.store import Ledger
from nhidel.models import Grant, new_grant_id
from nhidel.paths import Paths
from nhidel.scopes import parse_scopes

HISTORY = "nhidel revoke g<TAB>, with expired history"
GOALS = {"nhidel revoke <TAB>": 2.0, HISTORY: 2.5, "nhidel --version": 2.0}


def fill_ledger(home: Path, count: int, expired: int = 0) -> None:
    now = int(time.time())
    scopes = parse_scopes(["repo:read:acme/api"])
    with Ledger(Paths(home, home)) as ledger, ledger.transaction():
        for n in range(count + expired):
            # The expired ones first, as history builds up; they expired up to a day ago.
            expires_at = now - 1 - (n % 86_400) if n < expired else now + 3600 + n
            grant = Grant(
                id=new_grant_id(), agent=f"agent-{n % 50}", scopes=scopes, aud=None,
                issued_at=now - 90_000, not_before=now - 90_000, expires_at=expires_at,
                max_uses=None, reason="benchmark", kid="k", uses=0, revoked_at=None,
                revoke_reason=None,
            )  # fmt: skip
            ledger.insert(grant, token_sha256="0" * 64)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Build the ledgers, time the rows, print the table; return the figures and goals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per command (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up runs (default 5)")
    parser.add_argument("--grants", type=int, default=10_000, help="active grants (default 10000)")
    parser.add_argument(
        "--expired", type=int, default=90_000, help="expired grants too, for g<TAB> (default 90000)"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    found = find_hyperfine()
    if found is None:
        sys.exit(HYPERFINE_HINT)
    exe = found[0]
    nhidel, how = nhidel_command()
    with tempfile.TemporaryDirectory(prefix="nhidel-bench-") as tmp:
        root = Path(tmp)
        env = isolated_env(root)
        home = Path(env["NHIDEL_HOME"])
        home.mkdir(mode=0o700)
        fill_ledger(home, args.grants)
        tab = {**env, "_NHIDEL_COMPLETE": "bash"}
        offered = subprocess.run(
            [*nhidel, "revoke", ""], env=tab, capture_output=True, text=True, check=True
        ).stdout.split()
        assert len(offered) == min(200, args.grants), f"{len(offered)} ids offered"
        history_env = isolated_env(root / "history")
        history_home = Path(history_env["NHIDEL_HOME"])
        history_home.mkdir(mode=0o700, parents=True)
        fill_ledger(history_home, args.grants, args.expired)
        history_tab = {**history_env, "_NHIDEL_COMPLETE": "bash"}
        offered = subprocess.run(
            [*nhidel, "revoke", "g"], env=history_tab, capture_output=True, text=True, check=True
        ).stdout.split()
        assert len(offered) == min(200, args.grants), f"{len(offered)} ids offered for g"
        baseline = ("python -c pass", [clean_python(), "-c", "pass"])
        version = ("nhidel --version", [*nhidel, "--version"])
        completion = ("nhidel revoke <TAB>", [*nhidel, "revoke", ""])
        runs, warmup = args.runs, args.warmup
        rows = {
            version[0]: hyperfine(exe, [baseline, version], env, runs, warmup, root),
            completion[0]: hyperfine(exe, [baseline, completion], tab, runs, warmup, root),
            HISTORY: hyperfine(
                exe,
                [baseline, (HISTORY, [*nhidel, "revoke", "g"])],
                history_tab,
                runs,
                warmup,
                root,
            ),
        }
    print(f"nhidel: {how}; python: {PYTHON}; python -c pass: {clean_python()}")
    print(f"{args.grants} active grants "
          f"(+{args.expired} expired for g<TAB>); {args.runs} runs")  # fmt: skip
    print("| command | median ms | python -c pass ms | ratio | goal |")
    print("| --- | ---: | ---: | ---: | --- |")
    figures: dict[str, Any] = {}
    for name, results in rows.items():
        median = summarise(results[name])["median_ms"]
        base = summarise(results["python -c pass"])["median_ms"]
        ratio = median / base
        met = ratio <= GOALS[name]
        figures[name] = {"median_ms": median, "python_ms": base, "x_python": ratio,
                         "limit": GOALS[name], "met": met}  # fmt: skip
        print(f"| `{name}` | {median:.1f} | {base:.1f} | {ratio:.2f}x | "
              f"{GOALS[name]}x: {'met' if met else 'NOT met'} |")  # fmt: skip
    document = {"nhidel": how, "python": PYTHON, "grants": args.grants, "expired": args.expired,
                "runs": args.runs, "warmup": args.warmup, "rows": figures}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return document


if __name__ == "__main__":
    sys.exit(0 if all(row["met"] for row in main()["rows"].values()) else 1)
