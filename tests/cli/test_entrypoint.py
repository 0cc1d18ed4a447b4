"""The process entry point: fast --version, python -m, private files whatever the umask."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("typer", "rich", "cryptography", "jwt", "keyring", "sqlite3")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_version_imports_no_heavy_module() -> None:
    probe = (
        "import sys\n"
        "from nhidel.cli import main\n"
        "main(['--version'])\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    result = run_python(probe)
    assert result.returncode == 0, result.stderr
    version_line, modules = result.stdout.splitlines()
    assert version_line.startswith("nhidel ")
    assert modules == "[]"


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nhidel", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith("nhidel ")


def test_files_are_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    home = tmp_path / "home"
    passphrase = tmp_path / "pass"
    passphrase.write_text("correct horse\n")
    code = (
        "import os, sys\n"
        "os.umask(0)\n"
        "from nhidel.cli import main\n"
        "sys.exit(main(['init', '--principal', 'alice'])\n"
        "         or main(['agent', 'add', 'bot', '--allow', 'a:b'])\n"
        "         or main(['grant', 'bot', '--scope', 'a:b']))\n"
    )
    result = run_python(
        code, NHIDEL_HOME=str(home), NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(passphrase)
    )
    assert result.returncode == 0, result.stderr
    assert home.stat().st_mode & 0o777 == 0o700
    created = [p for p in home.rglob("*")]
    assert any(p.name == "ledger.db" for p in created)
    for path in created:
        expected = 0o700 if path.is_dir() else 0o600
        assert path.stat().st_mode & 0o777 == expected, path


def test_an_unwritable_home_is_one_clear_line_without_a_traceback(tmp_path: Path) -> None:
    # A home that is a file, not a directory: nothing nhidel can write.
    blocker = tmp_path / "home"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "nhidel", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NHIDEL_HOME": str(blocker)},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "bug in nhidel" not in result.stderr
    assert result.stderr.startswith(f"error: could not write {blocker}")


QUICK_EXIT = """
import atexit, sys, threading, time
from pathlib import Path
mark = Path(sys.argv[1])
atexit.register(lambda: mark.with_suffix(".atexit").write_text("ran"))
if sys.argv[2] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), mark.write_text("joined"))).start()
sys.argv = ["nhidel", "--version"]
from nhidel.cli import run
run()
"""


def test_the_quick_exit_runs_atexit_handlers_and_flushes_output(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", QUICK_EXIT, str(tmp_path / "m"), "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("nhidel ")
    assert (tmp_path / "m.atexit").read_text() == "ran"


def test_the_quick_exit_waits_for_a_running_thread(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", QUICK_EXIT, str(tmp_path / "m"), "thread"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert (tmp_path / "m").read_text() == "joined"
    assert (tmp_path / "m.atexit").read_text() == "ran"


def test_a_reader_that_goes_away_is_exit_0_without_noise(tmp_path: Path) -> None:
    """`nhidel --help | head -1`: no 'Exception ignored' or traceback on stderr."""
    reader = subprocess.Popen(  # noqa: S602 - a fixed pipeline, no user input
        f'{sys.executable} -m nhidel --help | head -c 1; echo " ${{PIPESTATUS[0]}}"',
        shell=True,
        executable="/bin/bash",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "80", "NHIDEL_HOME": str(tmp_path)},
    )
    out, err = reader.communicate(timeout=60)
    assert out.split()[-1] == "0"  # SPEC: a closed output pipe is quiet and never exit 1
    assert "Exception" not in err and "Traceback" not in err


def test_output_that_cannot_be_written_is_one_error_and_exit_1(tmp_path: Path) -> None:
    """`nhidel list --json > /dev/full`: the output is lost, so the command failed; one line says
    so, whether the write fails inside the command or at the final flush."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["NHIDEL_HOME"] = str(tmp_path / "home")
    for args in (["--version"], ["list", "--json"]):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "nhidel", *args],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
        assert done.returncode == 1, (args, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: ") and "No space" in lines[0]
        assert lines[1].startswith("hint: "), (args, done.stderr)
