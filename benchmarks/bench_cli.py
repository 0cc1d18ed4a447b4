#!/usr/bin/env python3
"""Start-up and per-command wall time of the nhidel CLI, measured with hyperfine.

Run on demand, never as a test:

    python3 benchmarks/bench_cli.py [--runs N] [--warmup W] [--json OUT]

Every row is a separate process started by hyperfine with -N (no intermediate shell), after a few
warm-up runs; the figures are medians because the machine is shared and noisy. The encrypted-file
keystore and the real Secret Service (gnome-keyring under a private D-Bus session, started with
tests/keyring_service.py) each get their own throw-away NHIDEL_HOME prepared with `nhidel init` and
`nhidel agent add bot --allow a:b --max-ttl 1h`. Nothing outside the temp dirs is touched.

Needs hyperfine (Debian/Ubuntu: apt-get install hyperfine; elsewhere: cargo install hyperfine),
and for the Secret Service rows dbus-daemon and gnome-keyring-daemon
(apt-get install dbus gnome-keyring).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import shutil
import statistics
import subprocess  # noqa: S404 - runs hyperfine and nhidel, never a shell
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
HYPERFINE_HINT = (
    "hyperfine is required: apt-get install hyperfine (Debian/Ubuntu), brew install hyperfine "
    "(macOS), or cargo install hyperfine"
)
PASSPHRASE = "benchmark passphrase"  # noqa: S105 - a throw-away keystore in a temp dir
KDF_RUNS = 6

# The real interpreter, not a pyenv shim (a shim adds tens of ms to every start).
PYTHON = os.path.realpath(sys.executable)

# Variables that would let a child reach the user's keyring, display or nhidel home.
_DROPPED = (
    "DBUS_SESSION_BUS_ADDRESS",
    "PYTHON_KEYRING_BACKEND",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "GNOME_KEYRING_CONTROL",
    "SSH_AUTH_SOCK",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
    "PYTHONSTARTUP",
    "NHIDEL_TOKEN",
)


def nhidel_command() -> tuple[list[str], str]:
    """The console script next to the interpreter when there is one, else `python -m nhidel`."""
    for base in (Path(sys.executable).parent, Path(PYTHON).parent):
        script = base / "nhidel"
        if script.is_file() and os.access(script, os.X_OK):
            return [str(script)], f"console script {script}"
    return [PYTHON, "-m", "nhidel"], f"{PYTHON} -m nhidel"


def isolated_env(root: Path, **extra: str) -> dict[str, str]:
    """The caller's environment with HOME, the XDG dirs and NHIDEL_HOME under `root`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NHIDEL_") and k not in _DROPPED}
    for name, sub in (
        ("HOME", "user"),
        ("XDG_CONFIG_HOME", "user/config"),
        ("XDG_DATA_HOME", "user/data"),
        ("XDG_STATE_HOME", "user/state"),
        ("XDG_CACHE_HOME", "user/cache"),
    ):
        path = root / sub
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        env[name] = str(path)
    env["NHIDEL_HOME"] = str(root / "home")
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def run_nhidel(nhidel: list[str], env: dict[str, str], *args: str) -> str:
    done = subprocess.run(  # noqa: S603
        [*nhidel, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"nhidel {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr}")
    return done.stdout.strip()


def prepare_home(nhidel: list[str], env: dict[str, str]) -> str:
    """`nhidel init`, register the agent, and return one token for the verify rows."""
    run_nhidel(nhidel, env, "init")
    run_nhidel(nhidel, env, "agent", "add", "bot", "--allow", "a:b", "--max-ttl", "1h")
    # The longest TTL the agent allows, so the token outlives the benchmark.
    return run_nhidel(nhidel, env, "grant", "bot", "--scope", "a:b", "--ttl", "1h")


def hyperfine(
    exe: str,
    commands: list[tuple[str, list[str]]],
    env: dict[str, str],
    runs: int,
    warmup: int,
    workdir: Path,
) -> dict[str, dict[str, Any]]:
    """Time `commands` (name, argv) with hyperfine -N; return hyperfine's result per name."""
    out = workdir / f"hyperfine-{time.monotonic_ns()}.json"
    argv = [exe, "-N", "--warmup", str(warmup), "--runs", str(runs), "--export-json", str(out)]
    argv += ["--style", "basic"] if sys.stderr.isatty() else ["--style", "none"]
    for name, command in commands:
        argv += ["--command-name", name, shlex.join(command)]
    print(f"  timing: {', '.join(name for name, _ in commands)}", file=sys.stderr, flush=True)
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=False)  # noqa: S603
    if done.returncode != 0:
        sys.exit(f"hyperfine failed (exit {done.returncode}); a benchmarked command must exit 0")
    results = json.loads(out.read_text())["results"]
    return {result["command"]: result for result in results}


