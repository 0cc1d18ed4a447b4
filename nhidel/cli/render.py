"""Output: JSON for machines on stdout, tables and one-line messages for people on stderr.

Text from users (reasons, scopes, names) goes through `safe` before it reaches a terminal, and
every Rich call disables markup, so nothing typed by a user can recolour, move the cursor or
forge a line. Rich honours NO_COLOR and drops colour when the stream is not a terminal. The grants
table of `nhidel list` is written here without Rich, streamed, and follows the same rules.

Colour marks what people look for rather than read: a grant's status in `list` and `show`, a
denial in `audit tail`. It is plain ANSI (Rich would cost `list` ~30 ms of start-up), added after
`safe`, and only on a terminal without NO_COLOR (`styled`). Times: relative ones and local
wall-clock ones come from nhidel.timefmt alone, so every command says them alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, TextIO

from nhidel.ledger.columns import AGENT, EXPIRES_AT, ID, MAX_USES, NOT_BEFORE, SCOPE, USES
from nhidel.ledger.rows import GrantRow, ScopeCache, corrupt_row, row_status
from nhidel.models import SHORT_ID_LENGTH, Agent, Grant
from nhidel.timefmt import (
    format_duration,
    local_clock,
    local_clock_of,
    relative,
    relative_with_clock,
)

AGENT_WIDTH = 20  # `list` folds longer agent names (up to 64 characters) onto more lines

if TYPE_CHECKING:
    from rich.console import Console

    from nhidel.actions.inspect import Inspection


def safe(text: object) -> str:
    """Escape control and formatting characters (C0, C1, DEL, bidi overrides) visibly, and
    lone surrogates (which no output encoding can write)."""
    text = str(text)
    if text.isprintable():  # nothing to escape: every escaped category is unprintable
        return text
    out = []
    for ch in text:
        if ch in "\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def console(*, stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, emoji=False, markup=False, soft_wrap=False)


def say(message: str) -> None:
    """One line for people, on stderr. Should no one read stderr any more (`2>&1 | head -1`),
    the command goes on: a message is no reason to stop a change half way."""
    try:
        sys.stderr.write(safe(message) + "\n")
        sys.stderr.flush()
    except BrokenPipeError:
        pass


def json_text(value: Any) -> str:
    """What print_json writes: indented JSON (non-ASCII kept) and a newline."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def print_json(value: Any) -> None:
    sys.stdout.write(json_text(value))


def grant_summary(grant: Grant, now: int) -> str:
    """`granted ID to AGENT: SCOPES; expires in 15m (2026-12-04 09:30 CET)`, and when a pending
    grant starts and how many uses it has."""
    scopes = " ".join(str(s) for s in grant.scopes)
    line = f"granted {grant.short_id} to {grant.agent}: {scopes}; "
    if grant.not_before > now:
        line += f"starts {relative_with_clock(grant.not_before, now=now)}, "
    line += f"expires {relative_with_clock(grant.expires_at, now=now)}"
    if grant.max_uses is not None:
        line += f", {grant.max_uses} use{'s' if grant.max_uses != 1 else ''}"
    return line


# What each status looks like on a terminal (SGR codes); an active grant about to expire
# (EXPIRING_SOON seconds or less) is marked as well.
_STATUS_COLOURS = {
    "active": "32",  # green
    "pending": "36",  # cyan
    "revoked": "31",  # red
    "exhausted": "35",  # magenta
    "expired": "2",  # faint
}
_EXPIRING_COLOUR = "33"  # yellow
EXPIRING_SOON = 60
_DENIED_COLOUR = "1;31"  # bold red


def status_text(status: str, not_before: int, now: int) -> str:
    """A grant's status as `list` and `show` write it: a pending grant says when it starts."""
    if status == "pending":
        return f"pending, starts {relative(not_before, now=now)}"
    return status


def status_colour(status: str, expires_at: int, now: int) -> str:
    """The SGR code that marks a grant's status (yellow: active, but for a minute at most)."""
    if status == "active" and expires_at - now <= EXPIRING_SOON:
        return _EXPIRING_COLOUR
    return _STATUS_COLOURS.get(status, "")


