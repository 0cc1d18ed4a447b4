"""Audit log benchmarks: appends per second, `audit verify` throughput, `tail -f` lag.

    python3 benchmarks/bench_audit.py [--records 1000000] [--json OUT]

Figures are medians where repeated; the machine is shared and noisy. Large fixtures are built
by a bulk writer that goes through the same sealing code as nhidel (records.seal_line).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from nhidel.audit.checker import check_log
from nhidel.audit.reader import follow
from nhidel.audit.records import FORMAT_VERSION, GENESIS, canonical, event, line_hash, seal_line
from nhidel.audit.writer import AuditKeys, AuditLog
from nhidel.config import Paths

KEY = os.urandom(32)


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


def bulk_log(home: str, count: int) -> dict[str, object]:
    """A log of `count` sealed decisions, written in one pass (no fsync per record)."""
    prev = GENESIS
    with open(paths_in(home).audit_file, "wb") as handle:
        for seq in range(1, count + 1):
            record = {**decision(seq), "time": "2026-11-23T20:51:55.123456Z",
                      "v": FORMAT_VERSION, "seq": seq, "prev": prev, "nhidel": "0.1.0"}  # fmt: skip
            line = seal_line(canonical(record), KEY)
            prev = line_hash(line)
            handle.write(line + b"\n")
    return {"seq": count, "hash": prev}


def verify_throughput(count: int, runs: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as home:
        mark = bulk_log(home, count)
        size = paths_in(home).audit_file.stat().st_size
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            report = check_log(paths_in(home), KEY, mark, None)
            rates.append(count / (time.perf_counter() - start))
            assert report.ok and report.records == count, report.problem
        return statistics.median(rates), size / 1e6


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, float] = {}
    results["appends_per_s_1_writer_fsync"] = appends_one_writer(500)
    results["appends_per_s_8_writers_fsync"] = appends_many_writers(8, 250)
    rate, megabytes = verify_throughput(args.records, args.runs)
    results["verify_records_per_s"] = rate
    results["verify_log_mb"] = megabytes
    results["tail_f_lag_ms_median"] = tail_lag(20)
    for name, value in results.items():
        print(f"{name:34} {value:12,.1f}")
    if args.json:
        args.json.write_text(json.dumps({**results, "records": args.records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
