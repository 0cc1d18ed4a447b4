"""The one place that turns exceptions into a message and an exit status."""

from __future__ import annotations

import os
import sys
import traceback

from ..errors import ExitStatus, NhidelError


def report(message: str, hint: str | None) -> None:
    from ..render import safe

    sys.stderr.write(f"error: {safe(message)}\n")
    if hint:
        sys.stderr.write(f"hint: {safe(hint)}\n")
    sys.stderr.flush()


def exit_status_for(exc: BaseException, *, debug: bool) -> int:
    """Report `exc` on stderr (a traceback only with --debug) and return its exit status."""
    import click

    if debug or os.environ.get("NHIDEL_DEBUG"):
        traceback.print_exception(exc)
    if isinstance(exc, NhidelError):
        report(exc.message, exc.hint)
        return int(exc.exit_status)
    if isinstance(exc, click.UsageError):
        command = exc.ctx.command_path if exc.ctx is not None else "nhidel"
        report(exc.format_message(), f"see {command} --help")
        return int(ExitStatus.USAGE)
    if isinstance(exc, click.ClickException):
        report(exc.format_message(), None)
        return exc.exit_code
    if isinstance(exc, click.exceptions.Abort | KeyboardInterrupt):
        sys.stderr.write("aborted\n")
        return 130
    if isinstance(exc, BrokenPipeError):
        return int(ExitStatus.DENIED)
    report(f"unexpected {type(exc).__name__}: {exc}",
           "this is a bug in nhidel; rerun with --debug and report the traceback")
    return int(ExitStatus.DENIED)
