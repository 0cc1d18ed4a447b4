"""Where the principal's secrets live: the OS keyring, or an encrypted file on headless machines.

A keystore holds a few named JSON entries:
- "signing": the private key, its kid, the issuer. Read only by commands that sign.
- "trust": the public keys verify accepts and the issuer they belong to. Pinning them here means
  that a process able to write nhidel's files, but not to read the keystore, cannot make verify
  trust a key of its own.
- "audit-mark": the audit log's high-water mark, moved forward only (see `KeyStore.update`).
Each command reads at most one entry (and writes the audit high-water mark), over one
connection to the keystore.

There is never a plaintext fallback: with no usable keystore, the error says how to get one.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from nhidel.errors import IntegrityError, KeystoreError, UsageError
from nhidel.fsutil import atomic_write, exclusive_lock
from nhidel.hardening import PASSPHRASE_VARIABLE, protect_secrets_in_memory, take_from_environment
from nhidel.keys.material import b64, unb64
from nhidel.keys.secret_service import (
    SecretService,
    SecretServiceUnavailable,
    keyring_would_choose_secret_service,
)
from nhidel.paths import Paths

SIGNING = "signing"
TRUST = "trust"

_FILE_FORMAT = "nhidel-keystore/2"
_OLD_FORMATS = frozenset({"nhidel-keystore/1"})
# OWASP's recommendation for scrypt (2^17, 8, 1): about 0.4 s and 128 MiB, once per command.
_SCRYPT = {"n": 2**17, "r": 8, "p": 1}
_SCRYPT_N_RANGE = frozenset(2**k for k in range(14, 21))
_KDF_FIELDS = frozenset({"name", "salt", "n", "r", "p"})
_CHECK = "check"
_SEALED = "sealed"
_DOCUMENT_FIELDS = frozenset({"format", "kdf", _CHECK, _SEALED})
_CHECK_PLAINTEXT = b"nhidel"

Change = Callable[[dict[str, Any] | None], dict[str, Any]]

NO_KEYRING_HINT = (
    "on a machine without an OS keyring use the encrypted-file keystore: "
    "export NHIDEL_KEYSTORE=file NHIDEL_PASSPHRASE_FILE=/path/to/passphrase"
)


class KeyStore(Protocol):
    """A small store of named JSON entries, kept secret and tamper-proof by its backend."""

    description: str

    def read(self, entry: str) -> dict[str, Any] | None: ...

    def write(self, entry: str, value: dict[str, Any]) -> None: ...

    def update(self, entry: str, change: Change) -> dict[str, Any]:
        """Replace `entry` by `change(its current value or None)`, atomically: no other
        process's write lands between the read and the write. Returns what was written; if
        `change` raises, nothing is written. `change` must not use the keystore itself."""
        ...


def open_keystore(
    paths: Paths,
    env: Mapping[str, str] | None = None,
    prompt: Callable[[str], str] | None = None,
) -> KeyStore:
    """The keystore `$NHIDEL_KEYSTORE` selects: `keyring` (the default) or `file`."""
    env = os.environ if env is None else env
    kind = env.get("NHIDEL_KEYSTORE", "keyring").strip().lower() or "keyring"
    if kind == "keyring":
        return OsKeyring(
            paths.keyring_service,
            direct=keyring_would_choose_secret_service(env),
            lock=paths.keystore_lock,
        )
    if kind == "file":
        return EncryptedFileKeyStore(paths, PassphraseSource(env, prompt))
    raise UsageError(
        f"unknown keystore {kind!r} in NHIDEL_KEYSTORE", "set NHIDEL_KEYSTORE to keyring or file"
    )


class OsKeyring:
    """Entries as passwords in the OS keyring (Keychain, Secret Service), via `keyring`; or,
    when keyring would pick the Secret Service anyway, straight to it (see secret_service.py)."""

    def __init__(self, service: str, *, direct: bool = False, lock: Path | None = None) -> None:
        self.service = service
        self.description = "the OS keyring"
        self._direct = SecretService(service) if direct else None
        # The keyring has no compare-and-swap: `update` (and `write`, so that a plain write
        # cannot land inside someone's update) take turns on this lock file instead.
        self.lock = lock

    def read(self, entry: str) -> dict[str, Any] | None:
        protect_secrets_in_memory()
        raw = self._get(entry)
        if raw is None:
            return None
        try:
            value: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise IntegrityError(
                f"the OS keyring entry {self.service} / {entry} is corrupt",
                "delete it with your keyring manager and run nhidel init again",
            ) from None
        return value

    def write(self, entry: str, value: dict[str, Any]) -> None:
        protect_secrets_in_memory()
        if self.lock is None:
            self._set(entry, value)
            return
        with exclusive_lock(self.lock):
            self._set(entry, value)

    def update(self, entry: str, change: Change) -> dict[str, Any]:
        if self.lock is None:
            raise RuntimeError("OsKeyring.update needs the lock path that open_keystore gives")
        protect_secrets_in_memory()
        with exclusive_lock(self.lock):
            value = change(self.read(entry))
            self._set(entry, value)
        return value

    def backend(self) -> str:
        """Which keyring holds the entries, in words (for `nhidel doctor`). Asked after a read,
        which settles whether the Secret Service answered directly."""
        if self._direct is not None:
            return "the Secret Service, its default collection"
        import keyring

        chosen = keyring.get_keyring()
        return str(getattr(chosen, "name", type(chosen).__name__))

    def _set(self, entry: str, value: dict[str, Any]) -> None:
        payload = json.dumps(value, separators=(",", ":"), sort_keys=True)
        if self._direct is not None:
            try:
                self._direct.set(entry, payload)
                return
            except SecretServiceUnavailable:
                self._direct = None  # keyring looks further, or says why there is nothing
        self._call(lambda backend: backend.set_password(self.service, entry, payload))

    def _get(self, entry: str) -> str | None:
        if self._direct is not None:
            try:
                return self._direct.get(entry)
            except SecretServiceUnavailable:
                self._direct = None
        raw: str | None = self._call(lambda backend: backend.get_password(self.service, entry))
        return raw

    def _call(self, action: Callable[[Any], Any]) -> Any:
        import keyring
        import keyring.errors

        backend = keyring.get_keyring()
        _refuse_unsafe_backend(backend)
        try:
            return action(backend)
        except keyring.errors.KeyringLocked:
            raise KeystoreError(
                "the OS keyring is locked",
                "unlock it (log in to your desktop session, or run gnome-keyring-daemon --unlock) "
                "and try again",
            ) from None
        except keyring.errors.NoKeyringError:
            raise KeystoreError("no OS keyring is available", NO_KEYRING_HINT) from None
        except keyring.errors.InitError as exc:
            raise KeystoreError(
                f"the OS keyring could not be opened ({exc})",
                "unlock or create the default keyring collection, or " + NO_KEYRING_HINT,
            ) from None
        # Backends raise their own errors (D-Bus, Keychain); every one means "unavailable".
        except Exception as exc:  # noqa: BLE001
            raise KeystoreError(
                f"the OS keyring failed: {type(exc).__name__}: {exc}", NO_KEYRING_HINT
            ) from None


def _refuse_unsafe_backend(backend: object) -> None:
    """No silent fallback: keyring's fail/null backends and plaintext stores are not keystores.

    A chainer (keyring's "try each backend") is judged by what it chains: nothing, or anything
    unsafe, is refused.
    """
    module = type(backend).__module__
    name = type(backend).__name__
    chained = getattr(backend, "backends", None) if module == "keyring.backends.chainer" else None
    if chained is not None:
        if not chained:
            raise KeystoreError("no usable OS keyring (keyring found none)", NO_KEYRING_HINT)
        for inner in chained:
            _refuse_unsafe_backend(inner)
        return
    if module in ("keyring.backends.fail", "keyring.backends.null") or "plaintext" in name.lower():
        raise KeystoreError(
            f"no usable OS keyring (keyring chose {module}.{name})", NO_KEYRING_HINT
        )


# NHIDEL_PASSPHRASE once taken out of this process's environment (see PassphraseSource): a
# second keystore opened later in the same process (the Python API) still finds it.
_passphrase_taken: bytes | None = None


class PassphraseSource:
    """The file keystore's passphrase: a file, the environment, or a terminal prompt.

    Reading it from `os.environ` takes NHIDEL_PASSPHRASE out of the process's environment
    (SPEC: no child process inherits a passphrase variable), wherever the passphrase came from.
    """

    def __init__(self, env: Mapping[str, str], prompt: Callable[[str], str] | None) -> None:
        self.env = env
        self.prompt = prompt

    def get(self, *, confirm: bool = False) -> bytes:
        global _passphrase_taken
        protect_secrets_in_memory()
        from_environment: str | None
        if self.env is os.environ:
            from_environment = take_from_environment(PASSPHRASE_VARIABLE)
            if from_environment:
                _passphrase_taken = from_environment.encode("utf-8")
            elif _passphrase_taken is not None:
                from_environment = _passphrase_taken.decode("utf-8")
        else:
            from_environment = self.env.get(PASSPHRASE_VARIABLE)
        path = self.env.get("NHIDEL_PASSPHRASE_FILE")
        if path:
            try:
                with open(path, "rb") as handle:
                    secret = handle.read().rstrip(b"\r\n")
            except OSError as exc:
                raise KeystoreError(
                    f"cannot read NHIDEL_PASSPHRASE_FILE {path}: {exc.strerror}",
                    "point NHIDEL_PASSPHRASE_FILE at a readable file holding the passphrase",
                ) from None
        elif from_environment:
            secret = from_environment.encode("utf-8")
        elif self.prompt is not None and sys.stdin.isatty():
            secret = self.prompt("Keystore passphrase: ").encode("utf-8")
            if confirm and self.prompt("Repeat passphrase: ").encode("utf-8") != secret:
                raise KeystoreError("the passphrases did not match", "run the command again")
        else:
            raise KeystoreError(
                "the file keystore needs a passphrase",
                "set NHIDEL_PASSPHRASE_FILE (or NHIDEL_PASSPHRASE), or run on a terminal",
            )
        if not secret:
            raise KeystoreError("the keystore passphrase is empty", "use a non-empty passphrase")
        return secret


class EncryptedFileKeyStore:
    """All entries sealed together, as one AES-256-GCM ciphertext, under a key derived by scrypt
    from a passphrase (format nhidel-keystore/2).

    The file: {"format", "kdf", "check", "sealed"}.
    - "sealed" holds {"generation": N, "entries": {name: value}}, with a fresh random 96-bit
      nonce on every write; its associated data is the format and the canonical JSON of "kdf".
      Someone who can write the file but knows no passphrase cannot delete one entry, replay
      an older version of one (a "trust" from before `key rotate --now`, an older
      "audit-mark"), or mix entries from different versions: any of that fails the tag, and
      every entry is refused (IntegrityError, exit 5). Nor can they swap in a weaker "kdf".
    - "check" seals a constant under the same key, its associated data the format and the
      salt: a wrong passphrase fails it (KeystoreError, exit 4) before "sealed" is looked at,
      so a typo is never reported as tampering.
    What remains possible is putting back an older copy of the whole file: it was genuine
    once. Against that, the audit log's mark (kept here too, see audit/writer.py) and the
    anchors the README names; a long-running process also refuses a generation lower than one
    it has already seen.
    """

    def __init__(self, paths: Paths, passphrase: PassphraseSource) -> None:
        self.path = paths.keystore_file
        self.lock = paths.keystore_lock
        self.passphrase = passphrase
        self.description = f"the encrypted keystore {self.path}"
        self._key: bytes | None = None
        self._key_kdf: str | None = None  # the canonical "kdf" the cached key came from
        self._generation = -1  # the highest generation this object has read or written

    def read(self, entry: str) -> dict[str, Any] | None:
        protect_secrets_in_memory()
        # Read again every time: another process may have written since.
        document = self._load()
        if document is None:
            self._refuse_vanished()
            return None
        entries = self._open_entries(document, self._unlock(document))
        value: dict[str, Any] | None = entries.get(entry)
        return value

    def write(self, entry: str, value: dict[str, Any]) -> None:
        self.update(entry, lambda _current: value)

    def update(self, entry: str, change: Change) -> dict[str, Any]:
        protect_secrets_in_memory()
        with exclusive_lock(self.lock):
            # The whole document is read again inside the lock: a write by another process
            # between an earlier read and now is kept, never overwritten.
            document = self._load()
            if document is None:
                self._refuse_vanished()
                document = self._new_document()
                key = self._unlock(document)
                entries: dict[str, Any] = {}
            else:
                key = self._unlock(document)
                entries = self._open_entries(document, key)
            value = change(entries.get(entry))
            entries[entry] = value
            generation = self._generation + 1
            document[_SEALED] = _seal(
                key,
                _entries_aad(document["kdf"]),
                _dumps({"generation": generation, "entries": entries}),
            )
            atomic_write(self.path, json.dumps(document, indent=1, sort_keys=True).encode())
            self._generation = generation
        return value

    def _new_document(self) -> dict[str, Any]:
        kdf = {"name": "scrypt", "salt": b64(os.urandom(16)), **_SCRYPT}
        self._key = _derive(self.passphrase.get(confirm=True), kdf)
        self._key_kdf = _dumps(kdf).decode()
        return {
            "format": _FILE_FORMAT,
            "kdf": kdf,
            _CHECK: _seal(self._key, _check_aad(kdf), _CHECK_PLAINTEXT),
        }

    def _refuse_vanished(self) -> None:
        """A file this object has read is gone: refuse, rather than start an empty keystore
        (which would drop the audit mark and the pinned keys with no trace)."""
        if self._generation >= 0:
            raise IntegrityError(
                f"{self.path} was removed while nhidel was using it",
                "restore it from a backup",
            )

    def _load(self) -> dict[str, Any] | None:
        try:
            # O_NOFOLLOW and O_NONBLOCK: a link or a FIFO planted at the name is refused below,
            # never followed or waited on.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise IntegrityError(
                    f"{self.path} is a symbolic link", "replace it with the keystore file itself"
                ) from None
            raise KeystoreError(
                f"cannot read {self.path}: {exc.strerror}", "check its permissions"
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IntegrityError(
                    f"{self.path} is not a regular file", "restore the keystore file from a backup"
                )
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        except OSError as exc:
            raise KeystoreError(
                f"cannot read {self.path}: {exc.strerror}", "check the disk"
            ) from None
        finally:
            os.close(fd)
        raw = b"".join(chunks)
        try:
            document: Any = json.loads(raw)
        except ValueError:
            document = None
        version = document.get("format") if isinstance(document, dict) else None
        if version in _OLD_FORMATS:
            raise IntegrityError(
                f"{self.path} is an {version} keystore, which this nhidel no longer opens "
                "(it sealed each entry on its own, so entries could be removed or replayed)",
                "move it aside and run nhidel init to create a new keystore",
            )
        if not _well_formed(document):
            raise IntegrityError(
                f"{self.path} is not an nhidel keystore or is corrupt",
                "restore it from a backup",
            )
        loaded: dict[str, Any] = document
        return loaded

    def _unlock(self, document: dict[str, Any]) -> bytes:
        kdf = _dumps(document["kdf"]).decode()
        if self._key is not None:
            # Known good: a "kdf" or "check" that changed since was changed by someone else.
            if kdf != self._key_kdf or not _opens(
                self._key, _check_aad(document["kdf"]), document[_CHECK]
            ):
                raise IntegrityError(
                    f"{self.path}: its key settings were altered while nhidel was using it",
                    "restore the keystore file from a backup",
                )
            return self._key
        key = _derive(self.passphrase.get(), document["kdf"])
        if not _opens(key, _check_aad(document["kdf"]), document[_CHECK]):
            if _opens_entries(key, document):
                # The right key after all: only "check" was changed.
                raise IntegrityError(
                    f"{self.path}: its passphrase check was altered",
                    "restore the keystore file from a backup",
                )
            # A "kdf" or "check" replaced by someone else gets this too: without the right key,
            # a different salt and a mistyped passphrase look the same.
            raise KeystoreError(
                f"wrong passphrase for {self.path} (or its key settings were replaced)",
                "check NHIDEL_PASSPHRASE_FILE or NHIDEL_PASSPHRASE",
            )
        self._key, self._key_kdf = key, kdf
        return key

    def _open_entries(self, document: dict[str, Any], key: bytes) -> dict[str, Any]:
        try:
            plaintext = _open(key, _entries_aad(document["kdf"]), document[_SEALED])
            state = json.loads(plaintext)
            generation, entries = state["generation"], state["entries"]
            valid = (
                type(generation) is int
                and generation >= 0
                and isinstance(entries, dict)
                and all(isinstance(value, dict) for value in entries.values())
            )
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            raise IntegrityError(
                f"{self.path}: its entries were altered, removed or spliced from another copy",
                "restore the keystore file from a backup",
            )
        if generation < self._generation:
            raise IntegrityError(
                f"{self.path} went back to an older copy while nhidel was using it",
                "find out who replaced it; restore the newest copy",
            )
        self._generation = generation
        opened: dict[str, Any] = entries
        return opened


def _well_formed(document: Any) -> bool:
    def sealed(part: Any) -> bool:
        return (
            isinstance(part, dict)
            and set(part) == {"nonce", "ciphertext"}
            and all(isinstance(value, str) for value in part.values())
        )

    return (
        isinstance(document, dict)
        and document.get("format") == _FILE_FORMAT
        and set(document) == _DOCUMENT_FIELDS
        and isinstance(document["kdf"], dict)
        and sealed(document[_CHECK])
        and sealed(document[_SEALED])
    )


def _dumps(value: Any) -> bytes:
    """Canonical JSON: what is sealed, and what the associated data binds."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()


def _check_aad(kdf: dict[str, Any]) -> bytes:
    return f"{_FILE_FORMAT} {_CHECK} ".encode() + str(kdf.get("salt")).encode()


def _entries_aad(kdf: dict[str, Any]) -> bytes:
    return f"{_FILE_FORMAT} {_SEALED} ".encode() + _dumps(kdf)


def _seal(key: bytes, aad: bytes, plaintext: bytes) -> dict[str, str]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    # A random nonce per write: the key stays the same for the file's life, and 2^-32 is
    # reached only after some 2^32 writes, far beyond any keystore's.
    nonce = os.urandom(12)
    return {"nonce": b64(nonce), "ciphertext": b64(AESGCM(key).encrypt(nonce, plaintext, aad))}


def _open(key: bytes, aad: bytes, sealed: dict[str, str]) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(key).decrypt(unb64(sealed["nonce"]), unb64(sealed["ciphertext"]), aad)
    except (InvalidTag, KeyError, TypeError, ValueError) as exc:
        raise ValueError("cannot open") from exc


def _opens_entries(key: bytes, document: dict[str, Any]) -> bool:
    try:
        _open(key, _entries_aad(document["kdf"]), document[_SEALED])
    except ValueError:
        return False
    return True


def _opens(key: bytes, aad: bytes, sealed: dict[str, str]) -> bool:
    try:
        return _open(key, aad, sealed) == _CHECK_PLAINTEXT
    except ValueError:
        return False


def _derive(passphrase: bytes, kdf: dict[str, Any]) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    try:
        n, r, p, salt = kdf["n"], kdf["r"], kdf["p"], unb64(kdf["salt"])
        # Bounds keep a tampered file from asking for gigabytes, or for a trivially weak key.
        valid = (
            set(kdf) == _KDF_FIELDS
            and kdf["name"] == "scrypt"
            and all(type(value) is int for value in (n, r, p))
            and n in _SCRYPT_N_RANGE
            and r == 8
            and p in (1, 2, 3, 4)
            and len(salt) >= 16
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise IntegrityError(
            "the keystore's key-derivation settings are corrupt", "restore it from a backup"
        )
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)
