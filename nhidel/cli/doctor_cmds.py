"""`nhidel doctor`: check this nhidel home, and say what to run for each problem."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from nhidel.cli import common

if TYPE_CHECKING:
    from nhidel.actions.doctor import Finding


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the checks as JSON: name, ok, detail, fix.")
    ] = False,
) -> None:
    """Check the keystore, the key, the files and their permissions, the audit log, the ledger,
    agents and live grants, a crash's leftovers, the status list, and whether nhidel proxy is
    running and where; say what to run for each problem.

    Doctor only reads: it writes no file, no audit record and no mark, and repairs nothing.
    It checks the newest records of the audit log; nhidel audit verify checks every one. Exit
    0 when every check passes; else the highest status its problems call for: 5 integrity, 4
    keystore (or nothing set up yet: run nhidel init), 1 anything else to run.
    """
    from nhidel.actions.doctor import diagnose, exit_status
    from nhidel.cli.errors import ExitQuietly
    from nhidel.cli.render import print_json

    where = common.paths()
    findings = diagnose(
        where, lambda: common.keystore(where, revoke_orphans=False), now=common.now()
    )
    status = exit_status(findings)
    if as_json:
        print_json({"ok": not status, "checks": [f.to_json() for f in findings]})
    else:
        sys.stdout.writelines(_lines(findings))
    if status:
        raise ExitQuietly(status)


_STATE_WIDTH = len("skipped")
_NAME_WIDTH = len("status-list")


def _lines(findings: list[Finding]) -> list[str]:
    """A line per check, and one saying how it went: a problem's line ends with its fix."""
    from nhidel.cli.render import safe

    lines = []
    for finding in findings:
        state = {True: "ok", False: "problem", None: "skipped"}[finding.ok]
        text = finding.detail if finding.fix is None else f"{finding.detail}; fix: {finding.fix}"
        lines.append(f"{state:<{_STATE_WIDTH}}  {finding.name:<{_NAME_WIDTH}}  {safe(text)}\n")
    problems = sum(f.ok is False for f in findings)
    if problems:
        lines.append(f"{problems} problem{'s' if problems != 1 else ''} found\n")
    else:
        lines.append("no problems found\n")
    return lines
