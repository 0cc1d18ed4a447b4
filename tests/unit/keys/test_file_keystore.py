"""The encrypted-file keystore for machines without an OS keyring.

scrypt costs about 0.4 s per key derivation, so one sealed keystore is shared by the tests that
only read it, and each test that needs its own derives as few keys as it can.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import assert_clean_error, isolated_env, run

from nhidel.errors import ExitStatus, IntegrityError, KeystoreError
from nhidel.keys import keystore
from nhidel.keys.keystore import EncryptedFileKeyStore, KeyStore, OsKeyring, open_keystore
from nhidel.paths import Paths

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


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": "other"}',
        b'{"format": "nhidel-keystore/2", "kdf": {}}',
        b'{"format": "nhidel-keystore/2", "kdf": {}, "check": {}, "sealed": {}}',
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


# -- One sealed whole: what someone who can write the file, but knows no passphrase, can do ----

MARK = "audit-mark"
NEW_TRUST = {"issuer": "nhidel:alice", "keys": {"kid-2": {"x": "public-y", "state": "active"}}}
# Canonical JSON with sorted keys: the layout of the sealed plaintext is no secret.
PLAINTEXT_PREFIX = b'{"entries":{"audit-mar'


@pytest.fixture
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt at the lowest cost a keystore may ask for (N=2^14), for keystores a test makes."""
    monkeypatch.setitem(keystore._SCRYPT, "n", 2**14)


@dataclass
class History:
    """Two genuine versions of one keystore: before and after a `key rotate --now`."""

    paths: Paths
    old: dict[str, Any]  # TRUST_ENTRY, the mark at 3
    new: dict[str, Any]  # NEW_TRUST, the mark at 9; the file holds this one
    store: KeyStore  # the store that wrote them, its key cached, as in a long-running process


@pytest.fixture
def history(fast_kdf: None, paths: Paths) -> History:
    store = file_store(paths, NHIDEL_PASSPHRASE=PASSPHRASE)
    store.write("signing", SIGNING_ENTRY)
    store.write("trust", TRUST_ENTRY)
    store.write(MARK, {"seq": 3, "hash": "h3"})
    old = document(paths)
    store.write("trust", NEW_TRUST)
    store.write(MARK, {"seq": 9, "hash": "h9"})
    return History(paths, old, document(paths), store)


def ciphertext(doc: dict[str, Any]) -> bytes:
    return base64.b64decode(doc["sealed"]["ciphertext"])


def with_sealed(doc: dict[str, Any], raw: bytes, nonce: str | None = None) -> dict[str, Any]:
    copy = json.loads(json.dumps(doc))
    copy["sealed"]["ciphertext"] = base64.b64encode(raw).decode()
    if nonce is not None:
        copy["sealed"]["nonce"] = nonce
    return copy


