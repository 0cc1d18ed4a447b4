"""config.toml and where nhidel keeps its files."""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from nhidel.actions.agents import add_agent
from nhidel.actions.keys import init_principal
from nhidel.config import (
    Config,
    Paths,
    load_config,
    save_config,
    with_agent,
    without_agent,
)
from nhidel.errors import ExitStatus, IntegrityError, NotFoundError
from nhidel.keys.keystore import open_keystore
from nhidel.models import Agent
from nhidel.scopes import parse_scopes

T = 1_795_428_000


def agent(name: str = "reviewer", **changes: object) -> Agent:
    fields: dict[str, object] = {
        "name": name,
        "allow": parse_scopes(["repo:read:acme/*", "ticket:create:queue/*", "release:publish"]),
        "max_ttl": 5400,
        "default_ttl": 900,
        "audiences": ("api.example.com", "gw.example.com"),
        "created_at": T,
    }
    fields.update(changes)
    return Agent(**fields)  # type: ignore[arg-type]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that would leave files world-readable, so only nhidel's own modes count."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_agents_round_trip_through_config_toml(paths: Paths) -> None:
    agents = {
        a.name: a
        for a in (
            agent(),
            agent(
                "ci.bot-1_x",
                allow=parse_scopes(["ci:*:builds/*"]),
                audiences=(),
                max_ttl=86400,
                default_ttl=600,
            ),
            agent("0", allow=parse_scopes(["s3:get:bucket/key:with:colons/ü"]), created_at=0),
        )
    }
    config = Config(
        principal="alice@example.com",
        issuer="nhidel:alice@example.com",
        keys={"kid1": {"x": "abc", "created_at": "2026-11-23T10:00:00Z"}},
        agents=agents,
    )
    save_config(paths, config)
    assert load_config(paths) == config
    assert tomllib.loads(paths.config_file.read_text())["agents"]["ci.bot-1_x"]["max_ttl"] == "1d"


def test_add_agent_is_visible_to_the_next_load(paths: Paths) -> None:
    # Adding an agent is a state change: it is audited, which needs the key made by init.
    init_principal(paths, open_keystore(paths, env={}), principal="alice", issuer=None, now=T)
    added = add_agent(
        paths,
        "reviewer",
        allow=["repo:read:acme/*"],
        max_ttl="2h",
        default_ttl="10m",
        audiences=["api.example.com"],
        now=T,
    )
    assert load_config(paths).agent("reviewer") == added
    assert added.max_ttl == 7200 and added.default_ttl == 600


def test_saved_agents_load_back(paths: Paths) -> None:
    save_config(paths, without_agent(with_agent(with_agent(Config(), agent("a")), agent("b")), "a"))
    loaded = load_config(paths)
    assert sorted(loaded.agents) == ["b"]
    with pytest.raises(NotFoundError):
        loaded.agent("a")


def test_missing_config_is_an_empty_config(paths: Paths) -> None:
    assert load_config(paths) == Config()
    assert not paths.config_file.exists()


@pytest.mark.usefixtures("permissive_umask")
def test_config_is_written_0600_in_a_0700_directory(paths: Paths) -> None:
    save_config(paths, Config(principal="alice", agents={"reviewer": agent()}))
    assert mode(paths.config_file) == 0o600
    assert mode(paths.config_dir) == 0o700


@pytest.mark.usefixtures("permissive_umask")
def test_saving_tightens_an_existing_world_readable_directory(paths: Paths) -> None:
    paths.config_dir.mkdir(parents=True)
    paths.config_dir.chmod(0o755)
    save_config(paths, Config(principal="alice"))
    assert mode(paths.config_dir) == 0o700
    assert mode(paths.config_file) == 0o600


def test_saving_leaves_no_temporary_files(paths: Paths) -> None:
    save_config(paths, Config(principal="alice"))
    save_config(paths, Config(principal="bob"))
    assert sorted(p.name for p in paths.config_dir.iterdir()) == ["config.toml"]
    assert load_config(paths).principal == "bob"