def paint(text: str, sgr: str) -> str:
    """`text` in the colour `sgr` (already escaped text only: see `safe`)."""
    return f"\x1b[{sgr}m{text}\x1b[0m" if sgr else text


def grants_table(rows: Iterable[GrantRow], now: int) -> int:
    """Print listed rows (Ledger.grant_rows) as a table on stdout, streaming; return the count.

    The column widths come from the first screenful of rows, which is printed before any more
    are read, so the first screen never waits for the whole listing. A later, wider agent name
    or scope list folds within its column; a wider expiry, use count or status widens only its
    line. On a terminal the header is bold and each status in its colour.
    """
    out = sys.stdout
    colour = styled(out)
    cells = _TableCells(now, colour=colour)
    remaining = iter(rows)
    first = [cells.row(row) for row in islice(remaining, FIRST_SCREEN_ROWS)]
    if not first:
        return 0
    layout = _TableLayout(first)
    out.write(layout.header(styled=colour))
    out.writelines(layout.lines(row) for row in first)
    out.flush()
    count = len(first)
    chunk: list[str] = []
    for row in remaining:
        chunk.append(layout.lines(cells.row(row)))
        if len(chunk) == FIRST_SCREEN_ROWS:
            out.write("".join(chunk))
            chunk.clear()
        count += 1
    out.write("".join(chunk))
    return count


FIRST_SCREEN_ROWS = 100  # rows read to size the columns; also the size of each later write
_GAP = "  "
_MIN_SCOPES_WIDTH = 12
_CACHE_LIMIT = 4096


class _TableCells:
    """One listed row's cells as people read them, escaped (ID, AGENT, SCOPES, EXPIRES, USES,
    STATUS), then the SGR code of its status ("" without colour), which takes no column."""

    def __init__(self, now: int, *, colour: bool) -> None:
        self.now = now
        self.colour = colour
        self.scope_cache = ScopeCache()

    def row(self, row: GrantRow) -> list[str]:
        grant_id, agent, expires_at, max_uses, uses = (
            row[ID], row[AGENT], row[EXPIRES_AT], row[MAX_USES], row[USES]
        )  # fmt: skip
        scopes, _ = self.scope_cache.lookup(grant_id, row[SCOPE])
        now = self.now
        try:
            status = row_status(row, now)
            return [
                safe(grant_id[:SHORT_ID_LENGTH]),
                safe(agent),
                safe(" ".join(scopes)),
                relative(expires_at, now=now),
                f"{uses:d}" if max_uses is None else f"{uses:d}/{max_uses:d}",
                status_text(status, row[NOT_BEFORE], now),
                status_colour(status, expires_at, now) if self.colour else "",
            ]
        except (TypeError, ValueError):
            raise corrupt_row(grant_id, "a value of the wrong type") from None


