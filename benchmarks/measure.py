"""What every benchmark script shares: the interpreter and nhidel to time, throw-away homes,
hyperfine, medians, peak memory, and the facts about the run (load, revision).

Not a benchmark itself; `run.py` and the `bench_*.py` scripts import it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HYPERFINE_HINT = (
    "hyperfine is required: apt-get install hyperfine (Debian/Ubuntu), brew install hyperfine "
    "(macOS), or cargo install hyperfine"
)

# The interpreter this script was started with, as given. (A pyenv shim execs the real
# interpreter, which sets sys.executable to it.) Never resolved: a virtual environment's python
# is a symlink to the base interpreter, and resolving it would time the base interpreter's
# site-packages and whatever nhidel that finds, not the environment's.
PYTHON = sys.executable

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
    # An installed package has its bytecode compiled (pip does it); without this, an editable
    # checkout on a machine that sets it would recompile nhidel in every timed process.
    "PYTHONDONTWRITEBYTECODE",
)


def nhidel_command() -> tuple[list[str], str]:
    """The `nhidel` console script of this interpreter (in its own bin directory, a virtual
    environment's included) when there is one, else `python -m nhidel`."""
    script = Path(PYTHON).parent / "nhidel"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], f"console script {script}"
    return [PYTHON, "-m", "nhidel"], f"{PYTHON} -m nhidel"


_clean: list[str] = []  # the clean environment's interpreter, once made


def clean_python() -> str:
    """The interpreter of a clean virtual environment, made (once a process, and removed at
    exit) from the same base interpreter as this one: the `python -c pass` baseline.

    No site-packages of its own and none of the base's, so none of the machine's `.pth` files
    (on this machine they take a bare start from ~9 ms to ~36 ms): the floor any installed
    Python program starts from.
    """
    if not _clean:
        root = tempfile.mkdtemp(prefix="nhidel-clean-venv-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        # A venv's own `-m venv` builds on its base interpreter (sys._base_executable).
        subprocess.run([PYTHON, "-m", "venv", "--without-pip", root], check=True)
        _clean.append(str(Path(root) / "bin" / "python"))
    return _clean[0]


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


def run_nhidel(nhidel: Sequence[str], env: Mapping[str, str], *args: str) -> str:
    """Run one nhidel command to prepare a benchmark; its stdout, or exit naming the failure."""
    done = subprocess.run(
        [*nhidel, *args],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"nhidel {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr}")
    return done.stdout.strip()


def find_hyperfine() -> tuple[str, str] | None:
    """hyperfine's path and version line, or None when it is not installed."""
    exe = shutil.which("hyperfine")
    if exe is None:
        return None
    version = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return exe, version


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
    # hyperfine's progress goes to the terminal, never into a caller's captured stdout.
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, check=False)
    if done.returncode != 0:
        sys.exit(f"hyperfine failed (exit {done.returncode}); a benchmarked command must exit 0")
    results = json.loads(out.read_text())["results"]
    return {result["command"]: result for result in results}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Median, min, max, mean and spread in ms of one hyperfine result, with every time kept."""
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


# Run by `python -I -S` (about 9 MiB): start the command, wait for it, report its rusage.
_WAIT4 = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {time.perf_counter() - start}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: bytes | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Run `argv` once; its peak resident set size in KiB, its wall time and exit code.

    The figure is the kernel's `ru_maxrss` from wait4, as `/usr/bin/time -v` reports it: the
    largest of the process and of every child it waited for (a multi-process command reports
    its biggest process, not their sum). Like `time`, a small waiter process forks the command:
    a child forked straight from this process would count this process's own memory (the
    high-water mark survives exec). Stdout is discarded. With `check`, a command that fails
    stops the benchmark; without, its exit code and stderr are returned.
    """
    with tempfile.TemporaryDirectory(prefix="nhidel-rss-") as tmp:
        report = Path(tmp) / "rusage"
        done = subprocess.run(
            [PYTHON, "-I", "-S", "-c", _WAIT4, str(report), *argv],
            env=dict(env),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        maxrss, seconds = report.read_text().split()
    message = done.stderr.decode(errors="replace")
    if check and done.returncode != 0:
        sys.exit(f"{shlex.join(argv)} failed (exit {done.returncode}):\n{message}")
    # Linux reports KiB, macOS bytes.
    kib = int(maxrss) // 1024 if sys.platform == "darwin" else int(maxrss)
    return {"rss_kib": kib, "rss_mib": kib / 1024, "wall_s": float(seconds),
            "exit": done.returncode, "stderr": message}  # fmt: skip


@contextlib.contextmanager
def secret_service() -> Iterator[dict[str, str] | None]:
    """The env of a private D-Bus session with gnome-keyring, or None when it cannot start."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    try:
        from helpers.keyring_service import running_secret_service
    except ImportError as exc:
        print(f"  skipping the Secret Service rows: {exc}", file=sys.stderr)
        yield None
        return
    # keyring_service reports an unavailable daemon through pytest.skip / pytest.fail.
    manager = running_secret_service()
    try:
        service_env = manager.__enter__()
    except BaseException as exc:
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
        head = subprocess.run(
            [git, "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
