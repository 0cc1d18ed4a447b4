"""Where nhidel keeps its files. Standard library only: shell completion reads it at every <TAB>.

`Paths` is a NamedTuple rather than a dataclass because importing `dataclasses` (and the
`inspect` it loads) would cost completion a few milliseconds at every TAB.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple


class Paths(NamedTuple):
    """Every file nhidel keeps. `$NHIDEL_HOME` puts them all in one directory."""

    config_dir: Path
    state_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Paths:
        env = os.environ if env is None else env
        if env.get("NHIDEL_HOME"):
            home = Path(env["NHIDEL_HOME"]).expanduser().absolute()
            return cls(home, home)
        user_home = Path(env.get("HOME") or Path.home())
        if sys.platform == "darwin":
            base = user_home / "Library" / "Application Support" / "nhidel"
            return cls(base, base)
        config = _xdg(env, "XDG_CONFIG_HOME", user_home / ".config") / "nhidel"
        state = _xdg(env, "XDG_STATE_HOME", user_home / ".local" / "state") / "nhidel"
        return cls(config, state)

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def config_lock(self) -> Path:
        return self.config_dir / "config.lock"

    @property
    def ledger_file(self) -> Path:
        return self.state_dir / "ledger.db"

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
    import tempfile  # here: completion never needs it

    return Path(tempfile.gettempdir()) / f"nhidel-{os.getuid()}"


def _xdg(env: Mapping[str, str], name: str, default: Path) -> Path:
    """An XDG base directory; the spec says to ignore relative paths."""
    value = env.get(name)
    return Path(value) if value and Path(value).is_absolute() else default