class _TableLayout:
    """Column widths fixed from the first rows and the terminal's width, and the lines of a row.

    Like the Rich table it replaces: short columns keep their width and never wrap, a long agent
    name folds at AGENT_WIDTH, and scopes fold into whatever the terminal has left.
    """

    def __init__(self, first: list[list[str]]) -> None:
        self.headers = ["ID", "AGENT", "SCOPES", "EXPIRES", "USES", "STATUS"]
        widths = [
            max(_cells(header), *(_cells(row[column]) for row in first))
            for column, header in enumerate(self.headers)
        ]
        widths[1] = min(widths[1], AGENT_WIDTH)
        others = sum(widths) - widths[2] + len(_GAP) * (len(widths) - 1)
        room = shutil.get_terminal_size().columns - others
        # On a narrow terminal the agent column gives up room before scopes get too thin.
        squeeze = min(max(_MIN_SCOPES_WIDTH - room, 0), widths[1] - _cells(self.headers[1]))
        widths[1] -= squeeze
        widths[2] = max(min(widths[2], room + squeeze), _MIN_SCOPES_WIDTH)
        self.widths = widths
        self._folded: dict[tuple[str, int], list[str]] = {}

    def header(self, *, styled: bool) -> str:
        line = self._join(self.headers)
        return f"\x1b[1m{line}\x1b[0m\n" if styled else line + "\n"

    def lines(self, row: list[str]) -> str:
        """The row's text lines, each ending in a newline (more than one when a cell folds)."""
        *cells, sgr = row
        agent = self._fold(cells[1], self.widths[1])
        scopes = self._fold(cells[2], self.widths[2])
        if len(agent) == 1 and len(scopes) == 1:
            return self._join(cells, sgr) + "\n"
        out = []
        for index in range(max(len(agent), len(scopes))):
            line = cells if index == 0 else [""] * len(cells)
            line[1] = agent[index] if index < len(agent) else ""
            line[2] = scopes[index] if index < len(scopes) else ""
            out.append(self._join(line, sgr) + "\n")
        return "".join(out)

    def _join(self, cells: list[str], sgr: str = "") -> str:
        padded = [
            _pad(cell, width, right=column == 4)
            for column, (cell, width) in enumerate(zip(cells, self.widths, strict=True))
        ]
        if sgr and cells[-1]:  # the status, last: its padding would be stripped anyway
            return _GAP.join(padded[:-1]) + _GAP + paint(cells[-1], sgr)
        return _GAP.join(padded).rstrip(" ")

    def _fold(self, text: str, width: int) -> list[str]:
        """Words that fit on a line share it; a word wider than the column is cut."""
        if _cells(text) <= width:
            return [text]
        key = (text, width)
        found = self._folded.get(key)
        if found is None:
            found = []
            line = ""
            for word in text.split(" "):
                while _cells(word) > width:
                    if line:
                        found.append(line)
                        line = ""
                    head, word = _cut(word, width)
                    found.append(head)
                candidate = f"{line} {word}" if line else word
                if _cells(candidate) <= width:
                    line = candidate
                else:
                    found.append(line)
                    line = word
            if line:
                found.append(line)
            if len(self._folded) >= _CACHE_LIMIT:
                self._folded.clear()
            self._folded[key] = found
        return found


def _cells(text: str) -> int:
    """How many terminal columns `text` takes: wide (East Asian) characters take two."""
    if text.isascii():
        return len(text)
    return sum(_char_cells(ch) for ch in text)