def time_kdf(home: Path, passphrase: bytes, runs: int) -> list[float]:
    """Seconds per scrypt derivation, in this process, with the keystore's own parameters."""
    sys.path.insert(0, str(REPO))
    from nhidel import keystore

    kdf = json.loads((home / "keystore.json").read_text())["kdf"]
    keystore._derive(passphrase, kdf)  # warm-up: imports and first allocation
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        keystore._derive(passphrase, kdf)
        times.append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def secret_service() -> Iterator[dict[str, str] | None]:
    """The env of a private D-Bus session with gnome-keyring, or None when it cannot start."""
    sys.path.insert(0, str(TESTS))
    try:
        from keyring_service import running_secret_service
    except ImportError as exc:
        print(f"  skipping the Secret Service rows: {exc}", file=sys.stderr)
        yield None
        return
    # keyring_service reports an unavailable daemon through pytest.skip / pytest.fail.
    manager = running_secret_service()
    try:
        service_env = manager.__enter__()
    except BaseException as exc:  # noqa: BLE001 - pytest's Skipped is a BaseException
        if isinstance(exc, KeyboardInterrupt):
            raise
        print(f"  skipping the Secret Service rows: {exc}", file=sys.stderr)
        yield None
        return
    try:
        yield service_env
    finally:
        manager.__exit__(None, None, None)


