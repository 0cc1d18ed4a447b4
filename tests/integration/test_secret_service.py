"""nhidel's direct Secret Service path: one D-Bus connection a command, keyring's own items,
and keyring's choice whenever the user (or the platform) makes one.

Against a real gnome-keyring under a private D-Bus session (tests/helpers/keyring_service.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.keyring_service import (  # noqa: F401 - fixtures are used by name
    keyring_env,
    keyring_get,
    secret_service,
)
from helpers.processes import assert_clean_error, isolated_env, ok, run

from nhidel.keys.secret_service import keyring_would_choose_secret_service

pytestmark = pytest.mark.keyring

VIA_KEYRING = {"PYTHON_KEYRING_BACKEND": "keyring.backends.SecretService.Keyring"}


@pytest.fixture
def env(secret_service: dict[str, str], tmp_path: Path) -> dict[str, str]:  # noqa: F811
    return keyring_env(secret_service, isolated_env(tmp_path))


def service_name(env: dict[str, str]) -> str:
    return f"nhidel:{Path(env['NHIDEL_HOME']).absolute()}"


def test_keys_written_directly_are_keyrings_items_and_back(env: dict[str, str]) -> None:
    ok(env, "init", "--principal", "alice")
    signing = keyring_get(env, service_name(env), "signing")
    assert signing is not None and json.loads(signing)["principal"] == "alice"
    ok(env, "agent", "add", "bot", "--allow", "a:b")
    # Minted through keyring, verified directly; and the other way round.
    token = ok({**env, **VIA_KEYRING}, "grant", "bot", "--scope", "a:b").stdout.strip()
    ok(env, "verify", "-", "--scope", "a:b", input=token)
    token = ok(env, "grant", "bot", "--scope", "a:b").stdout.strip()
    ok({**env, **VIA_KEYRING}, "verify", "-", "--scope", "a:b", input=token)
    assert ok(env, "audit", "verify").code == 0


def test_the_users_keyring_choice_wins_over_the_direct_path(env: dict[str, str]) -> None:
    refused = run(
        {**env, "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"},
        "init",
        "--principal",
        "alice",
    )
    assert "keyring chose keyring.backends.null" in assert_clean_error(refused, 4)
    config = Path(env["XDG_CONFIG_HOME"]) / "python_keyring"
    config.mkdir(parents=True)
    (config / "keyringrc.cfg").write_text(
        "[backend]\ndefault-keyring=keyring.backends.fail.Keyring\n"
    )
    refused = run(env, "init", "--principal", "alice")
    assert "keyring.backends.fail" in assert_clean_error(refused, 4)
    assert keyring_get({**env, **VIA_KEYRING}, service_name(env), "signing") is None


COUNT_CONNECTIONS = """
import json, sys
import secretstorage, secretstorage.util
opened = {"connections": 0, "sessions": 0}
def counted(function, what):
    def wrapper(*args, **kwargs):
        opened[what] += 1
        return function(*args, **kwargs)
    return wrapper
secretstorage.dbus_init = counted(secretstorage.dbus_init, "connections")
secretstorage.util.open_session = counted(secretstorage.util.open_session, "sessions")
from nhidel.cli import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, **opened}), file=sys.stderr)
"""


def test_grant_and_verify_use_one_connection_and_one_session(env: dict[str, str]) -> None:
    """A grant reads its key and writes the audit mark; a verify reads the pinned keys and
    writes the mark: each over one connection and one encrypted session, not one per call."""
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "bot", "--allow", "a:b")

    def counted(*args: str, stdin: str = "") -> tuple[str, dict[str, int]]:
        done = subprocess.run(
            [sys.executable, "-c", COUNT_CONNECTIONS, *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        report = json.loads(done.stderr.strip().splitlines()[-1])
        assert report.pop("status") == 0, done.stderr
        return done.stdout, report

    token, opened = counted("grant", "bot", "--scope", "a:b")
    assert opened == {"connections": 1, "sessions": 1}
    _, opened = counted("verify", "-", "--scope", "a:b", stdin=token)
    assert opened == {"connections": 1, "sessions": 1}


@pytest.mark.parametrize(
    ("changes", "direct"),
    [
        ({}, True),
        ({"PYTHON_KEYRING_BACKEND": "keyring.backends.SecretService.Keyring"}, False),
        ({"DBUS_SESSION_BUS_ADDRESS": ""}, False),
        ({"XDG_CURRENT_DESKTOP": "KDE"}, False),
        ({"XDG_CURRENT_DESKTOP": "ubuntu:GNOME"}, True),
        ({"KEYRING_PROPERTY_SCHEME": "KeePassXC"}, False),
        ({"KEYRING_PROPERTY_PREFERRED_COLLECTION": "/org/freedesktop/secrets/collection/x"}, False),
    ],
)
def test_when_keyring_would_choose_the_secret_service(
    tmp_path: Path, changes: dict[str, str], direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("keyring.core._keyring_backend", None)  # as in a fresh nhidel process
    env = {
        "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent",
        "XDG_CONFIG_HOME": str(tmp_path),
        **changes,
    }
    expected = direct and sys.platform.startswith("linux")
    assert keyring_would_choose_secret_service(env) is expected
    (tmp_path / "python_keyring").mkdir()
    (tmp_path / "python_keyring" / "keyringrc.cfg").write_text("[backend]\n")
    assert keyring_would_choose_secret_service(env) is False


def test_a_backend_set_by_the_program_is_used(tmp_path: Path) -> None:
    probe = (
        "import keyring, sys\n"
        "from keyring.backends import null\n"
        "from nhidel.keys.secret_service import keyring_would_choose_secret_service as direct\n"
        "env = {'DBUS_SESSION_BUS_ADDRESS': 'unix:path=/x', 'XDG_CONFIG_HOME': sys.argv[1]}\n"
        "before = direct(env)\n"
        "keyring.set_keyring(null.Keyring())\n"
        "print(before, direct(env))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHON_KEYRING_BACKEND"},
    )
    assert done.stdout.split() == [str(sys.platform.startswith("linux")), "False"]


def test_keyring_property_settings_are_honoured(env: dict[str, str]) -> None:
    """KEYRING_PROPERTY_SCHEME=KeePassXC files items under other attributes: nhidel must store
    them where keyring, configured so, looks for them."""
    kee = {**env, "KEYRING_PROPERTY_SCHEME": "KeePassXC"}
    ok(kee, "init", "--principal", "alice")
    shown = ok({**kee, **VIA_KEYRING}, "key", "show", "--json")
    assert "alice" in shown.stdout
