"""Shell completion on every TAB, without Typer: the static command table and the live ledger.

The scripts in completions/ run `_NHIDEL_COMPLETE=<shell> nhidel WORD...`, passing the words
after `nhidel` up to the one being completed (the last, possibly empty). This module answers
from `command_table` (generated from the Typer app), the ledger (read-only SQLite, opened so
that nothing is written) and, only for agents' names, scopes and audiences, config.toml. It
imports nothing a stdlib `sqlite3` read does not need (tests/cli/test_completion.py holds it to
that): no `typing`, `pathlib` or `re`; of nhidel's own modules only those made for it, which
import no more than `os`: `locations` (where the files are), `names` (what a name, an id or an
audience looks like), `ledger.columns` (the live-grant condition), `relative_time` (how far off
a time is). Only agents' names, scopes and audiences import more: `tomllib` to read
config.toml, and `scopes` (with its `errors`) to check a ceiling's scopes. So a TAB costs
little more than starting Python, and says nothing those modules do not. Whatever goes wrong,
it prints nothing rather than an error into a prompt.

Every value offered ends up on a command line, so a value read from the ledger or config that
does not match its grammar is dropped, and bash gets values with shell metacharacters escaped.
Descriptions reach bash only when it lists several candidates, never when it inserts one.
"""

import os
import sys
import time
from collections.abc import Callable, Sequence

from nhidel.cli.command_table import COMMANDS, EVENTS
from nhidel.ledger.columns import LIVE_GRANT_SQL, WAITING_APPROVAL_SQL
from nhidel.locations import CONFIG_FILE, LEDGER_FILE, directories
from nhidel.names import MAX_AUDIENCE_LENGTH, is_agent_name, is_approval_id, is_grant_id
from nhidel.relative_time import relative

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import sqlite3
    from typing import Any

SHELLS = ("bash", "zsh", "fish")
# Enough for any menu a person reads; typing more of the id narrows the query itself.
MAX_GRANTS = 200
MAX_DESCRIPTION = 72
# Bash splits words at the characters in COMP_WORDBREAKS (the script passes them in
# _NHIDEL_WORDBREAKS) and replaces only the text after the last one. Of those, only these can
# occur inside a value nhidel offers; without the variable (an older script), both are assumed.
_BASH_BREAKS = ":="
# Every id starts with "g": that prefix (or none) walks the expiry index, which skips expired
# history and is already in order. From one more character on, the id index narrows to 1 grant
# in 32 or better, and is faster (benchmarks/README.md has the figures).
RANGE_PREFIX = 2
# Outside quotes, bash takes these literally; any other character is escaped with a backslash.
_BASH_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:=@%+,-")
# Inside double quotes, these still mean something to bash.
_BASH_DQUOTE_UNSAFE = frozenset('$`"\\!')
# What a `file:` URI may hold as it is (urllib.parse.quote's safe bytes, and `/`); any other
# byte is percent-encoded, so no `?`, `#` or `%` in a path reaches SQLite as URI syntax.
_URI_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")

Candidate = tuple[str, str]  # (value, description)
# A value ending in one of these is one the user types on after (`repo:read:acme/`,
# `--agent=`): no space follows it. Fish decides so by these very endings; the bash script
# and (from the group run() puts them in) the zsh script follow suit.
OPEN_ENDINGS = tuple("/=@:.,-")
# COMP_TYPE when bash is about to list the candidates (TAB, `?`, and the show-all-if-*
# settings), not to insert each one whole (menu-complete, insert-completions): only then may a
# candidate carry its description. Bash inserts only what all candidates share, which never
# reaches a description: values are distinct and hold no space.
_BASH_LISTING = frozenset({"9", "33", "63", "64"})
_BASH_COLUMNS = 80  # when the script cannot say how wide the terminal is
_BASH_MIN_DESCRIPTION = 8  # narrower, a cut description says nothing: the value alone then


