"""Where nhidel keeps its files, as `Path`s, in the directories `locations.directories` names
(shell completion reads that module, not this one: `pathlib` would cost it at every TAB)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from nhidel.locations import CONFIG_FILE, LEDGER_FILE, directories


class Paths(NamedTuple):
    """Every file nhidel keeps. `$NHIDEL_HOME` puts them all in one directory."""

    config_dir: Path
    state_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Paths:
        """The directories `env` (default: the process's environment) names, as
        `locations.directories` says."""
        config, state = directories(env)
        return cls(Path(config), Path(state))

    @property
    def config_file(self) -> Path:
        return self.config_dir / CONFIG_FILE

    @property
    def config_lock(self) -> Path:
        return self.config_dir / "config.lock"

    @property
    def ledger_file(self) -> Path:
        return self.state_dir / LEDGER_FILE

    @property
    def audit_file(self) -> Path:
        return self.state_dir / "audit.jsonl"

    @property
    def audit_lock(self) -> Path:
        return self.state_dir / "audit.lock"

    @property
    def keystore_file(self) -> Path:
        return self.state_dir / "keystore.json"

    @property
    def keystore_lock(self) -> Path:
        return self.state_dir / "keystore.lock"

    @property
    def init_lock(self) -> Path:
        return self.state_dir / "init.lock"

    @property
    def runs_dir(self) -> Path:
        """Markers of grants bound to running processes (`nhidel exec`), one file each."""
        return self.state_dir / "runs"

    @property
    def requests_dir(self) -> Path:
        """Grant requests written by `nhidel request` without the daemon, one file each, until
        a keystore holder takes them in (nhidel.actions.grant_requests)."""
        return self.state_dir / "requests"

    @property
    def requests_lock(self) -> Path:
        """Held while request files are taken in, so two keystore holders never race for one."""
        return self.state_dir / "requests.lock"

    @property
    def keyring_service(self) -> str:
        """The OS keyring service name: one per nhidel home, so homes never share keys."""
        return f"nhidel:{self.config_dir}"


def runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where `nhidel proxy` keeps its socket and its state file: `$XDG_RUNTIME_DIR/nhidel`
    (the user's own, cleared at logout), else `nhidel-UID` in the temp dir. Callers that
    create it make it 0700 (`fsutil.ensure_private_dir`); readers only look."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute() and Path(runtime).is_dir():
        return Path(runtime) / "nhidel"
    import tempfile  # here: most commands never need it

    return Path(tempfile.gettempdir()) / f"nhidel-{os.getuid()}"
