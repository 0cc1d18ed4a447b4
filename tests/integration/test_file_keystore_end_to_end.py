"""The real CLI, as separate processes, with the encrypted-file keystore (no OS keyring at all)."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import pytest
from helpers.processes import assert_clean_error, claims_of, isolated_env, list_all, ok, run

from nhidel.keys.keystore import EncryptedFileKeyStore, PassphraseSource
from nhidel.paths import Paths

SCOPE = "repo:read:acme/api"


def passphrase_file(directory: Path, secret: str) -> Path:
    path = directory / f"passphrase-{len(list(directory.glob('passphrase-*')))}"
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    secret = passphrase_file(tmp_path, "correct horse battery staple")
    return isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(secret))


@pytest.fixture
def ready(env: dict[str, str]) -> dict[str, str]:
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    return env


def test_init_with_the_file_keystore_prints_public_key_and_refuses_a_second_init(
    env: dict[str, str],
) -> None:
    first = ok(env, "init", "--principal", "alice")
    assert first.stdout.startswith("kid: ")
    assert "-----BEGIN PUBLIC KEY-----" in first.stdout and "PRIVATE" not in first.stdout
    assert "encrypted keystore" in first.stderr
    assert "already exists" in assert_clean_error(run(env, "init", "--principal", "alice"), 6)


def test_file_keystore_main_flow_grant_list_show_verify_revoke(ready: dict[str, str]) -> None:
    granted = ok(ready, "grant", "reviewer", "--scope", SCOPE, "--ttl", "10m")
    token = granted.stdout.strip()
    assert granted.stdout == token + "\n"
    assert len(granted.stderr.splitlines()) == 1 and granted.stderr.startswith("granted ")
    grant_id = claims_of(token)["jti"]

    (listed,) = json.loads(ok(ready, "list", "--json").stdout)
    assert (listed["id"], listed["agent"], listed["scopes"], listed["status"]) == (
        grant_id,
        "reviewer",
        [SCOPE],
        "active",
    )
    assert json.loads(ok(ready, "show", grant_id[:10], "--json").stdout)["id"] == grant_id

    assert run(ready, "verify", "-", "--scope", SCOPE, input=token).code == 0
    assert run({**ready, "NHIDEL_TOKEN": token}, "verify", "--scope", SCOPE).code == 0
    wrong = run(ready, "verify", "-", "--scope", "repo:write:acme/api", input=token)
    assert wrong.code == 1 and "scope_not_granted" in wrong.stderr, str(wrong)

    ok(ready, "revoke", grant_id)
    revoked = run(ready, "verify", "-", "--scope", SCOPE, "--json", input=token)
    assert revoked.code == 1, str(revoked)
    assert json.loads(revoked.stdout)["reason"] == "revoked"
    assert [g["status"] for g in list_all(ready)] == ["revoked"]


def test_passphrase_from_the_variable_opens_the_same_keystore(ready: dict[str, str]) -> None:
    token = ok(ready, "grant", "reviewer", "--scope", SCOPE).stdout.strip()
    by_variable = {k: v for k, v in ready.items() if k != "NHIDEL_PASSPHRASE_FILE"}
    by_variable["NHIDEL_PASSPHRASE"] = "correct horse battery staple"
    assert run(by_variable, "verify", "-", "--scope", SCOPE, input=token).code == 0


def test_private_key_is_sealed_and_every_file_is_private(ready: dict[str, str]) -> None:
    ok(ready, "grant", "reviewer", "--scope", SCOPE)
    paths = Paths.from_env(ready)
    store = EncryptedFileKeyStore(paths, PassphraseSource(ready, None))
    entry = store.read("signing")
    assert entry is not None
    seed = base64.b64decode(entry["private_key"])
    forms = [
        seed,
        seed.hex().encode(),
        base64.b64encode(seed).rstrip(b"="),
        base64.urlsafe_b64encode(seed).rstrip(b"="),
    ]
    home = Path(ready["NHIDEL_HOME"])
    assert (home / "keystore.json").is_file()
    for path in home.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, (path, oct(mode))
        else:
            assert mode == 0o600, (path, oct(mode))
            assert not any(form in path.read_bytes() for form in forms), path


def test_wrong_passphrase_is_exit_4_and_says_wrong_passphrase(
    ready: dict[str, str], tmp_path: Path
) -> None:
    wrong = {**ready, "NHIDEL_PASSPHRASE_FILE": str(passphrase_file(tmp_path, "not it"))}
    wrong_error = assert_clean_error(run(wrong, "grant", "reviewer", "--scope", SCOPE), 4)
    assert "wrong passphrase" in wrong_error
    missing = {k: v for k, v in ready.items() if k != "NHIDEL_PASSPHRASE_FILE"}
    missing_error = assert_clean_error(run(missing, "grant", "reviewer", "--scope", SCOPE), 4)
    assert missing_error.splitlines()[0] != wrong_error.splitlines()[0]
    assert list_all(ready) == []


def test_unreadable_passphrase_file_is_exit_4_naming_the_variable(
    ready: dict[str, str], tmp_path: Path
) -> None:
    gone = {**ready, "NHIDEL_PASSPHRASE_FILE": str(tmp_path / "no-such-file")}
    stderr = assert_clean_error(run(gone, "grant", "reviewer", "--scope", SCOPE), 4)
    assert "NHIDEL_PASSPHRASE_FILE" in stderr


@pytest.mark.parametrize(
    "args",
    [("init", "--principal", "alice"), ("grant", "reviewer", "--scope", SCOPE)],
    ids=["init", "grant"],
)
def test_no_passphrase_without_a_terminal_is_exit_4_without_prompting(
    ready: dict[str, str], tmp_path: Path, args: tuple[str, ...]
) -> None:
    env = {k: v for k, v in ready.items() if k != "NHIDEL_PASSPHRASE_FILE"}
    if args[0] == "init":
        env = isolated_env(tmp_path / "fresh", NHIDEL_KEYSTORE="file")
    started = time.monotonic()
    # stdin is /dev/null and there is no controlling terminal: a prompt would fail or hang.
    result = run(env, *args, timeout=30)
    assert time.monotonic() - started < 20
    stderr = assert_clean_error(result, 4)
    assert "needs a passphrase" in stderr
    assert "Keystore passphrase" not in stderr
    assert "NHIDEL_PASSPHRASE_FILE" in stderr.splitlines()[1]
