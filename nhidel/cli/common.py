"""What every command needs: the clock, the paths, the keystore."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nhidel.paths import Paths

if TYPE_CHECKING:
    from nhidel.keys.keystore import KeyStore


def now() -> int:
    return int(time.time())


def paths() -> Paths:
    return Paths.from_env()


def keystore(where: Paths) -> KeyStore:
    import getpass

    from nhidel.keys.keystore import open_keystore  # not for commands that only read the ledger

    return open_keystore(where, prompt=getpass.getpass)


def republish(where: Paths, store: KeyStore, *, changed: bool) -> None:
    """After revocations or a key rotation, which verifiers elsewhere learn of only from a
    newly published list: publish into the configured status directory, or say to publish.
    """
    from nhidel.actions.publish import republish as publish_again
    from nhidel.audit import AuditKeys
    from nhidel.cli.render import say
    from nhidel.errors import NhidelError, StorageError
    from nhidel.integrity.state import sealed_config

    if not changed:
        return
    config = sealed_config(where, AuditKeys.of(store))  # where to publish is sealed
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
