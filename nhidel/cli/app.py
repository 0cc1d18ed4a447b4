"""The Typer app: the root options, and the command groups from their modules."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .. import __version__
from .errors import exit_status_for


class NhidelGroup(TyperGroup):
    """Runs Typer without its own error printing, so every failure is one line and one status."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            result = super().main(
                args=argv,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            status = result if isinstance(result, int) else 0
        except (Exception, KeyboardInterrupt) as exc:
            status = exit_status_for(exc, debug="--debug" in argv)
        if standalone_mode:
            sys.exit(status)
        return status


app = typer.Typer(
    cls=NhidelGroup,
    name="nhidel",
    help="Mint scoped, time-boxed, revocable grants for named agents, from a key that never "
    "leaves your keyring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"nhidel {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show a traceback when something fails.")
    ] = False,
) -> None:
    """nhidel: delegation manager for non-human identities."""


def _register() -> None:
    from . import (
        agent_cmds,
        audit_cmds,
        grant_cmds,
        key_cmds,
        publish_cmds,
        shell_scripts,
        verify_cmds,
    )

    key_cmds.register(app)
    agent_cmds.register(app)
    grant_cmds.register(app)
    app.command("verify")(verify_cmds.verify)
    audit_cmds.register(app)
    publish_cmds.register(app)
    shell_scripts.use_in_typer()


_register()


def command() -> Any:
    return typer.main.get_command(app)
