"""Where nhidel's directories are, as strings, and the names of the files completion reads there.

It imports `os` and `sys` only, because shell completion finds the ledger and config.toml with
it at every TAB, and `pathlib` would bring `re`, `fnmatch` and `urllib.parse` with it.
`paths.Paths` is built on `directories`, so every command and completion find the same files.
"""

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping

CONFIG_FILE = "config.toml"
LEDGER_FILE = "ledger.db"


def directories(env: "Mapping[str, str] | None" = None) -> tuple[str, str]:
    """The config and state directories `env` (default: the process's environment) names:
    `$NHIDEL_HOME` for both; on macOS, ~/Library/Application Support/nhidel for both;
    elsewhere nhidel under the XDG config and state homes."""
    env = os.environ if env is None else env
    home = env.get("NHIDEL_HOME")
    if home:
        home = _expand_user(home)
        home = home if os.path.isabs(home) else os.path.join(os.getcwd(), home)
        return home, home
    user_home = env.get("HOME") or _expand_user("~")
    if sys.platform == "darwin":
        base = os.path.join(user_home, "Library", "Application Support", "nhidel")
        return base, base
    config = _xdg(env, "XDG_CONFIG_HOME", os.path.join(user_home, ".config"))
    state = _xdg(env, "XDG_STATE_HOME", os.path.join(user_home, ".local", "state"))
    return os.path.join(config, "nhidel"), os.path.join(state, "nhidel")


def _expand_user(path: str) -> str:
    """`~` and `~user` expanded as `pathlib.Path.expanduser` does: a home that cannot be found
    is an error, never a directory named `~`."""
    if not path.startswith("~"):
        return path
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):
        raise RuntimeError("Could not determine home directory.")
    return expanded


def _xdg(env: "Mapping[str, str]", name: str, default: str) -> str:
    """An XDG base directory; the spec says to ignore relative paths."""
    value = env.get(name)
    return value if value and os.path.isabs(value) else default
