"""The Typer app: the root options, and the command groups from their modules."""

from __future__ import annotations

import inspect
import signal
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from nhidel import __version__
from nhidel.cli import typer_seam
from nhidel.cli.errors import (
    Terminated,
    closed_pipe_is_quiet,
    exit_status_for,
    terminating_signals_raise,
)


class NhidelGroup(TyperGroup):
    """Runs Typer without its own error printing, so every failure is one line and one status,
    and every way a command ends (signals too) goes through `cli/errors.py`."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = with_optional_values(list(sys.argv[1:] if args is None else args))
        try:
            with terminating_signals_raise():
                result = super().main(
                    args=argv,
                    prog_name=prog_name,
                    complete_var=complete_var,
                    standalone_mode=False,
                    **extra,
                )
            status = result if isinstance(result, int) else 0
        except (Exception, KeyboardInterrupt, Terminated) as exc:  # noqa: BLE001 - the error tree
            status = exit_status_for(
                exc, debug="--debug" in argv, command=self._command_named(argv)
            )
        if standalone_mode:
            sys.exit(status)
        return status

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with closed_pipe_is_quiet():  # (`nhidel --help | head -1`)
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        try:
            with closed_pipe_is_quiet():
                return super().invoke(ctx)
        except KeyboardInterrupt:
            # Typer would end Ctrl-C with an exit of its own; the error tree says how it ends.
            raise Terminated(signal.SIGINT) from None

    def _command_named(self, argv: Sequence[str]) -> str:
        """`nhidel grant`, `nhidel key show`: the command `argv` names, for a hint."""
        words, group = ["nhidel"], self
        for arg in argv:
            child = getattr(group, "commands", {}).get(arg)
            if child is None:
                if not arg.startswith("-"):
                    break
                continue
            words.append(arg)
            group = child
        return " ".join(words)


# The module defining each top-level command, in the order they are registered. A command loads
# only its own module: the others cost start-up time (about 20 ms) and are not needed.
COMMAND_MODULES = {
    "init": "key_cmds",
    "key": "key_cmds",
    "agent": "agent_cmds",
    "grant": "grant_cmds",
    "list": "grant_cmds",
    "show": "grant_cmds",
    "revoke": "grant_cmds",
    "verify": "verify_cmds",
    "inspect": "inspect_cmds",
    "audit": "audit_cmds",
    "config": "config_cmds",
    "status": "publish_cmds",
    "publish": "publish_cmds",
    "repair": "repair_cmds",
    "doctor": "doctor_cmds",
    "exec": "exec_cmds",
    "secret": "secret_cmds",
    "mcp": "mcp_cmds",
    "route": "route_cmds",
    "proxy": "proxy_cmds",
    "review": "review_cmds",
    "approvals": "approval_cmds",
    "approve": "approval_cmds",
    "deny": "approval_cmds",
    "request": "request_cmds",
}
_ROOT_FLAGS = frozenset({"--debug"})
# Options whose value may be left out (Typer has no such options): `request --wait` alone, at
# the end or before another option, is `--wait=10m`.
OPTIONAL_VALUES = {("request", "--wait"): "10m"}


def with_optional_values(argv: list[str]) -> list[str]:
    """`argv` with each option of OPTIONAL_VALUES given without a value given its default."""
    command = next((arg for arg in argv if arg not in _ROOT_FLAGS), None)
    filled = list(argv)
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        default = OPTIONAL_VALUES.get((str(command), arg))
        if default is not None and (index + 1 == len(argv) or argv[index + 1].startswith("-")):
            filled[index] = f"{arg}={default}"
    return filled


def build_app(args: Sequence[str] | None = None) -> typer.Typer:
    """The Typer app. Given the command line, only the command it names is registered;
    anything else (help, the completion options, an unknown command) gets every command."""
    typer_seam.install()
    app = typer.Typer(
        cls=NhidelGroup,
        name="nhidel",
        help="Mint scoped, time-boxed, revocable grants for named agents, from a key that "
        "never leaves your keyring.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(root)
    chosen = _chosen_command(args) if args is not None else None
    modules = dict.fromkeys(COMMAND_MODULES.values()) if chosen is None else [chosen]
    for name in modules:
        _register(app, name)
    if chosen is None:
        typer_seam.serve_completion_scripts()
    return app


def _chosen_command(args: Sequence[str]) -> str | None:
    """The module of the command `args` run, or None when they run none by name."""
    for arg in args:
        if arg not in _ROOT_FLAGS:
            return COMMAND_MODULES.get(arg)
    return None


def _register(app: typer.Typer, module_name: str) -> None:
    from importlib import import_module

    module = import_module(f"{__package__}.{module_name}")
    module.register(app)
    _reflow_docstrings(app)


def _reflow_docstrings(app: typer.Typer) -> None:
    """Give each command its docstring as help, one line per paragraph.

    Typer's help keeps a docstring's line breaks after the first paragraph, so a paragraph
    wrapped at the source's width came out broken mid-sentence in a terminal's width.
    """
    for info in app.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            paragraphs = inspect.cleandoc(info.callback.__doc__).split("\n\n")
            info.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            _reflow_docstrings(group.typer_instance)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"nhidel {__version__}\n")
        raise typer.Exit()


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


def command(args: Sequence[str] | None = None) -> Any:
    """The click command for `args` (see `build_app`)."""
    return typer.main.get_command(build_app(args))