def run(shell: str, words: Sequence[str], *, now: int | None = None) -> int:
    """Print the candidates for the last of `words` in `shell`'s format; always exit 0."""
    words = list(words) or [""]
    breaks = quote = ""
    if shell == "bash":
        wordbreaks = os.environ.get("_NHIDEL_WORDBREAKS", _BASH_BREAKS)
        breaks = "".join(ch for ch in _BASH_BREAKS if ch in wordbreaks)
        words = _join_bash_breaks(words, breaks)
        if words[-1][:1] in ("'", '"'):  # an open quote: bash neither splits nor unquotes it
            quote, words[-1] = words[-1][0], words[-1][1:]
    try:
        found = candidates(words, now=int(time.time()) if now is None else now)
    except Exception:  # noqa: BLE001 - a corrupt ledger must not spill a traceback at a prompt
        found = []
    shown = [(_format(shell, value, about, words[-1], breaks, quote), about, value)
             for value, about in found]  # fmt: skip
    shown = [(line, about, value) for line, about, value in shown if line]
    if shell == "bash":
        lines = _bash_replies([(line, about) for line, about, _ in shown])
    elif shell == "zsh":
        # The values the user types on after (no space) follow an empty line, which scripts
        # before this one simply drop. (Fish decides that by the same endings itself.)
        ended = [line for line, _, value in shown if not value.endswith(OPEN_ENDINGS)]
        going_on = [line for line, _, value in shown if value.endswith(OPEN_ENDINGS)]
        lines = ended + ([""] + going_on if going_on else [])
    else:
        lines = [line for line, _, _ in shown]
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


def candidates(words: Sequence[str], *, now: int) -> list[Candidate]:
    """What may follow: `words` are those after `nhidel`, the last one being typed."""
    *typed, incomplete = words or [""]
    path, positionals, pending_option, spec = _walk(typed)
    source: Source | None = None
    if pending_option is not None:
        source = _SOURCES.get((path, pending_option))
        found = _option_values(path, pending_option, spec, positionals, incomplete, now)
    elif incomplete.startswith("--") and "=" in incomplete:
        name, _, value = incomplete.partition("=")
        source = _SOURCES.get((path, name))
        found = [
            (f"{name}={choice}", description)
            for choice, description in _option_values(path, name, spec, positionals, value, now)
        ]
    elif incomplete.startswith("-"):
        found = [(name, description) for name, (_, description, _) in spec["options"].items()]
    elif spec["commands"]:
        found = [(name, COMMANDS[_child(path, name)]["help"]) for name in spec["commands"]]
    elif spec["arguments"] == -1 or len(positionals) < spec["arguments"]:
        source = _SOURCES.get((path, ""))
        found = source(positionals, incomplete, now) if source else []
        found = [c for c in found if c[0] not in positionals]
    else:
        found = []
    if source in (_grants, _approvals):  # ids are case-insensitive: `revoke GQ3<TAB>` finds gq3...
        return [c for c in found if c[0].startswith(incomplete.lower())]
    return [candidate for candidate in found if candidate[0].startswith(incomplete)]


def _walk(typed: Sequence[str]) -> "tuple[str, list[str], str | None, dict[str, Any]]":
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
    path: str,
    option: str,
    spec: "dict[str, Any]",
    positionals: list[str],
    incomplete: str,
    now: int,
) -> list[Candidate]:
    known = spec["options"].get(option)
    if known is None:
        return []
    choices: tuple[str, ...] = known[2]
    if choices:
        return [(choice, "") for choice in choices]
    source = _SOURCES.get((path, option))
    return source(positionals, incomplete, now) if source else []


def _live_grants_query(prefix: str, now: int) -> tuple[str, list[object]]:
    """The SQL (and its parameters) for live grants whose id starts with `prefix`, soonest to
    expire first and ties by id, as `nhidel list` orders them: live as
    `ledger.columns.LIVE_GRANT_SQL` says, and not expired at `now`."""
    columns = "SELECT id, agent, scope, not_before, expires_at FROM grants WHERE "
    if len(prefix) >= RANGE_PREFIX:  # the id index; `+expires_at` keeps the planner off the other
        sql = f"{columns}+expires_at > ? AND {LIVE_GRANT_SQL} AND id >= ? AND id < ?"
        params: list[object] = [now, prefix, prefix + "\U0010ffff"]
        return f"{sql} ORDER BY +expires_at, id LIMIT {MAX_GRANTS}", params
    # The expiry index (grants_live): live grants only, already in order; the caller stops at
    # MAX_GRANTS matches.
    return f"{columns}expires_at > ? AND {LIVE_GRANT_SQL} ORDER BY expires_at, id", [now]


