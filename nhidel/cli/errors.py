"""The one place that turns exceptions into a message and an exit status.

Every way a command ends comes through `exit_status_for`: nhidel's own errors (each knows its
status and hint), the option parser's (`error:` and `hint:` like nhidel's own), Ctrl-C (130),
a terminating signal (128 + N), an outcome the command has reported in its own form
(`ExitQuietly`), and anything unexpected (a bug: said so, exit 1).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import signal
import sys
import traceback
from collections.abc import Iterator

from nhidel.errors import ExitStatus, NhidelError, signal_exit_status


class ExitQuietly(Exception):  # noqa: N818 - not an error: how a reported outcome ends
    """The command has said all there is to say (verify's verdict, a report); end with `status`."""

    def __init__(self, status: ExitStatus) -> None:
        super().__init__(status.name)
        self.status = status


class ChildExited(Exception):  # noqa: N818 - not an error: how exec ends
    """A command that ran a child (exec) ends with the child's exit status, whatever it is."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# Commands that end with their child's status tell their own failures apart from the child's
# by one status of their own, as `env` and `timeout` do: nhidel's 1-6 (a bad flag, an unknown
# agent, a locked keystore, a scope over the ceiling) become it.
OWN_FAILURE_STATUS = {"nhidel exec": ExitStatus.EXEC_FAILED}


class Terminated(BaseException):
    """A terminating signal arrived (Ctrl-C's SIGINT too, once a command runs). A BaseException,
    like KeyboardInterrupt, so that no `except Exception` swallows it; cleanup (`finally`,
    context managers, the audit log's pending decisions) still runs on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def terminating_signals_raise() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP end it as Ctrl-C does: by an exception, so a
    long-running verifier closes and writes the decisions it holds, and the exit status says
    which signal it was. By default these signals end the process at once, mid-write."""

    def stop(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue  # ignored when nhidel started (`nohup`): so it stays, for exec's child too
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def closed_pipe_is_quiet() -> Iterator[None]:
    """Around parsing and running a command: a reader that went away (`nhidel list | head -1`)
    has all it wanted, so the command ends quietly with exit 0 (Typer and Rich would end it
    with exit 1, the status of a denial). A command whose status is a verdict keeps it
    (`verdict_stands`), and grant revokes a token it could not deliver, before this is
    reached."""
    try:
        yield
    except BrokenPipeError:
        raise ExitQuietly(ExitStatus.OK) from None
    except SystemExit as exc:
        if isinstance(exc.__context__, BrokenPipeError):  # Rich's way out of it: exit 1
            raise ExitQuietly(ExitStatus.OK) from None
        raise


@contextlib.contextmanager
def verdict_stands(status: ExitStatus) -> Iterator[None]:
    """Around the output of a command whose exit status is a verdict (verify, audit verify):
    should the reader go away while it is written, the command still ends with `status`, so a
    closed pipe never turns a denial into success (nor the reverse)."""
    try:
        yield
    except BrokenPipeError:
        raise ExitQuietly(status) from None


def report(message: str, hint: str | None) -> None:
    from nhidel.cli.render import safe

    if sys.stderr is None:  # closed when nhidel started: the exit status is all there is
        return
    # A reader of stderr that went away (`2>&1 | head -1`) leaves the exit status to say it.
    with contextlib.suppress(BrokenPipeError):
        sys.stderr.write(f"error: {safe(message)}\n")
        if hint:
            sys.stderr.write(f"hint: {safe(hint)}\n")
        sys.stderr.flush()


def exit_status_for(exc: BaseException, *, debug: bool, command: str = "nhidel") -> int:
    """Report `exc` on stderr (a traceback only with --debug) and return its exit status.

    `command` is the command that ran (`nhidel grant`), for the hint of a parser error that
    does not know it."""
    if isinstance(exc, ChildExited):
        return exc.status
    status = _exit_status_for(exc, debug=debug, command=command)
    own = OWN_FAILURE_STATUS.get(command)
    if own is not None and ExitStatus.OK < status <= ExitStatus.POLICY:
        return int(own)
    return status


def _exit_status_for(exc: BaseException, *, debug: bool, command: str) -> int:
    from typer import Abort

    if isinstance(exc, ExitQuietly):
        return int(exc.status)
    if isinstance(exc, Terminated):
        return signal_exit_status(exc.signum)
    if debug or os.environ.get("NHIDEL_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc)
    if isinstance(exc, NhidelError):
        report(exc.message, exc.hint)
        return int(exc.exit_status)
    if _is_click_error(exc):
        return _report_click_error(exc, command)
    if isinstance(exc, Abort | KeyboardInterrupt):
        if sys.stderr is not None:
            sys.stderr.write("aborted\n")
        return int(ExitStatus.INTERRUPTED)
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


def _report_click_error(exc: BaseException, command: str) -> int:
    """The option parser's complaint in nhidel's words: `error:` lower case, `hint:` the help,
    and its guess (`--uses`, `'list'`) in the hint."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        # `nhidel`, `nhidel key`: asking for nothing is asking for help, as with gh.
        with contextlib.suppress(BrokenPipeError):  # (`nhidel | head -1`: quiet, as above)
            if sys.stdout is not None:
                sys.stdout.write(exc.format_message() + "\n")  # type: ignore[attr-defined]
        return int(ExitStatus.OK)
    ctx = getattr(exc, "ctx", None)
    hint = f"see {getattr(ctx, 'command_path', None) or command} --help"
    guesses = getattr(exc, "possibilities", None)
    if guesses:  # no such option: the closest of the parser's guesses
        message = str(getattr(exc, "message", ""))
        name = str(getattr(exc, "option_name", ""))
        guess = difflib.get_close_matches(name, guesses, n=1, cutoff=0)[0]
    else:
        message, _, guess = exc.format_message().partition(" Did you mean ")  # type: ignore[attr-defined]
        guess = guess.removesuffix("?")
    if guess:
        hint = f"did you mean {guess}? {hint}"
    report(_in_nhidels_words(message), hint)
    code: int = exc.exit_code  # type: ignore[attr-defined]
    return code


def _in_nhidels_words(message: str) -> str:
    """`Missing option '--scope'.` -> `missing option '--scope'`: lower case, no full stop."""
    message = message.strip().removesuffix(".")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    return message
