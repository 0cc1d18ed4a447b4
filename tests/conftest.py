"""Shared fixtures: every test gets its own nhidel home and an in-memory keyring.

No test touches the real home directory or the real OS keyring; the real Secret Service is
started on purpose, under a private D-Bus session, by tests/helpers/keyring_service.py.

Layout: unit/ mirrors the nhidel package, cli/ drives the command line, integration/ runs real
processes, the real keyring and real shells, and helpers/ holds what they share (no test
module imports another).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from helpers.support import Cli, MemoryKeyring
from helpers.token_world import World, make_world

from nhidel.models import Grant
from nhidel.paths import Paths

NHIDEL_VARIABLES = (
    "NHIDEL_HOME",
    "NHIDEL_KEYSTORE",
    "NHIDEL_PASSPHRASE",
    "NHIDEL_PASSPHRASE_FILE",
    "NHIDEL_TOKEN",
    "NHIDEL_DEBUG",
    "NO_COLOR",
)


@pytest.fixture(autouse=True)
def nhidel_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private NHIDEL_HOME per test, and none of the caller's nhidel variables."""
    for name in NHIDEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("NHIDEL_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    fake = MemoryKeyring()
    keyring.set_keyring(fake)
    yield fake
    keyring.set_keyring(previous)


@pytest.fixture
def paths(nhidel_home: Path) -> Paths:
    return Paths.from_env()


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def ready(cli: Cli) -> Cli:
    """An initialised principal ("alice") with one agent ("reviewer")."""
    cli.ok("init", "--principal", "alice")
    cli.ok(
        "agent",
        "add",
        "reviewer",
        "--allow",
        "repo:read:acme/*",
        "--allow",
        "ticket:create:queue/*",
        "--max-ttl",
        "1h",
    )
    return cli


@pytest.fixture
def world(paths: Paths) -> World:
    """A principal, the agent `reviewer` and a verifier at a fixed time (helpers.token_world)."""
    return make_world(paths)


@pytest.fixture
def granted(world: World) -> tuple[Grant, str]:
    """A 15-minute grant of SCOPE to `reviewer`: (the grant, its token)."""
    return world.issue(ttl="15m")