def _char_cells(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _cut(word: str, width: int) -> tuple[str, str]:
    """The longest head of `word` that fits in `width` columns (at least one character)."""
    used = 0
    for index, ch in enumerate(word):
        used += _char_cells(ch)
        if used > width:
            return word[: max(index, 1)], word[max(index, 1) :]
    return word, ""


def _pad(text: str, width: int, *, right: bool) -> str:
    if text.isascii():  # one column a character: str's own padding, the common case
        return text.rjust(width) if right else text.ljust(width)
    fill = " " * max(width - _cells(text), 0)
    return fill + text if right else text + fill


def styled(stream: TextIO) -> bool:
    """Whether to colour (or embolden) what goes to `stream`: only on a terminal, and never
    with NO_COLOR set (to any value, even empty) or TERM=dumb."""
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def grant_fields(grant: Grant, now: int) -> dict[str, Any]:
    """`grant.to_json(now)`, or IntegrityError (exit 5, as `list` says) naming the grant when
    its ledger row holds a time out of range. (What each field holds was checked when the row
    was read: nhidel.ledger.store refuses a row no Grant can hold.)"""
    try:
        return grant.to_json(now)
    except (TypeError, ValueError, OverflowError, OSError):
        raise corrupt_row(grant.id, "a value of the wrong type or out of range") from None


def grant_details(grant: Grant, now: int) -> None:
    """`show`: one field a line, times relative and local (`in 15m (2026-12-04 09:30 CET)`),
    the status in its colour on a terminal."""
    fields = grant_fields(grant, now)
    fields["scopes"] = " ".join(fields["scopes"])
    status = fields["status"]
    fields["status"] = status_text(status, grant.not_before, now)
    try:
        for key, stamp in (
            ("issued_at", grant.issued_at),
            ("not_before", grant.not_before),
            ("expires_at", grant.expires_at),
            ("revoked_at", grant.revoked_at),
        ):
            if stamp is not None:
                fields[key] = relative_with_clock(stamp, now=now)
    except (ValueError, OverflowError, OSError):  # in range for UTC, not in the local zone
        raise corrupt_row(grant.id, "a time out of range") from None
    colours = {"status": status_colour(status, grant.expires_at, now)} if styled(sys.stdout) else {}
    _key_values(fields, colours)


def agents_table(agents: Iterable[Agent]) -> int:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("AGENT", "ALLOW", "APPROVE", "DEFAULT TTL", "MAX TTL", "AUD"):
        table.add_column(name, overflow="fold")
    count = 0
    for agent in agents:
        count += 1
        table.add_row(
            Text(safe(agent.name)),
            Text(safe(" ".join(str(s) for s in agent.allow))),
            Text(safe(" ".join(str(s) for s in agent.approve)) or "-"),
            Text(format_duration(agent.default_ttl)),
            Text(format_duration(agent.max_ttl)),
            Text(safe(" ".join(agent.audiences)) or "-"),
        )
    if count:
        console(stderr=False).print(table)
    return count


def rows_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> int:
    """A plain table on stdout (every cell escaped); how many rows it had."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in headers:
        table.add_column(name, overflow="fold")
    count = 0
    for row in rows:
        count += 1
        table.add_row(*(Text(safe(cell) or "-") for cell in row))
    if count:
        console(stderr=False).print(table)
    return count


def agent_details(agent: Agent) -> None:
    fields = agent.to_json()
    fields["allow"] = " ".join(fields["allow"])
    fields["aud"] = " ".join(fields["aud"]) or None
    fields["created_at"] = local_clock(agent.created_at)
    fields["approve"] = " ".join(fields.get("approve", [])) or None
    _key_values(fields)


def _key_values(fields: dict[str, Any], colours: dict[str, str] | None = None) -> None:
    """`key  value` lines, the keys aligned; a value named in `colours` painted so."""
    width = max(len(key) for key in fields)
    for key, value in fields.items():
        shown = "-" if value is None else safe(value)
        if colours and key in colours:
            shown = paint(shown, colours[key])
        sys.stdout.write(f"{key.ljust(width)}  {shown}\n")


def audit_record_line(record: dict[str, Any], now: int, *, colour: bool = False) -> str:
    """One readable line: local time (to the second, with its zone), event, agent, grant,
    scopes, outcome; with `colour`, a denial (`verify.denied`, any `*.denied`) in bold red.

    Whatever a field holds (an unchecked record may hold anything anywhere), the line is
    made, and escaped."""
    parts = [local_clock_of(record.get("time", ""), seconds=True), f"#{record.get('seq')}",
             str(record.get("event", "?")).ljust(14)]  # fmt: skip
    if record.get("agent"):
        parts.append(str(record["agent"]))
    if record.get("grant"):
        parts.append(str(record["grant"])[:SHORT_ID_LENGTH])
    scopes = record.get("requested") or record.get("scopes")
    if scopes:
        parts.append(" ".join(str(s) for s in scopes) if isinstance(scopes, list) else str(scopes))
    named = ("server", "route", "secret")  # where secrets may go, and which one
    parts.extend(f"{what} {record[what]}" for what in named if record.get(what))
    about = _key_or_log_details(record)
    if about:
        parts.append(about)
    if record.get("outcome"):
        parts.append(f"-> {record['outcome']}")
    if type(record.get("count")) is int:  # identical decisions of one group commit, as one
        parts.append(
            f"x{record['count']} until {local_clock_of(record.get('last_time', ''), seconds=True)}"
        )
    if record.get("reason"):
        parts.append(f"({record['reason']})")
    line = safe("  ".join(parts))
    denied = str(record.get("event", "")).endswith(".denied")
    return paint(line, _DENIED_COLOUR) if colour and denied else line


def _key_or_log_details(record: dict[str, Any]) -> str:
    """What a key or log record is about, as it names no agent, grant or scope: the key id
    (`kid ...`, `kid OLD -> NEW`), the segments rotated or pruned, the torn line ended; and
    the program an exec ran, its pid and how it ended. A record of any shape (unchecked
    records may hold anything) gives a line."""
    event = record.get("event")
    if event == "key.created" and record.get("kid"):
        return f"kid {record['kid']}"
    if event == "key.rotated" and record.get("kid"):
        line = f"kid {record.get('old_kid')} -> {record['kid']}"
        return line + " (compromised)" if record.get("compromised") is True else line
    if event == "log.rotated" and record.get("previous_segment"):
        return f"after {record['previous_segment']}"
    if event == "log.recovered" and record.get("fragment_bytes"):
        return f"ended a torn line of {record['fragment_bytes']} bytes"
    if event in ("exec.started", "exec.ended") and record.get("program"):
        ended = f" exited {record.get('exit_status')}" if event == "exec.ended" else ""
        return f"{record['program']} (pid {record.get('pid')}){ended}"
    if event == "log.pruned":
        segments = record.get("segments")
        names = " ".join(str(s) for s in segments) if isinstance(segments, list) else segments
        return f"deleted {names or '?'} (records through seq {record.get('pruned_through')})"
    return ""


def inspection_json(inspection: Inspection, now: int) -> str:
    """`inspect --json`: header, claims, grant (as `show --json`, or null) and verdict.

    Every non-ASCII character is escaped: the header and claims are whatever the token says,
    and so reach a terminal as plain ASCII (the values decode to exactly what the token held).
    """
    grant = inspection.grant
    value = {
        "header": inspection.header,
        "claims": inspection.claims,
        "grant": None if grant is None else grant_fields(grant, now),
        "verdict": inspection.verdict.to_json(),
    }
    return json.dumps(value, indent=2, ensure_ascii=True) + "\n"


def inspection_details(inspection: Inspection, now: int) -> None:
    """`inspect` for people, on stdout: header, claims, the grant, the verdict; every key and
    value escaped (a token chooses its own claims)."""
    sections: list[tuple[str, list[tuple[str, str]]]] = [
        ("header", [(name, _claim_text(name, v, now)) for name, v in inspection.header.items()]),
        ("claims", [(name, _claim_text(name, v, now)) for name, v in inspection.claims.items()]),
        ("grant", _grant_lines(inspection.grant, now)),
    ]
    verdict = inspection.verdict
    answer = "yes" if verdict.would_verify else f"no: {verdict.reason}"
    lines = [("would verify now", f"{answer}: {verdict.detail}")]
    if verdict.unverified:
        lines.append(("unverified", ", ".join(verdict.unverified)))
    sections.append(("verdict", lines))
    out = []
    for title, rows in sections:
        out.append(f"{title}\n")
        width = min(max((len(safe(key)) for key, _ in rows), default=0), 16)
        out.extend(f"  {safe(key).ljust(width)}  {safe(text)}\n" for key, text in rows)
    sys.stdout.write("".join(out))


_TIME_CLAIMS = frozenset({"iat", "nbf", "exp"})


def _claim_text(name: str, value: object, now: int) -> str:
    """A header or claim value as text: a time claim with its RFC 3339 time and how far off it
    is, a string as it is, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    if name in _TIME_CLAIMS and type(value) is int:
        with contextlib.suppress(OverflowError, ValueError, OSError):
            return _when(value, now)
    return json.dumps(value, ensure_ascii=False)


def _when(timestamp: int, now: int) -> str:
    return relative_with_clock(timestamp, now=now)


def _grant_lines(grant: Grant | None, now: int) -> list[tuple[str, str]]:
    """The grant behind a token: its state in the ledger, as `show` has it."""
    if grant is None:
        return [("none", "this ledger issued no such token")]
    fields = grant_fields(grant, now)  # a row holding a time out of range: exit 5
    uses = f"{grant.uses}" if grant.max_uses is None else f"{grant.uses} of {grant.max_uses}"
    lines = [("id", grant.id), ("agent", grant.agent), ("status", fields["status"])]
    lines.append(("uses", uses))
    if grant.not_before > now:
        lines.append(("starts", _when(grant.not_before, now)))
    lines.append(("expires", _when(grant.expires_at, now)))
    if grant.revoked_at is not None:
        why = grant.revoke_reason or "no reason given"
        lines.append(("revoked", f"{_when(grant.revoked_at, now)}: {why}"))
    lines.append(("reason", grant.reason or "-"))
    return lines
