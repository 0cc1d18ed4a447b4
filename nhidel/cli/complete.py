"""Shell completion on every TAB, without Typer: the static command table and the live ledger.

The scripts in completions/ run `_NHIDEL_COMPLETE=<shell> nhidel WORD...`, passing the words
after `nhidel` up to the one being completed (the last, possibly empty). This module answers
from `command_table` (generated from the Typer app), the ledger (read-only SQLite) and, only
for agent names and ceilings, config.toml. It imports nothing heavy: no Typer, Rich,
cryptography, PyJWT or keyring, and none of nhidel's core, so a TAB costs little more than
starting Python. Whatever goes wrong, it prints nothing rather than an error into a prompt.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .command_table import COMMANDS, EVENTS

SHELLS = ("bash", "zsh", "fish")
# Enough for any menu a person reads; typing more of the id narrows the query itself.
MAX_GRANTS = 200
MAX_DESCRIPTION = 72
# Bash splits words at these (COMP_WORDBREAKS) and replaces only the text after the last one.
_BASH_BREAKS = ":="

# Which values come from nhidel's own state: (command path, option or "" for arguments).
_SOURCES = {
    ("revoke", ""): "grants",
    ("show", ""): "grants",
    ("revoke", "--agent"): "agents",
    ("list", "--agent"): "agents",
    ("grant", ""): "agents",
    ("agent show", ""): "agents",
    ("agent remove", ""): "agents",
    ("audit tail", "--agent"): "agents",
    ("grant", "--scope"): "scopes",
    ("audit tail", "--event"): "events",
}

Candidate = tuple[str, str]  # (value, description)


def run(shell: str, words: Sequence[str], *, now: int | None = None) -> int:
    """Print the candidates for the last of `words` in `shell`'s format; always exit 0."""
    words = _join_bash_breaks(words) if shell == "bash" else list(words)
    try:
        found = candidates(words, now=int(time.time()) if now is None else now)
    except Exception:  # a corrupt ledger or config must not spill a traceback into a prompt
        found = []
    incomplete = words[-1] if words else ""
    sys.stdout.write("".join(_format(shell, value, about, incomplete) for value, about in found))
    return 0


def candidates(words: Sequence[str], *, now: int) -> list[Candidate]:
    """What may follow: `words` are those after `nhidel`, the last one being typed."""
    *typed, incomplete = words or [""]
    path, positionals, pending_option, spec = _walk(typed)
    if pending_option is not None:
        found = _option_values(path, pending_option, spec, positionals, incomplete, now)
    elif incomplete.startswith("--") and "=" in incomplete:
        name, _, value = incomplete.partition("=")
        found = [
            (f"{name}={choice}", description)
            for choice, description in _option_values(path, name, spec, positionals, value, now)
        ]
    elif incomplete.startswith("-"):
        found = [(name, description) for name, (_, description, _) in spec["options"].items()]
    elif spec["commands"]:
        found = [(name, COMMANDS[_child(path, name)]["help"]) for name in spec["commands"]]
    elif spec["arguments"] == -1 or len(positionals) < spec["arguments"]:
        found = _dynamic(_SOURCES.get((path, "")), positionals, incomplete, now)
        found = [c for c in found if c[0] not in positionals]
    else:
        found = []
    return [candidate for candidate in found if candidate[0].startswith(incomplete)]


def _walk(typed: Sequence[str]) -> tuple[str, list[str], str | None, dict[str, Any]]:
    """Follow subcommands and options: the command path, its arguments so far, and the option
    still awaiting its value."""
    path = ""
    spec = COMMANDS[path]
    positionals: list[str] = []
    pending: str | None = None
    for word in typed:
        if pending is not None:
            pending = None
        elif word.startswith("-") and word != "-":
            option = spec["options"].get(word.partition("=")[0])
            if option is not None and option[0] and "=" not in word:
                pending = word
        elif spec["commands"] and word in spec["commands"] and not positionals:
            path = _child(path, word)
            spec = COMMANDS[path]
        else:
            positionals.append(word)
    return path, positionals, pending, spec


def _child(path: str, name: str) -> str:
    return f"{path} {name}".strip()


def _option_values(
    path: str, option: str, spec: dict[str, Any], positionals: list[str], incomplete: str, now: int
) -> list[Candidate]:
    known = spec["options"].get(option)
    if known is None:
        return []
    choices: tuple[str, ...] = known[2]
    if choices:
        return [(choice, "") for choice in choices]
    return _dynamic(_SOURCES.get((path, option)), positionals, incomplete, now)


