"""Running the real `nhidel` CLI as separate processes, for integration and race tests.

Every child gets an environment built here: the repository on PYTHONPATH, HOME and the XDG
directories inside the test's temp dir (so neither nhidel nor `keyring` can read or write the
real home), and none of the caller's nhidel, D-Bus or keyring variables unless a test adds them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60

# Variables that would let a child reach the real keyring, display or nhidel home.
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
)


def isolated_env(root: Path, **extra: str) -> dict[str, str]:
    """An environment whose HOME, XDG dirs and NHIDEL_HOME all live under `root`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NHIDEL_") and k not in _DROPPED}
    user = root / "user"
    for name, sub in (
        ("HOME", ""),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        path = user / sub if sub else user
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        env[name] = str(path)
    env["NHIDEL_HOME"] = str(root / "home")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"nhidel {' '.join(self.args)} -> exit {self.code}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nhidel", *args]


def run(env: dict[str, str], *args: str, input: str | None = None, timeout: float = TIMEOUT) -> Run:
    """Run nhidel to completion, like a script would: stdin is /dev/null unless `input` is
    given, and there is no controlling terminal (so not even /dev/tty can prompt)."""
    done = subprocess.run(
        command(*args),
        env=env,
        cwd=env["HOME"],
        input=input,
        text=True,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        timeout=timeout,
        check=False,
        start_new_session=True,
    )
    return Run(tuple(args), done.returncode, done.stdout, done.stderr)


def ok(env: dict[str, str], *args: str, input: str | None = None) -> Run:
    result = run(env, *args, input=input)
    assert result.code == 0, str(result)
    return result


# `nhidel init` in a child whose file keystore is created with scrypt at the lowest cost it
# accepts: every later command reads the cost from the keystore file, so a test that runs many
# commands as processes pays ~0.05 s a command for the KDF instead of ~0.4 s.
_CHEAP_INIT = """\
import sys
from nhidel.keys import keystore
assert isinstance(keystore._SCRYPT, dict)
keystore._SCRYPT = {"n": 2**14, "r": 8, "p": 1}
from nhidel.cli import main
sys.exit(main(["init", *sys.argv[1:]]))
"""


def init_cheaply(env: dict[str, str], *args: str) -> Run:
    """`nhidel init ARGS` (see _CHEAP_INIT), which must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", _CHEAP_INIT, *args], env=env, cwd=env["HOME"], text=True,
        stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    result = Run(("init", *args), done.returncode, done.stdout, done.stderr)
    assert result.code == 0, str(result)
    return result


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Start nhidel without waiting; collect it with `finish`."""
    return subprocess.Popen(
        command(*args),
        env=env,
        cwd=env["HOME"],
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], *args: str, timeout: float = TIMEOUT) -> Run:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"nhidel {' '.join(args)} hung:\n{stdout}\n{stderr}") from None
    return Run(tuple(args), process.returncode, stdout, stderr)


def assert_clean_error(result: Run, code: int) -> str:
    """One `error:` line (and at most a `hint:` line), no traceback, nothing on stdout.

    Returns the error line and hint joined, for the caller's own checks.
    """
    assert result.code == code, str(result)
    assert result.stdout == "", str(result)
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, str(result)
    assert len(lines) in (1, 2), str(result)
    assert lines[0].startswith("error: "), str(result)
    assert all(line.startswith("hint: ") for line in lines[1:]), str(result)
    return result.stderr


def claims_of(token: str) -> dict[str, Any]:
    """The unverified payload of a compact JWS (tests only read the jti from it)."""
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return decoded


def list_all(env: dict[str, str], *extra: str) -> list[dict[str, Any]]:
    grants: list[dict[str, Any]] = json.loads(ok(env, "list", "--all", "--json", *extra).stdout)
    return grants


def audit_records(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["NHIDEL_HOME"]) / "audit.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