def source_revision() -> str:
    """The commit measured, with "+dirty" when the working tree has changes (best effort)."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        head = subprocess.run(  # noqa: S603
            [git, "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603
            [git, "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    times = result["times"]
    return {
        "median_ms": statistics.median(times) * 1000,
        "min_ms": min(times) * 1000,
        "max_ms": max(times) * 1000,
        "mean_ms": statistics.fmean(times) * 1000,
        "stddev_ms": (statistics.stdev(times) if len(times) > 1 else 0.0) * 1000,
        "runs": len(times),
        "times_s": times,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command (default 20)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="warm-up runs per command (default 3)"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = parser.parse_args()
    if args.runs < 2 or args.warmup < 0:
        parser.error("--runs must be at least 2 and --warmup at least 0")

    exe = shutil.which("hyperfine")
    if exe is None:
        print(HYPERFINE_HINT, file=sys.stderr)
        return 2
    version = subprocess.run(  # noqa: S603
        [exe, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    nhidel, how = nhidel_command()
    print(f"python: {PYTHON}\nnhidel: {how}\n{version}; {os.cpu_count()} CPUs", file=sys.stderr)
    load_before = os.getloadavg()

    rows: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    root = Path(tempfile.mkdtemp(prefix="nhidel-bench-"))
    try:
        work = root / "hyperfine"
        work.mkdir()
        bench = {"exe": exe, "runs": args.runs, "warmup": args.warmup, "workdir": work}

        base_env = isolated_env(root / "base")
        rows.update(
            hyperfine(
                commands=[
                    ("python -c pass", [PYTHON, "-c", "pass"]),
                    ("python -c 'import typer'", [PYTHON, "-c", "import typer"]),
                    ("nhidel --version", [*nhidel, "--version"]),
                ],
                env=base_env,
                **bench,
            )
        )

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
        # Half the KDF runs before the file rows and half after, so a change in the machine's
        # load during the rows shifts both sides of "grant minus KDF" alike.
        kdf_times = time_kdf(file_home, PASSPHRASE.encode(), KDF_RUNS // 2)
        rows.update(
            hyperfine(
                commands=[("grant (file keystore)", [*nhidel, "grant", "bot", "--scope", "a:b"])],
                env=file_env,
                **bench,
            )
        )
        rows.update(
            hyperfine(
                commands=[("verify (file keystore)", [*nhidel, "verify", "--scope", "a:b"])],
                env={**file_env, "NHIDEL_TOKEN": token},
                **bench,
            )
        )
        kdf_times += time_kdf(file_home, PASSPHRASE.encode(), KDF_RUNS - KDF_RUNS // 2)

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
                        commands=[
                            ("grant (Secret Service)", [*nhidel, "grant", "bot", "--scope", "a:b"])
                        ],
                        env=keyring_env,
                        **bench,
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
    finally:
        shutil.rmtree(root, ignore_errors=True)

    summary = {name: summarise(result) for name, result in rows.items()}
    python_ms = summary["python -c pass"]["median_ms"]
    typer_ms = summary["python -c 'import typer'"]["median_ms"]
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
    grant_file = summary["grant (file keystore)"]["median_ms"]
    verify_file = summary["verify (file keystore)"]["median_ms"]
    derived = {
        "grant (file keystore) - KDF": grant_file - kdf_ms,
        "verify (file keystore) - KDF": verify_file - kdf_ms,
    }
    for name, value in derived.items():
        print(f"{name:<28}{value:>9.1f}{'':>18}{value / python_ms:>10.2f}{value / typer_ms:>9.2f}")
    print("(milliseconds, medians; x python = / `python -c pass`, x typer = / `import typer`)")
    load_after = os.getloadavg()
    print(
        f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, "
        f"on {os.cpu_count()} CPUs; nhidel ran as {how}"
    )

    goals = [
        (
            "nhidel --version within 2x bare python start",
            summary["nhidel --version"]["median_ms"] / python_ms,
            2.0,
            "x python",
        ),
        (
            "grant (file keystore) minus KDF within 1.8x the Typer floor",
            derived["grant (file keystore) - KDF"] / typer_ms,
            1.8,
            "x typer",
        ),
    ]
    if "grant (Secret Service)" in summary:
        goals.append(
            (
                "grant (Secret Service) within 2.5x the Typer floor",
                summary["grant (Secret Service)"]["x_typer"],
                2.5,
                "x typer",
            )
        )
        goals.append(
            (
                "verify (Secret Service) within 2x the Typer floor",
                summary["verify (Secret Service)"]["x_typer"],
                2.0,
                "x typer",
            )
        )
    goals.append(
        (
            "verify (file keystore) within 2x the Typer floor",
            summary["verify (file keystore)"]["x_typer"],
            2.0,
            "x typer",
        )
    )
    goals.append(
        (
            "verify (file keystore) minus KDF within 2x the Typer floor",
            derived["verify (file keystore) - KDF"] / typer_ms,
            2.0,
            "x typer",
        )
    )
    print()
    goal_results = []
    for text, ratio, limit, unit in goals:
        met = ratio <= limit
        goal_results.append({"goal": text, "ratio": ratio, "limit": limit, "met": met})
        print(f"{'met    ' if met else 'NOT met'}  {text}: {ratio:.2f} {unit} (limit {limit})")
    for note in notes.values():
        print(note)

    if args.json:
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
                "note": "nhidel.keystore._derive in-process, the keystore's own scrypt parameters",
            },
            "derived_ms": derived,
            "goals": goal_results,
            "notes": notes,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
