"""`nhidel audit ...`: read, follow and check the audit log."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from nhidel.cli import common
from nhidel.cli.errors import ExitQuietly, verdict_stands
from nhidel.errors import ExitStatus, IntegrityError, NotFoundError, UsageError


def register(app: typer.Typer) -> None:
    audit_app = typer.Typer(help="Read, follow and check the audit log.", no_args_is_help=True)
    audit_app.command("tail")(tail)
    audit_app.command("verify")(verify)
    audit_app.command("find-token")(find_token)
    audit_app.command("prune")(prune)
    app.add_typer(audit_app, name="audit")


def tail(
    count: Annotated[
        int, typer.Option("-n", "--lines", metavar="COUNT", help="How many records.")
    ] = 10,
    keep_following: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new records until interrupted.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Raw JSON lines.")] = False,
    agent: Annotated[
        str | None, typer.Option("--agent", metavar="AGENT", help="Only this agent.")
    ] = None,
    event: Annotated[
        str | None, typer.Option("--event", metavar="EVENT", help="Only this event.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="TIME",
            help="Only records after a time: RFC 3339, or a duration ago (1h).",
        ),
    ] = None,
) -> None:
    """Print the last records; with -f, follow new ones like tail -f."""
    from nhidel.actions.audit_log import TailFilter
    from nhidel.actions.audit_log import tail as tail_records
    from nhidel.cli.render import audit_record_line, say, styled
    from nhidel.timefmt import parse_ago

    since_time = None if since is None else parse_ago(since, now=common.now(), what="--since")
    wanted = TailFilter(agent=agent, event=event, since=since_time)
    shown = tail_records(common.paths(), count, wanted, keep_following=keep_following,
                         warn=lambda message: say(f"warning: {message}"))  # fmt: skip
    colour = not as_json and styled(sys.stdout)
    try:
        for record in shown:
            if as_json:
                line = json.dumps(record, sort_keys=True, separators=(",", ":"))
            else:
                line = audit_record_line(record, now=common.now(), colour=colour)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return  # the way out of -f


def verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Print nothing; exit code only.")
    ] = False,
) -> None:
    """Check every record, the chain, the seals, the high-water mark and the ledger."""
    from nhidel.actions.audit_log import verify_log
    from nhidel.cli.render import print_json, say

    where = common.paths()
    report = verify_log(where, common.keystore(where))
    with verdict_stands(ExitStatus.OK if report.ok else ExitStatus.INTEGRITY):
        if as_json:
            print_json(report.to_json())
        elif not quiet:
            for warning in report.warnings:
                say(f"warning: {warning}")
            if report.ok:
                say(f"ok: {report.records} records; head seq {report.head_seq} {report.head_hash}")
    if report.ok:
        return
    if quiet:
        raise ExitQuietly(ExitStatus.INTEGRITY)
    raise IntegrityError(
        f"audit log integrity failure {report.problem}",
        "keep a copy of the home for review before anything writes to it; see nhidel repair --help",
    )


def find_token(
    as_json: Annotated[bool, typer.Option("--json", help="Raw JSON lines.")] = False,
) -> None:
    """Read a token on stdin and print the audit records about it."""
    from nhidel.actions.audit_log import find_token as find
    from nhidel.cli.render import audit_record_line, styled

    token = sys.stdin.read().strip()
    if not token:
        raise UsageError("no token on stdin", 'pipe it in: echo "$TOKEN" | nhidel audit find-token')
    where = common.paths()
    found = find(where, common.keystore(where), token)
    colour = not as_json and styled(sys.stdout)
    for record in found:
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) if as_json
                else audit_record_line(record, now=common.now(), colour=colour))  # fmt: skip
        sys.stdout.write(line + "\n")
    if not found:
        raise NotFoundError(
            "no records mention that token",
            "only grants minted from this nhidel home appear in its audit log",
        )


def prune(
    keep: Annotated[int, typer.Option("--keep", metavar="COUNT", help="Rotated segments to keep.")],
) -> None:
    """Delete old rotated segments, recording the pruning in the log."""
    from nhidel.actions.audit_log import prune as prune_segments
    from nhidel.cli.render import say

    where = common.paths()
    removed = prune_segments(where, common.keystore(where), keep=keep)
    say(f"pruned {len(removed)} segment{'s' if len(removed) != 1 else ''}"
        + (f": {', '.join(removed)}" if removed else ""))  # fmt: skip
