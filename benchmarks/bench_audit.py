#!/usr/bin/env python3
"""Audit log benchmarks: appends per second, `audit verify` throughput and peak memory,
`tail -f` lag.

Run on demand, never as a test:

    python3 benchmarks/bench_audit.py [--records 1000000] [--small 100000] [--runs 3]
                                      [--cache DIR | --no-cache] [--json OUT]

Figures are medians where repeated; the machine is shared and noisy. The large logs live in real
nhidel homes (file keystore, `nhidel init`), filled by nhidel's own writer (`AuditLog.append`,
batches of 10,000 without an fsync each, rotating segments as nhidel does) and ending in a
high-water mark in the keystore, so `nhidel audit verify` on the command line checks them exactly
as it checks a user's log. Building 1,000,000 records takes about 18 s, so each home is kept in
--cache (default /tmp/nhidel-bench-cache), named by nhidel's version, the log format and the
record count; a cached home that no longer verifies is built again.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from measure import PYTHON, isolated_env, nhidel_command, peak_rss, run_nhidel, secret_service

from nhidel import __version__
from nhidel.audit.reader import follow
from nhidel.audit.records import FORMAT_VERSION, event, line_hash
from nhidel.audit.segments import all_segments
from nhidel.audit.writer import MARK, AuditKeys, AuditLog
from nhidel.integrity.checker import check_log
from nhidel.keys.keystore import open_keystore
from nhidel.keys.principal import load_trust
from nhidel.paths import Paths

KEY = os.urandom(32)
PASSPHRASE = "benchmark passphrase"  # noqa: S105 - a throw-away keystore
BATCH = 10_000
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "nhidel-bench-cache"

# Run in a child that reaches the Secret Service: store the entries given on stdin.
_STORE_ENTRIES = """
import json, sys
from nhidel.paths import Paths
from nhidel.keys.keystore import open_keystore
store = open_keystore(Paths.from_env())
for name, value in json.load(sys.stdin).items():
    store.write(name, value)
