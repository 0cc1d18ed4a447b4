"""Output: JSON for machines on stdout, tables and one-line messages for people on stderr.

Text from users (reasons, scopes, names) goes through `safe` before it reaches a terminal, and
every Rich call disables markup, so nothing typed by a user can recolour, move the cursor or
forge a line. Rich honours NO_COLOR and drops colour when the stream is not a terminal.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .models import SHORT_ID_LENGTH, Agent, Grant
from .timefmt import format_duration, local_clock, relative

AGENT_WIDTH = 20  # `list` folds longer agent names (up to 64 characters) onto more lines

if TYPE_CHECKING:
    from rich.console import Console


def safe(text: object) -> str:
    """Escape control and formatting characters (C0, C1, DEL, bidi overrides) visibly."""
    out = []
    for ch in str(text):
        if ch in "\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def console(*, stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, emoji=False, markup=False, soft_wrap=False)


def say(message: str) -> None:
    """One line for people, on stderr."""
    sys.stderr.write(safe(message) + "\n")
    sys.stderr.flush()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def grant_summary(grant: Grant, now: int) -> str:
    scopes = " ".join(str(s) for s in grant.scopes)
    expires = local_clock(grant.expires_at, now=now)
    line = (
        f"granted {grant.short_id} to {grant.agent}: {scopes}; "
        f"expires {expires} ({relative(grant.expires_at, now=now)})"
    )
    if grant.not_before > now:
        line += f", valid from {relative(grant.not_before, now=now)}"
    if grant.max_uses is not None:
        line += f", {grant.max_uses} use{'s' if grant.max_uses != 1 else ''}"
    return line


def grants_table(grants: Iterable[Grant], now: int, *, show_status: bool) -> int:
    """Print grants as a table on stdout; return how many were shown."""
    from rich.table import Table
    from rich.text import Text

    rows = []
    for grant in grants:
        uses = f"{grant.uses}/{grant.max_uses}" if grant.max_uses is not None else str(grant.uses)
        row = [
            grant.id[:SHORT_ID_LENGTH],
            safe(grant.agent),
            safe(" ".join(str(s) for s in grant.scopes)),
            relative(grant.expires_at, now=now),
            uses,
        ]
        if show_status:
            row.append(grant.status(now).value)
        rows.append(row)
    if not rows:
        return 0
    headers = ["ID", "AGENT", "SCOPES", "EXPIRES", "USES"] + (["STATUS"] if show_status else [])

    def widest(column: int) -> int:
        return max(len(headers[column]), *(len(row[column]) for row in rows))

    # Short columns never wrap and keep their width; a long agent name folds at 20 columns and
    # scopes fold into whatever is left, so a row fits a narrow terminal.
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("ID", no_wrap=True, min_width=widest(0))
    table.add_column("AGENT", overflow="fold", max_width=AGENT_WIDTH)
    table.add_column("SCOPES", overflow="fold")
    table.add_column("EXPIRES", no_wrap=True, min_width=widest(3))
    table.add_column("USES", no_wrap=True, justify="right", min_width=widest(4))
    if show_status:
        table.add_column("STATUS", no_wrap=True, min_width=widest(5))
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console(stderr=False).print(table)
    return len(rows)


def grant_details(grant: Grant, now: int) -> None:
    fields = grant.to_json(now)
    fields["scopes"] = " ".join(fields["scopes"])
    fields["expires_at"] = f"{fields['expires_at']} ({relative(grant.expires_at, now=now)})"
    _key_values(fields)


def agents_table(agents: Iterable[Agent]) -> int:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("AGENT", "ALLOW", "DEFAULT TTL", "MAX TTL", "AUD"):
        table.add_column(name, overflow="fold")
    count = 0
    for agent in agents:
        count += 1
        table.add_row(
            Text(safe(agent.name)),
            Text(safe(" ".join(str(s) for s in agent.allow))),
            Text(format_duration(agent.default_ttl)),
            Text(format_duration(agent.max_ttl)),
            Text(safe(" ".join(agent.audiences)) or "-"),
        )
    if count:
        console(stderr=False).print(table)
    return count


def agent_details(agent: Agent) -> None:
    fields = agent.to_json()
    fields["allow"] = " ".join(fields["allow"])
    fields["aud"] = " ".join(fields["aud"]) or None
    _key_values(fields)


def _key_values(fields: dict[str, Any]) -> None:
    width = max(len(key) for key in fields)
    for key, value in fields.items():
        shown = "-" if value is None else safe(value)
        sys.stdout.write(f"{key.ljust(width)}  {shown}\n")


def audit_record_line(record: dict[str, Any], now: int) -> str:
    """One readable line: local time, event, agent, grant, scopes, outcome."""
    from datetime import datetime

    stamp = str(record.get("time", ""))
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
        shown_time = when.strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        shown_time = stamp
    parts = [shown_time, f"#{record.get('seq')}", str(record.get("event", "?")).ljust(14)]
    if record.get("agent"):
        parts.append(str(record["agent"]))
    if record.get("grant"):
        parts.append(str(record["grant"])[:SHORT_ID_LENGTH])
    scopes = record.get("requested") or record.get("scopes")
    if scopes:
        parts.append(" ".join(str(s) for s in scopes))
    if record.get("outcome"):
        parts.append(f"-> {record['outcome']}")
    if record.get("reason"):
        parts.append(f"({record['reason']})")
    return safe("  ".join(parts))
