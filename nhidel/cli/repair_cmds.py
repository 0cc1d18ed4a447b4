"""`nhidel repair`: bring the log, the ledger and the keystore's mark back in step."""

from __future__ import annotations

from typing import Annotated

import typer

from nhidel.cli import common


def register(app: typer.Typer) -> None:
    app.command("repair")(repair)


def repair(
    accept_loss: Annotated[
        bool,
        typer.Option(
            "--accept-loss",
            help="Acknowledge a log or ledger lost for good (sealed in the log); every grant "
            "that could still be used is revoked, since its state can no longer be known.",
        ),
    ] = False,
) -> None:
    """Finish what an interrupted command left, or, with --accept-loss, write on after a loss.

    Without --accept-loss it changes nothing that the sealed log cannot vouch for: a crash's
    half-done change is finished toward the more restrictive state, and a ledger that was
    rolled back gets back every revocation and use the log holds. Either way the repair is
    itself a sealed audit record.
    """
    from nhidel.actions.repair import repair as bring_in_step
    from nhidel.cli.render import say

    where = common.paths()
    report = bring_in_step(where, common.keystore(where), accept_loss=accept_loss,
                           now=common.now())  # fmt: skip
    if not report.changed:
        say("nothing to repair: the audit log, the ledger and the keystore's mark agree")
        return
    if report.finished:
        say(f"finished {len(report.finished)} interrupted change(s) (audit records "
            f"{', '.join(map(str, report.finished))})")  # fmt: skip
    if report.replayed:
        say(f"applied {report.replayed} record(s) of the sealed log to the ledger again")
    for loss in report.loss:
        say(f"accepted as lost: {loss}")
    if report.revoked:
        say(f"revoked {len(report.revoked)} grant(s) whose state could not be established: "
            f"{' '.join(g[:10] for g in report.revoked)}")  # fmt: skip