def _grants(positionals: list[str], incomplete: str, now: int) -> list[Candidate]:
    """Live grants (not revoked, expired or used up), soonest to expire first."""
    prefix = incomplete.strip().lower()
    sql, params = _live_grants_query(prefix, now)
    found: list[Candidate] = []
    with _ledger() as db:
        if db is None:
            return []
        for grant_id, agent, scope, not_before, expires_at in db.execute(sql, params):
            if not (isinstance(grant_id, str) and is_grant_id(grant_id)):
                continue  # not an id nhidel mints: never put it on a command line
            if not grant_id.startswith(prefix):
                continue
            when = f"expires {_relative(expires_at, now)}"
            if not_before > now:
                when = f"pending, starts {_relative(not_before, now)}, {when}"
            found.append((grant_id, _clean(f"{agent} {scope}, {when}")))
            if len(found) >= MAX_GRANTS:
                break
    return found


def _approvals(positionals: list[str], incomplete: str, now: int) -> list[Candidate]:
    """Approval requests still waiting for an answer, soonest to lapse first, each with its
    agent and summary. The row is read as it stands (checking its seals needs the keystore):
    `approve` checks them, and says what it answered."""
    prefix = incomplete.strip().lower()
    columns = "SELECT id, agent, summary, lapses_at FROM approvals WHERE "
    sql = columns + WAITING_APPROVAL_SQL
    params: list[object] = [now]
    if prefix:
        sql += " AND id >= ? AND id < ?"
        params += [prefix, prefix + "\U0010ffff"]
    found: list[Candidate] = []
    with _ledger() as db:
        if db is None:
            return []
        rows = db.execute(f"{sql} ORDER BY lapses_at, id LIMIT {MAX_GRANTS}", params)
        for approval_id, agent, summary, lapses_at in rows:
            if not (isinstance(approval_id, str) and is_approval_id(approval_id)):
                continue  # not an id nhidel makes: never put it on a command line
            when = f"lapses {_relative(lapses_at, now)}"
            found.append((approval_id, _clean(f"{agent}: {summary}, {when}")))
    return found


class _ledger:  # noqa: N801 - a context manager, used like a function
    """The ledger opened read-only (None when there is none), closed after."""

    db: "sqlite3.Connection | None" = None

    def __enter__(self) -> "sqlite3.Connection | None":
        import sqlite3

        ledger = os.path.join(directories()[1], LEDGER_FILE)
        if not (os.path.isabs(ledger) and os.path.isfile(ledger)):
            return None
        # Reading must leave the directory as it was: a read-only connection to a WAL database
        # still creates -wal and -shm files unless it is told nothing can change (no writer is
        # around).
        mode = "mode=ro" if os.path.exists(ledger + "-wal") else "mode=ro&immutable=1"
        self.db = sqlite3.connect(f"{_file_uri(ledger)}?{mode}", uri=True, timeout=0.5)
        return self.db

    def __exit__(self, *exc: object) -> None:
        if self.db is not None:
            self.db.close()


def _file_uri(path: str) -> str:
    """The `file:` URI of an absolute path, as `pathlib.Path.as_uri` writes it."""
    return "file://" + "".join(chr(b) if b in _URI_SAFE else f"%{b:02X}" for b in os.fsencode(path))


def _agent_names(positionals: list[str], incomplete: str, now: int) -> list[Candidate]:
    return [(name, _clean(" ".join(allow))) for name, (allow, _) in _agents().items()]


def _exec_agent(positionals: list[str], incomplete: str, now: int) -> list[Candidate]:
    """`exec AGENT CMD...`: agents first; the command is the shell's to complete."""
    return [] if positionals else _agent_names(positionals, incomplete, now)


