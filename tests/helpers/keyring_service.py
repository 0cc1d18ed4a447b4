"""A real Secret Service for integration tests: gnome-keyring under a private D-Bus session.

Import the fixtures into a test module (`from keyring_service import secret_service`). They never
touch the user's session: the bus, the keyring daemon and every file they write live in a temp
dir, and both daemons are killed on teardown.

Without `dbus-daemon` or `gnome-keyring-daemon` the tests are skipped with a hint, unless
NHIDEL_REQUIRE_KEYRING=1 (set in CI) turns that into a failure, so a missing package can never
silently hide the keyring tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

PASSWORD = b"test"  # an empty password does not create the login collection
START_TIMEOUT = 15.0
INSTALL_HINT = "install them with: apt-get install gnome-keyring dbus"

# A `keyring` round trip exactly as nhidel makes it: keyring picks the backend from the environment.
_ROUND_TRIP = """
import keyring, sys
backend = keyring.get_keyring()
if type(backend).__module__ != "keyring.backends.SecretService":
    sys.exit(f"keyring chose {type(backend).__module__}")
keyring.set_password("nhidel-test-probe", "probe", "ping")
assert keyring.get_password("nhidel-test-probe", "probe") == "ping"
keyring.delete_password("nhidel-test-probe", "probe")
"""


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("NHIDEL_REQUIRE_KEYRING") == "1":
        pytest.fail(f"{reason} (NHIDEL_REQUIRE_KEYRING=1 forbids skipping the keyring tests)")
    pytest.skip(f"{reason}; {INSTALL_HINT} (set NHIDEL_REQUIRE_KEYRING=1 to make this fail)")


def _daemon_env(root: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DBUS_SESSION_BUS_ADDRESS",
            "DISPLAY",
            "WAYLAND_DISPLAY",
            "GNOME_KEYRING_CONTROL",
            "PYTHON_KEYRING_BACKEND",
        )
        and not k.startswith("NHIDEL_")
    }
    for name, sub in (
        ("HOME", "home"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_RUNTIME_DIR", "run"),
    ):
        path = root / sub
        path.mkdir(mode=0o700, exist_ok=True)
        env[name] = str(path)
    return env


def _alive(pid: int, name: str) -> bool:
    """Whether `pid` still runs the daemon called `name` (guards against a reused pid)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return name.startswith(comm) and state != "Z"


def _stop(pid: int, name: str) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _alive(pid, name):
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid, name):
            time.sleep(0.05)


def secret_service_pid(address: str) -> int:
    """The pid of whoever owns org.freedesktop.secrets on the bus at `address`."""
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection

    bus = DBusAddress(
        "/org/freedesktop/DBus", bus_name="org.freedesktop.DBus", interface="org.freedesktop.DBus"
    )
    with closing(open_dbus_connection(bus=address)) as connection:
        reply = connection.send_and_get_reply(
            new_method_call(bus, "GetConnectionUnixProcessID", "s", ("org.freedesktop.secrets",)),
            timeout=5,
        )
    return int(reply.body[0])


@contextmanager
def running_secret_service() -> Iterator[dict[str, str]]:
    """Start a private bus and an unlocked gnome-keyring; yield the environment that reaches it."""
    missing = [tool for tool in ("dbus-daemon", "gnome-keyring-daemon") if not shutil.which(tool)]
    if missing:
        _unavailable(f"{' and '.join(missing)} not found")
    root = Path(tempfile.mkdtemp(prefix="nhidel-keyring-"))
    env = _daemon_env(root)
    pids: list[tuple[int, str]] = []
    try:
        bus = subprocess.run(
            [
                "dbus-daemon",
                "--session",
                "--fork",
                f"--address=unix:path={root / 'bus'}",
                "--print-address=1",
                "--print-pid=1",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        lines = bus.stdout.split()
        if bus.returncode != 0 or len(lines) != 2:
            _unavailable(f"dbus-daemon did not start: {bus.stderr.strip() or bus.stdout!r}")
        address, bus_pid = lines[0], int(lines[1])
        pids.append((bus_pid, "dbus-daemon"))
        env["DBUS_SESSION_BUS_ADDRESS"] = address

        keyring = subprocess.run(
            ["gnome-keyring-daemon", "--unlock", "--components=secrets", "--daemonize"],
            env=env,
            input=PASSWORD,
            capture_output=True,
            timeout=10,
            check=False,
        )
        # With --unlock it prints nothing here; older versions print GNOME_KEYRING_PID=...
        printed = dict(
            line.split("=", 1) for line in keyring.stdout.decode().splitlines() if "=" in line
        )
        if "GNOME_KEYRING_PID" in printed:
            pids.append((int(printed["GNOME_KEYRING_PID"]), "gnome-keyring-daemon"))
        if keyring.returncode != 0:
            _unavailable(f"gnome-keyring-daemon failed: {keyring.stderr.decode().strip()}")

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            probe = subprocess.run(
                [sys.executable, "-c", _ROUND_TRIP],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT,
                check=False,
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                _unavailable(f"the Secret Service never answered: {probe.stderr.strip()[-500:]}")
            time.sleep(0.1)
        # The daemon that answered is the one to stop, whatever it printed.
        pids.append((secret_service_pid(address), "gnome-keyring-daemon"))
        yield env
    finally:
        for pid, name in reversed(pids):
            _stop(pid, name)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def secret_service() -> Iterator[dict[str, str]]:
    """One shared, unlocked Secret Service; tests keep apart by their own NHIDEL_HOME."""
    with running_secret_service() as env:
        yield env


@pytest.fixture
def private_secret_service() -> Iterator[dict[str, str]]:
    """A Secret Service of the test's own, for tests that lock or break it."""
    with running_secret_service() as env:
        yield env


def keyring_env(service_env: dict[str, str], nhidel_env: dict[str, str]) -> dict[str, str]:
    """`nhidel_env` (see processes.isolated_env) pointed at the Secret Service's session bus."""
    env = dict(nhidel_env)
    env["DBUS_SESSION_BUS_ADDRESS"] = service_env["DBUS_SESSION_BUS_ADDRESS"]
    env.pop("NHIDEL_KEYSTORE", None)
    return env


_KEYRING_CALL = """
import json, keyring, sys
action, service, name = sys.argv[1:4]
if action == "get":
    print(json.dumps(keyring.get_password(service, name)))
else:
    keyring.delete_password(service, name)
"""


def keyring_get(env: dict[str, str], service: str, name: str) -> str | None:
    """Read one password through `keyring` in a child with `env` (so this process stays clean)."""
    import json

    done = subprocess.run(
        [sys.executable, "-c", _KEYRING_CALL, "get", service, name],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    value: str | None = json.loads(done.stdout)
    return value


def keyring_delete(env: dict[str, str], service: str, name: str) -> None:
    subprocess.run(
        [sys.executable, "-c", _KEYRING_CALL, "delete", service, name],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def lock_default_collection(env: dict[str, str]) -> bool:
    """Lock the default collection over `env`'s bus; return whether it reports locked."""
    import secretstorage
    from jeepney.io.blocking import open_dbus_connection

    with closing(open_dbus_connection(bus=env["DBUS_SESSION_BUS_ADDRESS"])) as connection:
        collection = secretstorage.get_default_collection(connection)
        collection.lock()
        return bool(collection.is_locked())