@pytest.mark.parametrize(
    "content",
    [
        b"principal = \n",
        b"[agents\n",
        b"\xff\xfe\x00garbage",
        b'[agents.reviewer]\nallow = ["NOT A SCOPE"]\nmax_ttl = "1h"\ndefault_ttl = "15m"\n',
        b'[agents.reviewer]\nallow = ["repo:read"]\nmax_ttl = "forever"\ndefault_ttl = "15m"\n',
        b'[agents.reviewer]\nmax_ttl = "1h"\ndefault_ttl = "15m"\n',  # no allow
        b'[agents.reviewer]\nallow = ["repo:read"]\nmax_ttl = "1h"\ndefault_ttl = "15m"\n'
        b'created_at = "yesterday"\n',
    ],
)
def test_corrupt_config_is_an_integrity_error(paths: Paths, content: bytes) -> None:
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_bytes(content)
    with pytest.raises(IntegrityError) as caught:
        load_config(paths)
    assert caught.value.exit_status == ExitStatus.INTEGRITY
    assert str(paths.config_file) in caught.value.message


@pytest.mark.parametrize(
    "content",
    [
        b"agents = 5\n",
        b'keys = "x"\n',
        b'[agents.reviewer]\nallow = ["repo:read"]\nmax_ttl = 3600\ndefault_ttl = "15m"\n',
        b'[agents.reviewer]\nallow = ["repo:read"]\nmax_ttl = "1h"\ndefault_ttl = "15m"\n'
        b"created_at = 0\n",
    ],
)
def test_config_of_the_wrong_shape_is_an_integrity_error(paths: Paths, content: bytes) -> None:
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_bytes(content)
    with pytest.raises(IntegrityError):
        load_config(paths)


# -- Paths ---------------------------------------------------------------------------------


def test_paths_from_nhidel_home_puts_everything_in_it(tmp_path: Path) -> None:
    home = tmp_path / "nh"
    paths = Paths.from_env({"NHIDEL_HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "x")})
    assert paths.config_dir == paths.state_dir == home
    assert paths.config_file == home / "config.toml"
    assert paths.ledger_file.parent == home
    assert paths.audit_file == home / "audit.jsonl"


def test_relative_nhidel_home_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = Paths.from_env({"NHIDEL_HOME": "rel/home"})
    assert paths.config_dir == tmp_path / "rel" / "home"
    assert paths.config_dir.is_absolute()


def test_a_tilde_in_nhidel_home_is_the_users_home_and_an_unknown_users_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Paths.from_env({"NHIDEL_HOME": "~/nh"}).config_dir == tmp_path / "nh"
    with pytest.raises(RuntimeError):  # never a directory named `~nosuchuser` under the cwd
        Paths.from_env({"NHIDEL_HOME": "~nosuchuser-nhidel/nh"})


def test_paths_from_env_defaults_to_the_process_environment(nhidel_home: Path) -> None:
    assert Paths.from_env().config_dir == nhidel_home


def test_different_homes_use_different_keyring_services(tmp_path: Path) -> None:
    one = Paths.from_env({"NHIDEL_HOME": str(tmp_path / "one")})
    two = Paths.from_env({"NHIDEL_HOME": str(tmp_path / "two")})
    assert one.keyring_service != two.keyring_service


linux_only = pytest.mark.skipif(sys.platform == "darwin", reason="XDG directories are Linux's")


@linux_only
def test_paths_follow_xdg_config_and_state_homes(tmp_path: Path) -> None:
    paths = Paths.from_env(
        {
            "HOME": str(tmp_path / "user"),
            "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "XDG_STATE_HOME": str(tmp_path / "state"),
        }
    )
    assert paths.config_dir == tmp_path / "cfg" / "nhidel"
    assert paths.state_dir == tmp_path / "state" / "nhidel"
    assert paths.config_file == tmp_path / "cfg" / "nhidel" / "config.toml"
    assert paths.audit_file == tmp_path / "state" / "nhidel" / "audit.jsonl"


@linux_only
@pytest.mark.parametrize("empty", [True, False])
def test_paths_fall_back_to_home_dot_dirs_without_xdg(tmp_path: Path, empty: bool) -> None:
    env = {"HOME": str(tmp_path / "user"), "NHIDEL_HOME": ""}
    if empty:
        env.update(XDG_CONFIG_HOME="", XDG_STATE_HOME="")
    paths = Paths.from_env(env)
    assert paths.config_dir == tmp_path / "user" / ".config" / "nhidel"
    assert paths.state_dir == tmp_path / "user" / ".local" / "state" / "nhidel"


@linux_only
def test_relative_xdg_dirs_are_ignored(tmp_path: Path) -> None:
    paths = Paths.from_env(
        {
            "HOME": str(tmp_path / "user"),
            "XDG_CONFIG_HOME": "rel/cfg",
            "XDG_STATE_HOME": "rel/state",
        }
    )
    assert paths.config_dir == tmp_path / "user" / ".config" / "nhidel"
    assert paths.state_dir == tmp_path / "user" / ".local" / "state" / "nhidel"
