"""The encrypted-file keystore for machines without an OS keyring.

scrypt costs about 0.4 s per key derivation, so one sealed keystore is shared by the tests that
only read it, and each test that needs its own derives as few keys as it can.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from nhidel.config import Paths
from nhidel.errors import ExitStatus, IntegrityError, KeystoreError
from nhidel.keystore import EncryptedFileKeyStore, KeyStore, open_keystore

PASSPHRASE = "correct horse battery staple"
SEED = bytes(range(0x41, 0x61))  # a recognisable 32-byte "private key"
SIGNING_ENTRY = {
    "principal": "alice",
    "issuer": "nhidel:alice",
    "kid": "kid-1",
    "private_key": base64.b64encode(SEED).decode(),
}
TRUST_ENTRY = {"issuer": "nhidel:alice", "keys": {"kid-1": {"x": "public-x", "state": "active"}}}


def file_env(**extra: str) -> dict[str, str]:
    return {"NHIDEL_KEYSTORE": "file", **extra}


def file_store(paths: Paths, **env: str) -> KeyStore:
    store = open_keystore(paths, env=file_env(**env))
    assert isinstance(store, EncryptedFileKeyStore)
    return store


@pytest.fixture(scope="module")
def sealed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A keystore holding SIGNING_ENTRY and TRUST_ENTRY under PASSPHRASE (one derivation)."""
    home = tmp_path_factory.mktemp("sealed") / "home"
    store = file_store(Paths.from_env({"NHIDEL_HOME": str(home)}), NHIDEL_PASSPHRASE=PASSPHRASE)
    store.write("signing", SIGNING_ENTRY)
    store.write("trust", TRUST_ENTRY)
    return home


@pytest.fixture
def sealed(sealed_home: Path, paths: Paths) -> Paths:
    """A private copy of the sealed keystore in this test's home, free to tamper with."""
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sealed_home / "keystore.json", paths.keystore_file)
    return paths


@pytest.fixture
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


def document(paths: Paths) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(paths.keystore_file.read_text())
    return loaded


def rewrite(paths: Paths, doc: dict[str, Any]) -> None:
    paths.keystore_file.write_text(json.dumps(doc))


def test_entries_written_by_one_store_are_read_back_by_a_fresh_one(sealed: Paths) -> None:
    reader = file_store(sealed, NHIDEL_PASSPHRASE=PASSPHRASE)
    assert reader.read("signing") == SIGNING_ENTRY
    assert reader.read("trust") == TRUST_ENTRY
    assert reader.read("absent") is None


def test_a_written_entry_replaces_the_old_one_and_keeps_the_others(paths: Paths) -> None:
    store = file_store(paths, NHIDEL_PASSPHRASE=PASSPHRASE)
    store.write("trust", TRUST_ENTRY)
    store.write("signing", SIGNING_ENTRY)
    store.write("trust", {"issuer": "changed"})
    assert store.read("trust") == {"issuer": "changed"}
    assert store.read("signing") == SIGNING_ENTRY


def test_wrong_passphrase_is_a_keystore_error_saying_so(sealed: Paths) -> None:
    store = file_store(sealed, NHIDEL_PASSPHRASE="not the passphrase")
    with pytest.raises(KeystoreError) as caught:
        store.read("signing")
    assert "wrong passphrase" in caught.value.message
    assert caught.value.exit_status == ExitStatus.KEYSTORE


