"""`nhidel exec`: run a command with a grant minted for its lifetime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from nhidel.cli import common

if TYPE_CHECKING:
    from collections.abc import Sequence


class ExecCommand(TyperCommand):
    """exec's options end where the command begins: from CMD on, every word is the child's,
    whether or not `--` comes before it (`nhidel exec bot --scope s sh -c 'echo $X'`)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._split_at_command(args))

    def _split_at_command(self, args: Sequence[str]) -> list[str]:
        """`args` with `--` put before CMD (the second positional word) if it has none."""
        takes_value = {
            name
            for param in self.params
            if param.param_type_name == "option" and not getattr(param, "is_flag", False)
            for name in (*param.opts, *param.secondary_opts)
        }
        positional, i = 0, 0
        while i < len(args):
            word = args[i]
            if word == "--":
                break
            if word.startswith("-") and word != "-":
                i += 2 if word in takes_value else 1  # (an unknown one: the parser says so)
                continue
            positional += 1
            if positional == 2:  # AGENT, then CMD
                return [*args[:i], "--", *args[i:]]
            i += 1
        return list(args)


def register(app: typer.Typer) -> None:
    app.command("exec", cls=ExecCommand)(exec_command)


def exec_command(
    agent: Annotated[
        str, typer.Argument(metavar="AGENT", help="The registered agent to grant to.")
    ],
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="CMD [ARGS]",
            help="The command to run and its arguments (after --, or after AGENT and the options).",
        ),
    ],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            metavar="SCOPE",
            help="A scope to grant, within the agent's ceiling (repeat for more).",
        ),
    ] = None,
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl",
            metavar="DURATION",
            help="How long the grant lives at most, e.g. 15m (default: the agent's); it is "
            "revoked as soon as the command ends.",
        ),
    ] = None,
    aud: common.AudienceOption = None,
    uses: common.UsesOption = None,
    reason: common.ReasonOption = None,
    proxy: Annotated[
        bool,
        typer.Option(
            "--proxy",
            help="Run the HTTP broker on a loopback port for CMD's lifetime, and point CMD at "
            "it (NHIDEL_PROXY_URL, NHIDEL_ROUTE_<NAME>_URL, each route's --url-var).",
        ),
    ] = False,
) -> None:
    """Run CMD with a grant minted for its lifetime, and revoke it when CMD ends.

    CMD gets nhidel's environment with NHIDEL_TOKEN and NHIDEL_GRANT_ID added, and without
    DBUS_SESSION_BUS_ADDRESS, NHIDEL_PASSPHRASE and NHIDEL_PASSPHRASE_FILE (what would unlock
    the keystore). It runs in the foreground; signals sent to nhidel are passed on to it. The
    grant is revoked however CMD ends; if nhidel itself is killed, CMD is killed too (Linux)
    and the next nhidel command that opens the keystore revokes the grant.

    Exit status: CMD's own (128+N when signal N ended it); 125 when nhidel itself failed
    (what other commands end with 2-6: a bad flag, an unknown agent, a locked keystore, a scope
    beyond the ceiling; the error says which), 126 when CMD cannot be run, 127 when it is not
    found. Grant flags as for nhidel grant.
    """
    import os

    from nhidel.actions.grants import GrantRequest
    from nhidel.cli.errors import ChildExited, Terminated
    from nhidel.cli.render import say
    from nhidel.enforce.exec import StoppedBySignal, passphrase_variables, resolve_command, run
    from nhidel.errors import UsageError

    if not scope:
        raise UsageError("missing option '--scope'", "see nhidel exec --help")
    for name in passphrase_variables(os.environ):
        where_else = "the file it names" if name.endswith("_FILE") else "the shell that set it"
        say(f"warning: nhidel was given {name}: the command does not get it, but any process "
            f"of your user can still read {where_else}; run agents under another account or "
            "in a sandbox")  # fmt: skip
    program = resolve_command(command[0], os.environ)  # 126/127 before anything is minted
    where = common.paths()
    store = common.keystore(where)
    request = GrantRequest(agent=agent, scopes=scope, ttl=ttl, aud=aud, uses=uses, reason=reason)
    try:
        status = run(where, store, request, command, program=program, clock=common.now,
                     proxy=proxy)  # fmt: skip
    except StoppedBySignal as stopped:
        raise Terminated(stopped.signum) from None
    raise ChildExited(status)
