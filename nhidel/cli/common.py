"""What every command needs: the clock, the paths, the keystore."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..config import Paths

if TYPE_CHECKING:
    from ..keystore import KeyStore


def now() -> int:
    return int(time.time())


def paths() -> Paths:
    return Paths.from_env()


def keystore(where: Paths) -> KeyStore:
    import getpass

    from ..keystore import open_keystore  # not for commands that only read the ledger

    return open_keystore(where, prompt=getpass.getpass)


def republish(where: Paths, store: KeyStore, *, changed: bool) -> None:
    """After revocations or a key rotation, which verifiers elsewhere learn of only from a
    newly published list: publish into the configured status directory, or say to publish.
    """
    from ..errors import NhidelError, StorageError
    from ..principal import audit_keys
    from ..publish import republish as publish_again
    from ..render import say
    from ..state import sealed_config

    if not changed:
        return
    config = sealed_config(where, audit_keys(store))  # where to publish is sealed
    if config.status_uri is None:
        return
    if config.status_dir is None:
        say(
            "verifiers on other machines see this once you publish again: "
            "nhidel publish --out DIR (or nhidel status publish --out FILE)"
        )
        return
    try:
        directory = publish_again(where, store, now=now())
    except NhidelError as exc:
        raise StorageError(
            f"done, but the status list could not be published to {config.status_dir}: "
            f"{exc.message}",
            f"fix that, then run: nhidel publish --out {config.status_dir}",
        ) from None
    say(f"published jwks.json and status.jwt to {directory}")
