"""The one place that turns exceptions into a message and an exit status."""

from __future__ import annotations

import os
import sys
import traceback

from nhidel.errors import ExitStatus, NhidelError


def report(message: str, hint: str | None) -> None:
    from nhidel.cli.render import safe

    if sys.stderr is None:  # closed when nhidel started: the exit status is all there is
        return
    sys.stderr.write(f"error: {safe(message)}\n")
    if hint:
        sys.stderr.write(f"hint: {safe(hint)}\n")
    sys.stderr.flush()


def exit_status_for(exc: BaseException, *, debug: bool) -> int:
    """Report `exc` on stderr (a traceback only with --debug) and return its exit status."""
    from typer import Abort

    if debug or os.environ.get("NHIDEL_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc)
    if isinstance(exc, NhidelError):
        report(exc.message, exc.hint)
        return int(exc.exit_status)
    if _is_click_error(exc):
        return _report_click_error(exc)
    if isinstance(exc, Abort | KeyboardInterrupt):
        sys.stderr.write("aborted\n")
        return 130
    if isinstance(exc, BrokenPipeError):
        return int(ExitStatus.DENIED)
    if isinstance(exc, OSError):  # files are StorageErrors already: this is stdin or stdout
        report(
            f"cannot read input or write output: {exc.strerror or exc}",
            "check where the output goes (a full disk, a closed file)",
        )
        return int(ExitStatus.DENIED)
    report(
        f"unexpected {type(exc).__name__}: {exc}",
        "this is a bug in nhidel; rerun with --debug and report the traceback",
    )
    return int(ExitStatus.DENIED)


def _is_click_error(exc: BaseException) -> bool:
    """Click's exceptions (vendored inside newer Typer), recognised by shape, not by module."""
    return callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int
    )


def _report_click_error(exc: BaseException) -> int:
    message: str = exc.format_message()  # type: ignore[attr-defined]
    if type(exc).__name__ == "NoArgsIsHelpError":
        sys.stderr.write(message + "\n")  # the group's help, as click would show it
        return int(ExitStatus.USAGE)
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "nhidel"
    report(message, f"see {command} --help")
    code: int = exc.exit_code  # type: ignore[attr-defined]
    return code
