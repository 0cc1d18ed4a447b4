"""The command-line entry point: fast paths first, then Typer; every error becomes one line.

Heavy modules (Typer, Rich, cryptography, keyring, sqlite3) are imported only once a command
needs them, so `nhidel --version` costs little more than starting Python, and shell completion
(`_NHIDEL_COMPLETE` set by the scripts in completions/) reads the ledger without any of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run nhidel with `argv` (default: sys.argv[1:]) and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    shell = os.environ.get("_NHIDEL_COMPLETE")
    if shell is not None:
        from .complete import SHELLS, run

        if shell in SHELLS:  # our scripts; Typer's own instructions (complete_bash, ...) go on
            return run(shell, args)
    if args == ["--version"]:
        from nhidel import __version__

        sys.stdout.write(f"nhidel {__version__}\n")
        return 0
    # Everything nhidel creates is private, whatever the caller's umask.
    os.umask(0o077)
    from .app import command

    return int(command(args).main(args=args, prog_name="nhidel", standalone_mode=False) or 0)