def _dynamic(
    source: str | None, positionals: list[str], incomplete: str, now: int
) -> list[Candidate]:
    if source == "grants":
        return _grants(incomplete, now)
    if source == "agents":
        return [(name, _clean(" ".join(allow))) for name, allow in _agents().items()]
    if source == "scopes":
        agent = positionals[0] if positionals else ""
        return [(scope, f"allowed for {_clean(agent)}") for scope in _agents().get(agent, [])]
    if source == "events":
        return [(name, "") for name in EVENTS]
    return []


def _grants(incomplete: str, now: int) -> list[Candidate]:
    """Live grants (not revoked, expired or used up), soonest to expire first."""
    import sqlite3

    ledger = _state_dir() / "ledger.db"
    if not ledger.is_file():
        return []
    sql = (
        "SELECT id, agent, scope, not_before, expires_at FROM grants "
        "WHERE revoked_at IS NULL AND expires_at > ? AND (max_uses IS NULL OR uses < max_uses)"
    )
    params: list[object] = [now]
    prefix = incomplete.strip().lower()
    if prefix:  # only then: with no prefix, the expiry index serves ORDER BY and LIMIT alone
        sql += " AND id >= ? AND id < ?"
        params += [prefix, prefix + "\U0010ffff"]
    uri = f"{ledger.as_uri()}?mode=ro"
    with _closing(sqlite3.connect(uri, uri=True, timeout=0.5)) as db:
        rows = db.execute(f"{sql} ORDER BY expires_at LIMIT {MAX_GRANTS}", params).fetchall()
    found = []
    for grant_id, agent, scope, not_before, expires_at in rows:
        when = f"expires {_relative(expires_at, now)}"
        if not_before > now:
            when = f"pending, starts {_relative(not_before, now)}, {when}"
        found.append((str(grant_id), _clean(f"{agent} {scope}, {when}")))
    return found


class _closing:
    """sqlite3's own context manager commits; this one closes."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def __enter__(self) -> Any:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


def _agents() -> dict[str, list[str]]:
    """Registered agents and their ceilings, from config.toml (read only when needed)."""
    import tomllib

    try:
        data = tomllib.loads((_config_dir() / "config.toml").read_text("utf-8"))
    except FileNotFoundError:
        return {}
    agents = data.get("agents", {})
    return {str(name): [str(s) for s in spec.get("allow", [])] for name, spec in agents.items()}


def _relative(timestamp: int, now: int) -> str:
    from ..timefmt import relative

    return relative(int(timestamp), now=now)


def _config_dir() -> Path:
    return _dirs()[0]


def _state_dir() -> Path:
    return _dirs()[1]


def _dirs() -> tuple[Path, Path]:
    """The same directories as `nhidel.config.Paths.from_env`, without importing it (a test
    keeps the two in step)."""
    env = os.environ
    if env.get("NHIDEL_HOME"):
        home = Path(env["NHIDEL_HOME"]).expanduser().absolute()
        return home, home
    user_home = Path(env.get("HOME") or Path.home())
    if sys.platform == "darwin":
        base = user_home / "Library" / "Application Support" / "nhidel"
        return base, base

    def xdg(name: str, default: Path) -> Path:
        value = env.get(name)
        return Path(value) if value and Path(value).is_absolute() else default

    return (
        xdg("XDG_CONFIG_HOME", user_home / ".config") / "nhidel",
        xdg("XDG_STATE_HOME", user_home / ".local" / "state") / "nhidel",
    )


def _clean(text: str) -> str:
    """One printable line: control, formatting and separator characters (a hostile scope or
    agent name could hold them) become `?`, and long text is cut."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in text)
    return shown if len(shown) <= MAX_DESCRIPTION else shown[: MAX_DESCRIPTION - 3] + "..."


def _join_bash_breaks(words: Iterable[str]) -> list[str]:
    """Undo bash's split of `repo:read` into `repo`, `:`, `read` (and of `--opt=value`)."""
    joined: list[str] = []
    glue = False
    for word in words:
        is_break = word != "" and all(ch in _BASH_BREAKS for ch in word)
        if joined and (glue or is_break):
            joined[-1] += word
        else:
            joined.append(word)
        glue = is_break
    return joined


def _format(shell: str, value: str, description: str, incomplete: str) -> str:
    value = _clean_value(value)
    if shell == "bash":
        # Bash replaces only the text after the word's last break character.
        cut = max(incomplete.rfind(ch) for ch in _BASH_BREAKS) + 1
        return value[cut:] + "\n"
    if shell == "zsh":
        escaped = value.replace("\\", "\\\\").replace(":", "\\:")
        return f"{escaped}:{description}\n" if description else f"{escaped}\n"
    return f"{value}\t{description}\n" if description else f"{value}\n"


def _clean_value(value: str) -> str:
    """A value is inserted into the command line: nothing unprintable, no whitespace."""
    return "".join(ch if ch.isprintable() and not ch.isspace() else "?" for ch in value)
