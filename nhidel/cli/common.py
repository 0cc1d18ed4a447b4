"""What every command needs: the clock, the paths, the keystore."""

from __future__ import annotations

import getpass
import time

from ..config import Paths
from ..keystore import KeyStore, open_keystore


def now() -> int:
    return int(time.time())


def paths() -> Paths:
    return Paths.from_env()


def keystore(where: Paths) -> KeyStore:
    return open_keystore(where, prompt=getpass.getpass)
