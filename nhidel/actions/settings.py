"""`nhidel config set|unset`: the status list settings, sealed like the rest of config.toml.

`status-uri` goes into every new grant (where verifiers elsewhere learn revocations) and
`status-dir` is where revocations publish: an agent that could point either elsewhere could hide
revocations from remote verifiers, or have nhidel write into a directory of its choosing. So
changing them needs the keystore and is a sealed `config.updated` record (nhidel.integrity.state).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nhidel.audit import AuditKeys, event
from nhidel.config import Config, check_status_dir, check_status_uri
from nhidel.fsutil import exclusive_lock
from nhidel.integrity import state
from nhidel.keys.keystore import KeyStore
from nhidel.ledger.store import Ledger
from nhidel.paths import Paths


def set_status_uri(paths: Paths, keystore: KeyStore, uri: str | None, *, now: int) -> Config:
    """Set (or, with None, clear) the status list URI that new grants carry."""
    checked = None if uri is None else check_status_uri(uri)
    return _change(paths, keystore, "status_uri", checked, now=now)


def set_status_dir(paths: Paths, keystore: KeyStore, directory: str | None, *, now: int) -> Config:
    """Set (or, with None, clear) the directory revocations republish into by themselves."""
    checked = None
    if directory is not None:
        checked = check_status_dir(str(Path(directory).expanduser().absolute()))
    return _change(paths, keystore, "status_dir", checked, now=now)


def _change(paths: Paths, keystore: KeyStore, name: str, value: str | None, *, now: int) -> Config:
    keys = AuditKeys.of(keystore)
    with exclusive_lock(paths.config_lock), Ledger(paths) as ledger:
        with state.change(paths, keys, ledger, now=now) as step:
            before = step.config()
            config = (replace(before, status_uri=value) if name == "status_uri"
                      else replace(before, status_dir=value))  # fmt: skip
            if config != before:
                step.write([event("config.updated", setting=name, value=value,
                                  config_sha256=state.config_digest(config))])  # fmt: skip
                step.save_config(config)
    return config