def v1_document(kdf: dict[str, Any], entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A genuine nhidel-keystore/1 file, each entry sealed on its own (AAD: format and name)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = keystore._derive(PASSPHRASE.encode(), kdf)

    def seal(name: str, plaintext: bytes) -> dict[str, str]:
        nonce = os.urandom(12)
        sealed = AESGCM(key).encrypt(nonce, plaintext, f"nhidel-keystore/1:{name}".encode())
        return {
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(sealed).decode(),
        }

    sealed_entries = {
        name: seal(name, json.dumps(value).encode()) for name, value in entries.items()
    }
    return {"format": "nhidel-keystore/1", "kdf": kdf,
            "entries": {"check": seal("check", b"nhidel"), **sealed_entries}}  # fmt: skip


def renamed_mark(h: History) -> bytes:
    """Delete the mark alone: flip "audit-mark" to "audit-marx" in place (AES-GCM is a
    stream cipher, so the bit flip lands exactly; only the tag is in the way)."""
    raw = bytearray(ciphertext(h.new))
    raw[len(PLAINTEXT_PREFIX)] ^= ord("k") ^ ord("x")
    return json.dumps(with_sealed(h.new, bytes(raw))).encode()


def cut_tail(h: History) -> bytes:
    """Drop the last entry ("trust", last in sorted order): cut the ciphertext short."""
    raw = ciphertext(h.new)
    return json.dumps(with_sealed(h.new, raw[: len(raw) // 2] + raw[-16:])).encode()


def dropped_sealed(h: History) -> bytes:
    doc = json.loads(json.dumps(h.new))
    del doc["sealed"]
    return json.dumps(doc).encode()


def old_trust_new_mark(h: History) -> bytes:
    """Mix versions: the new version's start (its mark at 9) with the old one's end (the trust
    from before the rotation)."""
    new, old = ciphertext(h.new), ciphertext(h.old)
    half = len(PLAINTEXT_PREFIX) + 20
    return json.dumps(with_sealed(h.new, new[:half] + old[half:])).encode()


def old_ciphertext_new_nonce(h: History) -> bytes:
    return json.dumps(
        with_sealed(h.new, ciphertext(h.old), nonce=h.new["sealed"]["nonce"])
    ).encode()


def kdf_member_added(h: History) -> bytes:
    doc = json.loads(json.dumps(h.new))
    doc["kdf"]["note"] = "harmless?"
    return json.dumps(doc).encode()


def v1_without_the_mark(h: History) -> bytes:
    """A /1 file (as a copy from before the format changed would be) holding the old trust and
    no mark: everything finding 5 did, in the old format."""
    return json.dumps(
        v1_document(h.new["kdf"], {"signing": SIGNING_ENTRY, "trust": TRUST_ENTRY})
    ).encode()


def truncated(h: History) -> bytes:
    return h.paths.keystore_file.read_bytes()[:200]


SPLICES: dict[str, Callable[[History], bytes]] = {
    "delete the mark": renamed_mark,
    "cut the last entry": cut_tail,
    "drop every entry": dropped_sealed,
    "mix two versions": old_trust_new_mark,
    "older entries under the newer nonce": old_ciphertext_new_nonce,
    "add to the kdf block": kdf_member_added,
    "replace with a /1 file": v1_without_the_mark,
    "truncate the file": truncated,
}


@pytest.mark.parametrize("splice", SPLICES)
def test_a_spliced_keystore_file_refuses_every_entry(history: History, splice: str) -> None:
    tampered = SPLICES[splice](history)
    history.paths.keystore_file.write_bytes(tampered)
    fresh = file_store(history.paths, NHIDEL_PASSPHRASE=PASSPHRASE)
    for store in (fresh, history.store):  # a new process, and one that has the key already
        for entry in ("signing", "trust", MARK, "absent"):
            with pytest.raises(IntegrityError) as caught:
                store.read(entry)
            assert caught.value.exit_status == ExitStatus.INTEGRITY
        # Nor is the damage written over (which would launder it into a valid file).
        with pytest.raises(IntegrityError):
            store.update(MARK, lambda _old: {"seq": 10, "hash": "h10"})
        assert history.paths.keystore_file.read_bytes() == tampered


def test_an_older_copy_of_the_whole_file_is_read_as_it_was_a_documented_limit(
    history: History,
) -> None:
    """Putting back a whole older copy is the one thing the file cannot tell (README, "Security
    model"): a new process reads the old state, consistently, entries never mixed. A process that
    has seen the newer one refuses to go back."""
    rewrite(history.paths, history.old)
    fresh = file_store(history.paths, NHIDEL_PASSPHRASE=PASSPHRASE)
    assert fresh.read("trust") == TRUST_ENTRY
    assert fresh.read(MARK) == {"seq": 3, "hash": "h3"}
    with pytest.raises(IntegrityError) as caught:
        history.store.read(MARK)
    assert "older copy" in caught.value.message


def test_the_file_is_one_sealed_whole_naming_no_entry(history: History) -> None:
    doc = history.new
    assert doc["format"] == "nhidel-keystore/2"
    assert set(doc) == {"format", "kdf", "check", "sealed"}
    content = history.paths.keystore_file.read_bytes()
    for name in (b"signing", b"trust", b"audit-mark", b"generation"):
        assert name not in content
    # Every write seals afresh: a new nonce, even for the same entries.
    history.store.write(MARK, {"seq": 9, "hash": "h9"})
    assert document(history.paths)["sealed"]["nonce"] != doc["sealed"]["nonce"]


@pytest.mark.parametrize("edit", ["salt", "n", "p"])
def test_a_kdf_edit_that_changes_the_key_is_refused_and_never_read(
    history: History, edit: str
) -> None:
    """A different salt or cost gives a different key: a new process cannot tell that from a
    mistyped passphrase, so it is exit 4 saying both; a process holding the key calls it
    tampering. Either way, nothing is read."""
    doc = json.loads(json.dumps(history.new))
    if edit == "salt":
        doc["kdf"]["salt"] = base64.b64encode(os.urandom(16)).decode()
    elif edit == "n":
        doc["kdf"]["n"] = 2**15
    else:
        doc["kdf"]["p"] = 2
    rewrite(history.paths, doc)
    with pytest.raises(KeystoreError) as caught:
        file_store(history.paths, NHIDEL_PASSPHRASE=PASSPHRASE).read("trust")
    assert "replaced" in caught.value.message
    with pytest.raises(IntegrityError):
        history.store.read("trust")


@pytest.mark.parametrize("how", ["another keystore's", "bit flipped"])
def test_an_altered_passphrase_check_is_tampering_not_a_wrong_passphrase(
    history: History, tmp_path: Path, how: str
) -> None:
    doc = json.loads(json.dumps(history.new))
    if how == "another keystore's":
        theirs = Paths.from_env({"NHIDEL_HOME": str(tmp_path / "theirs")})
        file_store(theirs, NHIDEL_PASSPHRASE="the attacker's").write("trust", NEW_TRUST)
        doc["check"] = document(theirs)["check"]
    else:
        raw = bytearray(base64.b64decode(doc["check"]["ciphertext"]))
        raw[0] ^= 1
        doc["check"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    rewrite(history.paths, doc)
    for store in (file_store(history.paths, NHIDEL_PASSPHRASE=PASSPHRASE), history.store):
        with pytest.raises(IntegrityError):
            store.read("trust")


@pytest.mark.parametrize("planted", ["symlink", "fifo", "directory"])
def test_something_planted_at_the_keystore_name_is_refused_not_followed(
    history: History, planted: str
) -> None:
    target = history.paths.keystore_file
    elsewhere = target.with_name("elsewhere.json")
    target.rename(elsewhere)
    if planted == "symlink":
        target.symlink_to(elsewhere)
    elif planted == "fifo":
        os.mkfifo(target, 0o600)  # reading it would wait forever
    else:
        target.mkdir()
    with pytest.raises(IntegrityError):
        file_store(history.paths, NHIDEL_PASSPHRASE=PASSPHRASE).read("trust")


def test_a_keystore_removed_while_in_use_is_refused_not_started_afresh(history: History) -> None:
    history.paths.keystore_file.unlink()
    with pytest.raises(IntegrityError):
        history.store.read(MARK)
    with pytest.raises(IntegrityError):
        history.store.write(MARK, {"seq": 10, "hash": "h10"})
    assert not history.paths.keystore_file.exists()


# -- update: read, change and write one entry with no other write in between ---------------


def test_update_passes_the_current_value_and_writes_what_change_returns(history: History) -> None:
    seen: list[dict[str, Any] | None] = []

    def forward(current: dict[str, Any] | None) -> dict[str, Any]:
        seen.append(current)
        return {"seq": (current or {"seq": 0})["seq"] + 1, "hash": "next"}

    assert history.store.update(MARK, forward) == {"seq": 10, "hash": "next"}
    assert history.store.update("absent", forward) == {"seq": 1, "hash": "next"}
    assert seen == [{"seq": 9, "hash": "h9"}, None]
    fresh = file_store(history.paths, NHIDEL_PASSPHRASE=PASSPHRASE)
    assert fresh.read(MARK) == {"seq": 10, "hash": "next"}
    assert fresh.read("trust") == NEW_TRUST


def test_update_writes_nothing_when_change_refuses(history: History) -> None:
    before = history.paths.keystore_file.read_bytes()

    def backwards(current: dict[str, Any] | None) -> dict[str, Any]:
        raise IntegrityError("the mark would move backwards")

    with pytest.raises(IntegrityError):
        history.store.update(MARK, backwards)
    assert history.paths.keystore_file.read_bytes() == before


def _count_concurrently(stores: list[KeyStore], rounds: int) -> None:
    def bump(current: dict[str, Any] | None) -> dict[str, Any]:
        return {"seq": (current or {"seq": 0})["seq"] + 1}

    def worker(store: KeyStore) -> None:
        for _ in range(rounds):
            store.update("counter", bump)

    threads = [threading.Thread(target=worker, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_updates_of_the_file_keystore_lose_none(history: History) -> None:
    # Each store as another process would hold it: its own key, its own lock descriptor.
    stores = [file_store(history.paths, NHIDEL_PASSPHRASE=PASSPHRASE) for _ in range(3)]
    _count_concurrently(stores, 15)
    assert stores[0].read("counter") == {"seq": 45}
    assert stores[0].read("trust") == NEW_TRUST


def test_concurrent_updates_of_the_os_keyring_lose_none(paths: Paths) -> None:
    stores = [open_keystore(paths, env={}) for _ in range(3)]
    assert all(
        isinstance(store, OsKeyring) and store.lock == paths.keystore_lock for store in stores
    )
    _count_concurrently(stores, 15)
    assert stores[0].read("counter") == {"seq": 45}


def test_os_keyring_update_without_a_lock_refuses() -> None:
    with pytest.raises(RuntimeError):
        OsKeyring("nhidel-test").update(MARK, lambda _old: {"seq": 1})


# -- The same attacks, through the files and the real CLI --------------------------------------


@pytest.fixture
def cli_home(fast_kdf: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An initialised file-keystore home (set up in-process, at the low KDF cost), and the
    environment for running the real CLI on it as separate processes."""
    from helpers.support import Cli

    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    monkeypatch.setenv("NHIDEL_KEYSTORE", "file")
    monkeypatch.setenv("NHIDEL_PASSPHRASE_FILE", str(secret))
    cli = Cli()
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    env = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(secret))
    assert env["NHIDEL_HOME"] == os.environ["NHIDEL_HOME"]
    return env


CLI_SPLICES = ("delete the mark", "mix two versions", "replace with a /1 file", "truncate the file")


def test_spliced_keystore_files_make_the_cli_exit_5(cli_home: dict[str, str], paths: Paths) -> None:
    old = json.loads(paths.keystore_file.read_text())
    token = run(cli_home, "grant", "reviewer", "--scope", "repo:read:acme/api").stdout.strip()
    assert run(cli_home, "key", "rotate", "--now", "--yes").code == 0
    new = json.loads(paths.keystore_file.read_text())
    genuine = paths.keystore_file.read_bytes()
    h = History(paths, old, new, file_store(paths, NHIDEL_PASSPHRASE=PASSPHRASE))
    for splice in CLI_SPLICES:
        paths.keystore_file.write_bytes(SPLICES[splice](h))
        assert_clean_error(run(cli_home, "audit", "verify"), 5)
        verified = run(cli_home, "verify", "-", "--scope", "repo:read:acme/api", input=token)
        assert verified.code == 5, (splice, str(verified))
        paths.keystore_file.write_bytes(genuine)
    assert run(cli_home, "audit", "verify").code == 0