def _scopes(positionals: list[str], incomplete: str, now: int) -> list[Candidate]:
    """The scopes of the named agent's ceiling (config.toml may have been edited by hand).

    A wildcard is offered as what comes before its `*` (`repo:read:acme/` for
    `repo:read:acme/*`), so the user types the resource the task needs: the shell inserts no
    `\\*` that reads as a glob, and the narrow grant is the easy one. The whole wildcard is
    still there to type (quoted: `'repo:read:acme/*'`)."""
    agent = positionals[0] if positionals else ""
    found: dict[str, str] = {}
    for scope in _ceiling_of(agent):
        if "*" in scope:
            found.setdefault(scope[: scope.index("*")], _clean(f"within {scope}, for {agent}"))
        else:
            found.setdefault(scope, f"allowed for {agent}")
    return list(found.items())


def _ceiling_entries(positionals: list[str], incomplete: str, now: int) -> list[Candidate]:
    """`agent update NAME --disallow`: the entries of that agent's ceiling, whole (an entry
    goes whole, so the wildcard is what there is to take away)."""
    agent = positionals[0] if positionals else ""
    return [(scope, _clean(f"in {agent}'s ceiling")) for scope in _ceiling_of(agent)]


def _ceiling_of(agent: str) -> list[str]:
    """The agent's ceiling scopes that the grammar accepts and a shell can take as they are."""
    from nhidel.scopes import parse_scope

    kept = []
    for scope in _agents().get(agent, ([], []))[0]:
        try:
            valid = str(parse_scope(scope)) == scope
        except Exception:  # noqa: BLE001 - any scope the grammar refuses is simply not offered
            valid = False
        if valid and _clean_value(scope) == scope:
            kept.append(scope)
    return kept


def _granted_audiences(positionals: list[str], incomplete: str, now: int) -> list[Candidate]:
    """`grant AGENT --aud`: the audiences that agent's ceiling allows (before the agent is
    named, every agent's)."""
    if not positionals:
        return _audiences(positionals, incomplete, now)
    agent = _agents().get(positionals[0])
    return [] if agent is None else _audiences_of({positionals[0]: agent})


def _audiences(positionals: list[str], incomplete: str, now: int) -> list[Candidate]:
    """The audiences agents' ceilings allow, each with the agents that allow it."""
    return _audiences_of(_agents())


def _audiences_of(agents: dict[str, tuple[list[str], list[str]]]) -> list[Candidate]:
    allowing: dict[str, list[str]] = {}
    for name, (_, audiences) in agents.items():
        for audience in audiences:
            if 0 < len(audience) <= MAX_AUDIENCE_LENGTH and _clean_value(audience) == audience:
                allowing.setdefault(audience, []).append(name)
    return [(aud, _clean("for " + ", ".join(names))) for aud, names in allowing.items()]


def _events(positionals: list[str], incomplete: str, now: int) -> list[Candidate]:
    return [(name, "") for name in EVENTS]


Source = Callable[[list[str], str, int], list[Candidate]]

# Which values come from nhidel's own state: (command path, option or "" for arguments).
_SOURCES: dict[tuple[str, str], Source] = {
    ("revoke", ""): _grants,
    ("show", ""): _grants,
    ("approve", ""): _approvals,
    ("deny", ""): _approvals,
    ("approvals show", ""): _approvals,
    ("revoke", "--agent"): _agent_names,
    ("list", "--agent"): _agent_names,
    ("grant", ""): _agent_names,
    ("agent show", ""): _agent_names,
    ("agent update", ""): _agent_names,
    ("agent update", "--disallow"): _ceiling_entries,
    ("agent update", "--aud"): _audiences,
    ("agent remove", ""): _agent_names,
    ("audit tail", "--agent"): _agent_names,
    ("review", "--agent"): _agent_names,
    ("grant", "--scope"): _scopes,
    ("grant", "--aud"): _granted_audiences,
    ("verify", "--aud"): _audiences,
    ("agent add", "--aud"): _audiences,
    ("grant", "--like"): _grants,
    ("audit tail", "--event"): _events,
    ("exec", ""): _exec_agent,
    ("exec", "--scope"): _scopes,
    ("exec", "--aud"): _granted_audiences,
}


