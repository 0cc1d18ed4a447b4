"""Where the principal's secrets live: the OS keyring, or an encrypted file on headless machines.

A keystore holds a few named JSON entries:
- "signing": the private key, its kid, the issuer. Read only by commands that sign.
- "trust": the public keys verify accepts and the issuer they belong to. Pinning them here means
  that a process able to write nhidel's files, but not to read the keystore, cannot make verify
  trust a key of its own.
Each command reads at most one entry (and writes the audit high-water mark), over one
connection to the keystore.

There is never a plaintext fallback: with no usable keystore, the error says how to get one.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .config import Paths
from .errors import IntegrityError, KeystoreError, UsageError
from .fsutil import atomic_write, exclusive_lock
from .keys import b64, unb64
from .secret_service import (
    SecretService,
    SecretServiceUnavailable,
    keyring_would_choose_secret_service,
)

SIGNING = "signing"
TRUST = "trust"

_FILE_FORMAT = "nhidel-keystore/1"
# OWASP's recommendation for scrypt (2^17, 8, 1): about 0.4 s and 128 MiB, once per command.
_SCRYPT = {"n": 2**17, "r": 8, "p": 1}
_SCRYPT_N_RANGE = frozenset(2**k for k in range(14, 21))
_CHECK = "check"

NO_KEYRING_HINT = (
    "on a machine without an OS keyring use the encrypted-file keystore: "
    "export NHIDEL_KEYSTORE=file NHIDEL_PASSPHRASE_FILE=/path/to/passphrase"
)


class KeyStore(Protocol):
    """A small store of named JSON entries, kept secret and tamper-proof by its backend."""

    description: str

    def read(self, entry: str) -> dict[str, Any] | None: ...

    def write(self, entry: str, value: dict[str, Any]) -> None: ...


def open_keystore(
    paths: Paths,
    env: Mapping[str, str] | None = None,
    prompt: Callable[[str], str] | None = None,
) -> KeyStore:
    """The keystore `$NHIDEL_KEYSTORE` selects: `keyring` (the default) or `file`."""
    env = os.environ if env is None else env
    kind = env.get("NHIDEL_KEYSTORE", "keyring").strip().lower() or "keyring"
    if kind == "keyring":
        return OsKeyring(paths.keyring_service, direct=keyring_would_choose_secret_service(env))
    if kind == "file":
        return EncryptedFileKeyStore(paths, PassphraseSource(env, prompt))
    raise UsageError(
        f"unknown keystore {kind!r} in NHIDEL_KEYSTORE", "set NHIDEL_KEYSTORE to keyring or file"
    )


class OsKeyring:
    """Entries as passwords in the OS keyring (Keychain, Secret Service), via `keyring`; or,
    when keyring would pick the Secret Service anyway, straight to it (see secret_service.py)."""

    def __init__(self, service: str, *, direct: bool = False) -> None:
        self.service = service
        self.description = "the OS keyring"
        self._direct = SecretService(service) if direct else None

    def read(self, entry: str) -> dict[str, Any] | None:
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


class PassphraseSource:
    """The file keystore's passphrase: a file, the environment, or a terminal prompt."""

    def __init__(self, env: Mapping[str, str], prompt: Callable[[str], str] | None) -> None:
        self.env = env
        self.prompt = prompt

    def get(self, *, confirm: bool = False) -> bytes:
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
        elif self.env.get("NHIDEL_PASSPHRASE"):
            secret = self.env["NHIDEL_PASSPHRASE"].encode("utf-8")
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
    """Entries sealed with AES-256-GCM under a key derived by scrypt from a passphrase.

    The entry name is the AEAD's associated data, so entries cannot be swapped. A fixed "check"
    entry tells a wrong passphrase apart from a tampered entry.
    """

    def __init__(self, paths: Paths, passphrase: PassphraseSource) -> None:
        self.path = paths.keystore_file
        self.lock = paths.keystore_lock
        self.passphrase = passphrase
        self.description = f"the encrypted keystore {self.path}"
        self._key: bytes | None = None

    def read(self, entry: str) -> dict[str, Any] | None:
        document = self._load()
        if document is None or entry not in document["entries"]:
            return None
        key = self._unlock(document)
        try:
            value: dict[str, Any] = json.loads(self._open(key, entry, document["entries"][entry]))
        except ValueError:
            raise IntegrityError(
                f"{self.path}: the {entry!r} entry was altered",
                "restore the keystore file from a backup",
            ) from None
        return value

    def write(self, entry: str, value: dict[str, Any]) -> None:
        with exclusive_lock(self.lock):
            document = self._load() or self._new_document()
            key = self._unlock(document)
            plaintext = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
            document["entries"][entry] = _seal(key, entry, plaintext)
            atomic_write(self.path, json.dumps(document, indent=1, sort_keys=True).encode())

    def _new_document(self) -> dict[str, Any]:
        kdf = {"name": "scrypt", "salt": b64(os.urandom(16)), **_SCRYPT}
        self._key = _derive(self.passphrase.get(confirm=True), kdf)
        return {
            "format": _FILE_FORMAT,
            "kdf": kdf,
            "entries": {_CHECK: _seal(self._key, _CHECK, b"nhidel")},
        }

    def _load(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeystoreError(
                f"cannot read {self.path}: {exc.strerror}", "check its permissions"
            ) from None
        try:
            document: dict[str, Any] = json.loads(raw)
            valid = (
                document.get("format") == _FILE_FORMAT
                and isinstance(document.get("kdf"), dict)
                and _CHECK in document["entries"]
            )
            if not valid:
                raise ValueError("unknown format")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise IntegrityError(
                f"{self.path} is not an nhidel keystore or is corrupt",
                "restore it from a backup",
            ) from None
        return document

    def _unlock(self, document: dict[str, Any]) -> bytes:
        if self._key is None:
            key = _derive(self.passphrase.get(), document["kdf"])
            try:
                self._open(key, _CHECK, document["entries"][_CHECK])
            except ValueError:
                raise KeystoreError(
                    f"wrong passphrase for {self.path}",
                    "check NHIDEL_PASSPHRASE_FILE or NHIDEL_PASSPHRASE",
                ) from None
            self._key = key
        return self._key

    @staticmethod
    def _open(key: bytes, entry: str, sealed: dict[str, str]) -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            return AESGCM(key).decrypt(
                unb64(sealed["nonce"]), unb64(sealed["ciphertext"]), _aad(entry)
            )
        except (InvalidTag, KeyError, TypeError, ValueError) as exc:
            raise ValueError("cannot open entry") from exc


def _seal(key: bytes, entry: str, plaintext: bytes) -> dict[str, str]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return {
        "nonce": b64(nonce),
        "ciphertext": b64(AESGCM(key).encrypt(nonce, plaintext, _aad(entry))),
    }


def _derive(passphrase: bytes, kdf: dict[str, Any]) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    try:
        n, r, p, salt = kdf["n"], kdf["r"], kdf["p"], unb64(kdf["salt"])
        # Bounds keep a tampered file from asking for gigabytes, or for a trivially weak key.
        valid = (
            kdf["name"] == "scrypt"
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


def _aad(entry: str) -> bytes:
    return f"{_FILE_FORMAT}:{entry}".encode()
