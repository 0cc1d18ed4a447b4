"""The Secret Service (the OS keyring on Linux), spoken to over one D-Bus connection per command.

`keyring` finds its backend by importing every backend it ships (the macOS one too) and asking
each whether it is usable: about 110 ms here before the first read. Then it opens a new D-Bus
connection and a new encrypted session (a Diffie-Hellman exchange) for every read and write. A
grant reads the signing entry and writes the audit high-water mark, so that was two of each.

When keyring would choose the Secret Service anyway, nhidel asks it directly, through
`secretstorage` (the library keyring's own backend uses): one connection and one session for the
whole command. Items are found and stored exactly as keyring's Secret Service backend does (same
attributes, same label, the default collection), so either path reads what the other wrote.
Whenever the choice is the user's (PYTHON_KEYRING_BACKEND, a keyringrc.cfg, KEYRING_PROPERTY_*
settings, a backend set by the program) or might differ (not Linux, a KDE desktop, no session
bus), nhidel goes through keyring.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from nhidel.errors import KeystoreError

# What keyring's Secret Service backend files its items under.
_APPLICATION = "Python keyring library"


def keyring_would_choose_secret_service(env: Mapping[str, str]) -> bool:
    """Whether keyring, left to itself, would pick the Secret Service on this machine."""
    if not sys.platform.startswith("linux") or env.get("PYTHON_KEYRING_BACKEND"):
        return False
    if any(name.startswith("KEYRING_PROPERTY_") for name in env):
        return False  # a collection, scheme or app id of the user's: keyring applies them
    if not env.get("DBUS_SESSION_BUS_ADDRESS"):
        return False
    if "KDE" in env.get("XDG_CURRENT_DESKTOP", "").upper().split(":"):
        return False  # keyring ranks KWallet first on KDE
    config_home = env.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    if os.path.exists(os.path.join(config_home, "python_keyring", "keyringrc.cfg")):
        return False
    chosen = sys.modules.get("keyring.core")
    return getattr(chosen, "_keyring_backend", None) is None  # none set by this program


class SecretServiceUnavailable(Exception):  # noqa: N818 - a signal to use keyring instead
    """No Secret Service answers on the session bus."""


class SecretService:
    """Named entries as Secret Service items, over one connection opened on first use."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._collection: Any = None

    def get(self, entry: str) -> str | None:
        collection = self._open()
        secret: str | None = self._guarded(lambda: _secret_of(collection, self._query(entry)))
        return secret

    def set(self, entry: str, secret: str) -> None:
        collection = self._open()
        attributes = {**self._query(entry), "application": _APPLICATION}
        label = f"Password for '{entry}' on '{self.service}'"
        self._guarded(lambda: collection.create_item(label, attributes, secret, replace=True))

    def _query(self, entry: str) -> dict[str, str]:
        return {"service": self.service, "username": entry}

    def _open(self) -> Any:
        if self._collection is not None:
            return self._collection
        import secretstorage
        from secretstorage.exceptions import SecretStorageException
        from secretstorage.util import open_session

        try:
            connection = secretstorage.dbus_init()
        except (SecretStorageException, OSError, ValueError) as exc:  # no bus, or a dead one
            raise SecretServiceUnavailable(str(exc)) from None

        def default_collection() -> Any:
            try:
                collection = secretstorage.get_default_collection(connection)
                # One encrypted session for every read and write (finding it opens none).
                collection.session = open_session(connection)
            except (SecretStorageException, OSError) as exc:
                raise SecretServiceUnavailable(str(exc)) from None
            _unlocked(collection)
            return collection

        try:
            collection = self._guarded(default_collection)
        except BaseException:
            connection.close()
            raise
        self._collection = collection
        return collection

    @staticmethod
    def _guarded(action: Any) -> Any:
        from secretstorage.exceptions import LockedException

        try:
            return action()
        except (LockedException, _Locked):
            raise KeystoreError(
                "the OS keyring is locked",
                "unlock it (log in to your desktop session, or run gnome-keyring-daemon "
                "--unlock) and try again",
            ) from None
        except (KeystoreError, SecretServiceUnavailable):
            raise
        # D-Bus and daemon failures come in many types; every one means "unavailable".
        except Exception as exc:  # noqa: BLE001
            raise KeystoreError(
                f"the OS keyring failed: {type(exc).__name__}: {exc}",
                "check that the Secret Service (gnome-keyring, KeePassXC) is running",
            ) from None


class _Locked(Exception):  # noqa: N818
    pass


def _unlocked(collection: Any) -> None:
    if collection.is_locked():
        collection.unlock()
        if collection.is_locked():  # the prompt was dismissed, or none could be shown
            raise _Locked


def _secret_of(collection: Any, query: dict[str, str]) -> str | None:
    for item in collection.search_items(query):
        if item.is_locked():
            item.unlock()
            if item.is_locked():
                raise _Locked
        secret: bytes = item.get_secret()
        return secret.decode("utf-8")
    return None
