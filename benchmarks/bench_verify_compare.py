"""Library verify only, for comparing two trees: raw Ed25519, fresh tokens, a repeated token.

    python3 benchmarks/bench_verify_compare.py [--tree DIR] [--rounds 5] [--json OUT]

Per CPU second, the median of `--rounds` (the machine is shared and noisy), with the fixture and
the timing loops of bench_verify.py. `--tree DIR` times another checkout of nhidel instead of
the installed one (its nhidel and its benchmarks/bench_verify.py; an editable install of this
one is set aside for the run), so two versions are compared on the same machine by running
this script twice, alternately: e.g. `git worktree add /tmp/base 1be255e`, then `--tree
/tmp/base` and no `--tree`, a few times each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any


def load_tree(tree: Path | None) -> object:
    """bench_verify of `tree` (or of this checkout), importing that tree's nhidel."""
    if tree is not None:
        # An editable install puts a finder ahead of sys.path; set it aside for this run.
        sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, str(tree))
    sys.path.insert(0, str((tree or Path(__file__).resolve().parent.parent) / "benchmarks"))
    import bench_verify

    import nhidel

    where = Path(nhidel.__file__).resolve().parent.parent
    if tree is not None and where != tree.resolve():
        raise SystemExit(f"imported nhidel from {where}, not {tree}")
    return bench_verify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tree", type=Path, help="another checkout of nhidel to time")
    args = parser.parse_args()
    bench_verify: Any = load_tree(args.tree)
    with tempfile.TemporaryDirectory() as tmp:
        fixture = bench_verify.Fixture(Path(tmp) / "home", args.tokens)
        runs = {
            "raw_ed25519_per_s": lambda: bench_verify.raw_ed25519(fixture),
            "library_fresh_per_s": lambda: bench_verify.library_fresh(fixture),
            "library_repeated_per_s": lambda: bench_verify.library_repeated(fixture, args.repeats),
        }
        results = {name: statistics.median(run() for _ in range(args.rounds))
                   for name, run in runs.items()}  # fmt: skip
    results["fresh_vs_raw"] = results["library_fresh_per_s"] / results["raw_ed25519_per_s"]
    for name, value in results.items():
        print(f"{name:28} {value:>12,.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