def _agents() -> dict[str, tuple[list[str], list[str]]]:
    """Registered agents with valid names and their ceilings' scopes and audiences, from
    config.toml (read only when needed)."""
    import tomllib

    try:
        with open(os.path.join(directories()[0], CONFIG_FILE), encoding="utf-8") as config:
            data = tomllib.loads(config.read())
    except FileNotFoundError:
        return {}
    agents = data.get("agents", {})
    return {
        name: (_texts(spec.get("allow")), _texts(spec.get("aud")))
        for name, spec in agents.items()
        if is_agent_name(name) and isinstance(spec, dict)
    }


def _texts(value: object) -> list[str]:
    """A list of strings from config.toml, or none: a hand-edited value of another shape offers
    nothing."""
    return [str(item) for item in value] if isinstance(value, list) else []


def _relative(timestamp: int, now: int) -> str:
    return relative(int(timestamp), now=now)


def _clean(text: str) -> str:
    """One printable line: control, formatting and separator characters (a hostile scope or
    agent name could hold them) become `?`, and long text is cut."""
    shown = text if text.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in text)
    return shown if len(shown) <= MAX_DESCRIPTION else shown[: MAX_DESCRIPTION - 3] + "..."


def _join_bash_breaks(words: Sequence[str], breaks: str) -> list[str]:
    """Undo bash's split of `repo:read` into `repo`, `:`, `read` (and of `--opt=value`), at
    the break characters bash actually splits at."""
    joined: list[str] = []
    glue = False
    for word in words:
        is_break = bool(breaks) and word != "" and all(ch in breaks for ch in word)
        if joined and (glue or is_break):
            joined[-1] += word
        else:
            joined.append(word)
        glue = is_break
    return joined


def _format(
    shell: str, value: str, description: str, incomplete: str, breaks: str, quote: str
) -> str:
    if _clean_value(value) != value:
        return ""  # no whitespace or unprintable character reaches a command line
    if shell == "bash":
        if quote == "'":  # inside single quotes everything is literal but the quote itself
            return "" if "'" in value else value
        if quote == '"':
            return "".join("\\" + ch if ch in _BASH_DQUOTE_UNSAFE else ch for ch in value)
        # Bash replaces only the text after the word's last break character.
        cut = max((incomplete.rfind(ch) for ch in breaks), default=-1) + 1
        value = value[cut:]
        if _BASH_SAFE.issuperset(value):  # a grant id, an agent's name: nothing to escape
            return value
        return "".join(ch if ch in _BASH_SAFE else "\\" + ch for ch in value)
    if shell == "zsh":
        escaped = value.replace("\\", "\\\\").replace(":", "\\:")
        # _describe takes a backslash in a description as an escape: `\u202e` would read u202e.
        shown = description.replace("\\", "\\\\")
        return f"{escaped}:{shown}" if shown else escaped
    return f"{value}\t{description}" if description else value


def _bash_replies(replies: list[tuple[str, str]]) -> list[str]:
    """What goes into COMPREPLY: the values, each once; when bash lists several (never when it
    inserts them one by one), each with its description, aligned: `gabc...  (reviewer ...)`."""
    values = dict(replies)  # one entry a value: bash would insert a shared description
    listing = os.environ.get("_NHIDEL_COMP_TYPE") in _BASH_LISTING
    if len(values) < 2 or not listing or not any(values.values()):
        return list(values)
    width = max(len(value) for value in values)
    columns = os.environ.get("_NHIDEL_COLUMNS", "")
    wide = int(columns) if columns.isascii() and columns.isdigit() and len(columns) < 6 else 0
    room = (wide or _BASH_COLUMNS) - width - len("  ()")
    lines = []
    for value, about in values.items():
        if about and room >= _BASH_MIN_DESCRIPTION:
            shown = about if len(about) <= room else about[: room - 3] + "..."
            lines.append(f"{value.ljust(width)}  ({shown})")
        else:
            lines.append(value)
    return lines


def _clean_value(value: str) -> str:
    """A value is inserted into the command line: nothing unprintable, no whitespace."""
    if value.isprintable() and " " not in value:  # the space is the one printable whitespace
        return value
    return "".join(ch if ch.isprintable() and not ch.isspace() else "?" for ch in value)