def test_tampered_or_swapped_entries_are_integrity_errors(paths: Paths) -> None:
    store = file_store(paths, NHIDEL_PASSPHRASE=PASSPHRASE)
    store.write("signing", SIGNING_ENTRY)
    store.write("trust", TRUST_ENTRY)
    original = document(paths)

    flipped = json.loads(json.dumps(original))
    raw = bytearray(base64.b64decode(flipped["entries"]["signing"]["ciphertext"]))
    raw[0] ^= 0x01
    flipped["entries"]["signing"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    rewrite(paths, flipped)
    with pytest.raises(IntegrityError) as caught:
        store.read("signing")
    assert caught.value.exit_status == ExitStatus.INTEGRITY
    assert store.read("trust") == TRUST_ENTRY  # only the altered entry is refused

    swapped = json.loads(json.dumps(original))
    swapped["entries"]["signing"] = original["entries"]["trust"]
    rewrite(paths, swapped)
    with pytest.raises(IntegrityError):
        store.read("signing")

    renonced = json.loads(json.dumps(original))
    renonced["entries"]["signing"]["nonce"] = original["entries"]["trust"]["nonce"]
    rewrite(paths, renonced)
    with pytest.raises(IntegrityError):
        store.read("signing")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": "other"}',
        b'{"format": "nhidel-keystore/1", "entries": {}}',
    ],
)
def test_a_keystore_file_that_is_not_one_is_an_integrity_error(
    paths: Paths, content: bytes
) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.keystore_file.write_bytes(content)
    with pytest.raises(IntegrityError):
        file_store(paths, NHIDEL_PASSPHRASE=PASSPHRASE).read("signing")


@pytest.mark.parametrize("corrupt", ["n_not_power_of_two", "salt_not_base64", "kdf_missing"])
def test_a_corrupt_kdf_section_is_an_integrity_error(sealed: Paths, corrupt: str) -> None:
    doc = document(sealed)
    if corrupt == "n_not_power_of_two":
        doc["kdf"]["n"] = 3
    elif corrupt == "salt_not_base64":
        doc["kdf"]["salt"] = "!!"
    else:
        del doc["kdf"]
    rewrite(sealed, doc)
    with pytest.raises(IntegrityError):
        file_store(sealed, NHIDEL_PASSPHRASE=PASSPHRASE).read("signing")


def test_passphrase_file_is_read_and_wins_over_the_variable(sealed: Paths, tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")  # a trailing newline, as editors and echo leave one
    store = file_store(
        sealed, NHIDEL_PASSPHRASE_FILE=str(secret), NHIDEL_PASSPHRASE="not the passphrase"
    )
    assert store.read("signing") == SIGNING_ENTRY


@pytest.mark.parametrize("problem", ["missing", "empty"])
def test_an_unusable_passphrase_file_is_a_keystore_error(
    sealed: Paths, tmp_path: Path, problem: str
) -> None:
    secret = tmp_path / "passphrase"
    if problem == "empty":
        secret.write_text("\n")
    store = file_store(sealed, NHIDEL_PASSPHRASE_FILE=str(secret))
    with pytest.raises(KeystoreError):
        store.read("signing")


@pytest.mark.usefixtures("no_terminal")
def test_no_passphrase_and_no_terminal_is_a_keystore_error_and_never_prompts(
    sealed: Paths, paths: Paths
) -> None:
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return PASSPHRASE

    store = open_keystore(sealed, env=file_env(), prompt=prompt)
    with pytest.raises(KeystoreError) as caught:
        store.read("signing")
    assert "NHIDEL_PASSPHRASE" in (caught.value.hint or "")
    assert prompts == []


@pytest.mark.usefixtures("no_terminal")
def test_creating_a_keystore_without_a_passphrase_writes_nothing(paths: Paths) -> None:
    with pytest.raises(KeystoreError):
        file_store(paths).write("signing", SIGNING_ENTRY)
    assert not paths.keystore_file.exists()


def test_the_file_holds_no_plaintext_private_key(sealed: Paths) -> None:
    content = sealed.keystore_file.read_bytes()
    assert b"ciphertext" in content  # the bytes searched are the sealed keystore
    forms = [
        SEED,
        SEED.hex().encode(),
        base64.b64encode(SEED),
        base64.urlsafe_b64encode(SEED),
        base64.b64encode(SEED).rstrip(b"="),
        SIGNING_ENTRY["private_key"].encode(),
        b"private_key",
        b"nhidel:alice",
    ]
    leaked = [form for form in forms if form in content]
    assert leaked == []


def test_the_keystore_file_is_0600_in_a_0700_directory(sealed_home: Path) -> None:
    assert stat.S_IMODE((sealed_home / "keystore.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(sealed_home.stat().st_mode) == 0o700


def test_unknown_keystore_kind_is_a_usage_error(paths: Paths) -> None:
    from nhidel.errors import UsageError

    with pytest.raises(UsageError):
        open_keystore(paths, env={"NHIDEL_KEYSTORE": "plaintext"})