"""


def paths_in(directory: str) -> Paths:
    return Paths(Path(directory), Path(directory))


def decision(seq: int) -> dict[str, object]:
    return event("verify.allowed", agent="release-bot", grant="g" + "a" * 26,
                 requested=["release:publish"], outcome="allowed", expires_at=1795466394,
                 token_fp="0" * 32, aud=None)  # fmt: skip


def appends_one_writer(count: int) -> float:
    with tempfile.TemporaryDirectory() as home:
        log = AuditLog(paths_in(home), AuditKeys(KEY, None))
        start = time.perf_counter()
        for seq in range(count):
            log.append([decision(seq)], durable=True)
        return count / (time.perf_counter() - start)


def _writer(home: str, count: int) -> None:
    log = AuditLog(paths_in(home), AuditKeys(KEY, None))
    for seq in range(count):
        log.append([decision(seq)], durable=True)


def appends_many_writers(writers: int, each: int) -> float:
    with tempfile.TemporaryDirectory() as home:
        context = multiprocessing.get_context("fork")
        processes = [context.Process(target=_writer, args=(home, each)) for _ in range(writers)]
        start = time.perf_counter()
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        elapsed = time.perf_counter() - start
        lines = paths_in(home).audit_file.read_bytes().count(b"\n")
        assert lines == writers * each, f"lost records: {lines}"
        return lines / elapsed


class AuditHome:
    """A real nhidel home (file keystore) whose audit log holds `records` sealed records."""

    def __init__(self, root: Path, records: int) -> None:
        self.root = root
        self.records = records
        self.env = isolated_env(root, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE=PASSPHRASE)
        self.paths = Paths.from_env(self.env)

    @property
    def ready(self) -> bool:
        return (self.root / "ready").exists()

    def build(self) -> float:
        """`nhidel init`, then fill the log and move the mark to its head; the seconds it took."""
        start = time.perf_counter()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(mode=0o700, parents=True)
        self.env = isolated_env(self.root, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE=PASSPHRASE)
        nhidel, _ = nhidel_command()
        run_nhidel(nhidel, self.env, "init")
        keystore = open_keystore(self.paths, env=self.env)
        log = AuditLog(self.paths, AuditKeys(load_trust(keystore).audit_key, None))
        stamp = {"time": "2026-11-23T20:51:55.123456Z"}
        # Sequence numbers count every record, the `log.rotated` ones that open each segment too.
        seq = sum(path.read_bytes().count(b"\n") for path in all_segments(self.paths))
        while seq < self.records:
            batch = [{**decision(0), **stamp} for _ in range(min(BATCH, self.records - seq))]
            seq = log.append(batch, durable=False)[-1]["seq"]
        last = self.paths.audit_file.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        keystore.write(MARK, {"seq": json.loads(last)["seq"], "hash": line_hash(last)})
        (self.root / "ready").touch()
        return time.perf_counter() - start

    def size_mb(self) -> float:
        return sum(path.stat().st_size for path in all_segments(self.paths)) / 1e6

    def cli_verify(self, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Peak RSS and wall time of `nhidel audit verify -q` (with the file keystore's KDF,
        unless `env` reaches another keystore)."""
        nhidel, _ = nhidel_command()
        return peak_rss([*nhidel, "audit", "verify", "-q"], env or self.env, check=False)

    def keyring_env(self, service_env: dict[str, str]) -> dict[str, str]:
        """The env of `service_env` for this home, with the file keystore's entries (keys and
        high-water mark) copied into that Secret Service, so no KDF runs."""
        store = open_keystore(self.paths, env=self.env)
        # (The file keystore is one sealed whole now: its entry names are not in the clear.)
        names = ("signing", "trust", "audit-mark")
        entries = {name: store.read(name) for name in names}
        env = {**service_env, "NHIDEL_HOME": self.env["NHIDEL_HOME"], "NO_COLOR": "1"}
        subprocess.run(
            [PYTHON, "-c", _STORE_ENTRIES], input=json.dumps(entries).encode(), env=env,
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        return env

    def verify_rate(self, runs: int) -> float:
        """Records a second checked by `check_log` in-process, median of `runs` (no KDF)."""
        keystore = open_keystore(self.paths, env=self.env)
        key, mark = load_trust(keystore).audit_key, keystore.read(MARK)
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            report = check_log(self.paths, key, mark, None)
            rates.append(report.records / (time.perf_counter() - start))
            assert report.ok and report.records >= self.records, report.problem
        return statistics.median(rates)


def checked_home(root: Path, records: int) -> tuple[AuditHome, dict[str, Any]]:
    """A home that `nhidel audit verify` passes, built unless the cached one still does, and
    the figures of that verify (so a cached home costs one verify, not two)."""
    home = AuditHome(root, records)
    facts: dict[str, Any] = {"records": records, "path": str(root), "cached": home.ready}
    if home.ready:
        run = home.cli_verify()
        if run["exit"] == 0:
            return home, {**facts, "cli_verify": run}
        print(f"  cached log in {root} no longer verifies: building it again", file=sys.stderr)
        facts["cached"] = False
    print(f"  building a log of {records:,} records in {root}", file=sys.stderr, flush=True)
    facts["build_s"] = home.build()
    run = home.cli_verify()
    if run["exit"] != 0:
        sys.exit(f"audit verify failed on a fresh log (exit {run['exit']}):\n{run['stderr']}")
    return home, {**facts, "cli_verify": run}


def tail_lag(samples: int) -> float:
    """Median milliseconds between an append returning and `follow` yielding the record."""
    with tempfile.TemporaryDirectory() as home:
        paths = paths_in(home)
        log = AuditLog(paths, AuditKeys(KEY, None))
        log.append([decision(0)])
        seen: dict[int, float] = {}
        done = threading.Event()

        def reader() -> None:
            for record in follow(paths, start_after=1, stop=done.is_set):
                seen[record["seq"]] = time.perf_counter()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        sent: dict[int, float] = {}
        for _ in range(samples):
            time.sleep(0.05)
            (written,) = log.append([decision(0)])
            sent[written["seq"]] = time.perf_counter()
        deadline = time.time() + 2
        while len(seen) < samples and time.time() < deadline:
            time.sleep(0.01)
        done.set()
        lags = [(seen[seq] - at) * 1000 for seq, at in sent.items() if seq in seen]
        assert len(lags) == samples, "tail -f missed records"
        return statistics.median(lags)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every audit benchmark, print the figures; return them as a dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000,
                        help="records in the large log (default 1000000)")  # fmt: skip
    parser.add_argument("--small", type=int, default=100_000,
                        help="records in the small log, to show memory does not grow "
                        "(default 100000; 0 skips it)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="in-process verify runs (default 3)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"where the logs are kept (default {DEFAULT_CACHE})")  # fmt: skip
    parser.add_argument("--no-cache", action="store_true",
                        help="build the logs in a temp dir and delete them afterwards")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    if args.records < 1 or args.small < 0 or args.runs < 1:
        parser.error("--records and --runs must be at least 1, --small at least 0")

    results: dict[str, Any] = {}
    results["appends_per_s_1_writer_fsync"] = appends_one_writer(500)
    results["appends_per_s_8_writers_fsync"] = appends_many_writers(8, 250)
    with tempfile.TemporaryDirectory(prefix="nhidel-bench-") as tmp:
        cache = Path(tmp) if args.no_cache else args.cache
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"audit-{__version__}-v{FORMAT_VERSION}-{{}}"
        logs = {}
        for records in sorted({args.records, args.small} - {0}):
            home, facts = checked_home(cache / name.format(records), records)
            facts["log_mb"] = home.size_mb()
            logs[records] = facts
            if records == args.records:
                results["verify_records_per_s"] = home.verify_rate(args.runs)
                results["verify_log_mb"] = facts["log_mb"]
        # The file keystore's scrypt needs 128 MiB by design, more than checking the log: the
        # log's own footprint shows only with a keystore that derives nothing.
        with secret_service() as service_env:
            for records, facts in logs.items():
                if service_env is not None:
                    home = AuditHome(cache / name.format(records), records)
                    facts["cli_verify_keyring"] = home.cli_verify(home.keyring_env(service_env))
    results["tail_f_lag_ms_median"] = tail_lag(20)
    for name, value in results.items():
        print(f"{name:34} {value:12,.1f}")
    for records, facts in logs.items():
        for key, keystore in (("cli_verify", "file keystore"), ("cli_verify_keyring", "keyring")):
            if key in facts:
                run = facts[key]
                print(f"nhidel audit verify ({keystore}), {records:,} records "
                      f"({facts['log_mb']:.0f} MB): peak RSS {run['rss_mib']:.1f} MiB, "
                      f"{run['wall_s']:.2f} s")  # fmt: skip
    document = {**results, "records": args.records, "runs": args.runs, "python": PYTHON,
                "cli_verify": {str(records): facts for records, facts in logs.items()}}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return document


if __name__ == "__main__":
    main()
