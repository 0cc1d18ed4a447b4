"""The command-line entry point: fast paths first, then Typer; every error becomes one line.

Heavy modules (Typer, Rich, cryptography, keyring, sqlite3) are imported only once a command
needs them, so `nhidel --version` costs little more than starting Python, and shell completion
(`_NHIDEL_COMPLETE` set by the scripts in completions/) reads the ledger without any of them.
"""

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn, TextIO


def main(argv: "Sequence[str] | None" = None) -> int:
    """Run nhidel with `argv` (default: sys.argv[1:]) and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    shell = os.environ.get("_NHIDEL_COMPLETE")
    if shell is not None:
        from nhidel.cli.complete import SHELLS, run

        if shell in SHELLS:  # our scripts; Typer's own instructions (complete_bash, ...) go on
            return run(shell, args)
    if args == ["--version"]:
        from nhidel import __version__

        sys.stdout.write(f"nhidel {__version__}\n")
        return 0
    # Everything nhidel creates is private, whatever the caller's umask.
    os.umask(0o077)
    _hold_closed_standard_descriptors()
    from nhidel.cli.app import command

    return int(command(args).main(args=args, prog_name="nhidel", standalone_mode=False) or 0)


def _hold_closed_standard_descriptors() -> None:
    """Put /dev/null on any of descriptors 0-2 that was closed when nhidel started
    (`nhidel grant ... >&-`). Python leaves sys.stdout None then, and nhidel still treats that
    stream as closed; but the next file it opened (the ledger, the audit log) would get that
    descriptor, and a write meant for stdout or stderr would land in it."""
    import contextlib

    for fd, stream in enumerate((sys.__stdin__, sys.__stdout__, sys.__stderr__)):
        if stream is not None:
            continue
        try:
            os.fstat(fd)
            continue  # something opened since holds it already: leave that alone
        except OSError:
            pass
        with contextlib.suppress(OSError):
            held = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: `fd`
            if held != fd:
                os.dup2(held, fd)
                os.close(held)


def run() -> "NoReturn":
    """The `nhidel` console script and `python -m nhidel`: `main()`, then a quick exit.

    Tearing the interpreter down (freeing every object of every module loaded) takes longer
    than many commands themselves (~15 ms with Typer loaded) and serves nothing in a process
    that is ending. So once the atexit handlers have run (the audit group commit flushes in
    one) and the output is flushed, the process ends at once. While a non-daemon thread still
    runs, it exits the usual way, which waits for that thread.
    """
    status = main()
    import atexit

    # A command that never imported threading started no thread (completion, say): it need
    # not import it to ask.
    threading = sys.modules.get("threading")
    if threading and any(
        not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
    ):
        sys.exit(status)  # the usual exit waits for it
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        status = _flushed(stream, status)
    os._exit(status)


def _flushed(stream: "TextIO | None", status: int) -> int:
    """Flush what `stream` still holds; return the exit status that leaves."""
    try:
        if stream is not None:  # None: the descriptor was closed when nhidel started
            stream.flush()
    except BrokenPipeError:
        pass  # the reader went away (`nhidel list | head -1`): quiet, as cli/errors.py says
    except ValueError:
        pass  # a stream closed by the command itself has nothing left to flush
    except OSError as exc:  # a full disk, say: the output is lost, and that is a failure
        if status == 0:  # (a command that failed has said why already)
            import contextlib

            with contextlib.suppress(OSError):
                os.write(
                    2,
                    f"error: cannot write the output: {exc.strerror}\n"
                    "hint: check where it goes (a full disk, a closed file)\n".encode(),
                )
            return 1
    return status
