"""`nhidel mcp ...`: MCP servers registered for the gateway."""

from __future__ import annotations

from typing import Annotated

import typer

from nhidel.cli import common


def register(app: typer.Typer) -> None:
    mcp_app = typer.Typer(
        help="Register MCP servers and put the gateway in front of them.", no_args_is_help=True
    )
    mcp_app.command("add")(add)
    mcp_app.command("list")(list_servers)
    mcp_app.command("remove")(remove)
    app.add_typer(mcp_app, name="mcp")


ServerName = Annotated[
    str, typer.Argument(metavar="SERVER", help="The server's name, e.g. filesystem.")
]


def add(
    name: ServerName,
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="CMD [ARGS]", help="The server's command, after --, as you would run it."
        ),
    ],
    agent: Annotated[
        list[str] | None,
        typer.Option(
            "--agent",
            metavar="AGENT",
            help="An agent that may use it (repeat; default: any whose ceiling names it).",
        ),
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option(
            "--secret",
            metavar="NAME=ENV",
            help="Put stored secret NAME in the server's variable ENV (repeat for more).",
        ),
    ] = None,
    resource_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--resource-arg",
            metavar="TOOL=ARG",
            help="Argument ARG of TOOL names a resource, checked on every call (repeat).",
        ),
    ] = None,
    root: Annotated[
        list[str] | None,
        typer.Option(
            "--root", metavar="PATH", help="A root the server is told it may use (repeat)."
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env", metavar="K=V", help="A plain variable for the server (repeat for more)."
        ),
    ] = None,
) -> None:
    """Register an MCP server: the command the gateway starts and what it may be given."""
    from nhidel.actions.registrations import add_server
    from nhidel.cli.render import say

    where = common.paths()
    server = add_server(
        where,
        name,
        command,
        agents=agent or (),
        secrets=secret or (),
        resource_args=resource_arg or (),
        roots=root or (),
        env=env or (),
        now=common.now(),
        keystore=common.keystore(where),
    )
    say(f"registered MCP server {server.name}: {server.command[0]}")
    if not server.resource_args:
        say(f"no --resource-arg: see which tool arguments name resources with: "
            f"nhidel mcp tools {server.name}")  # fmt: skip


def list_servers(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List the registered MCP servers (never a secret's value)."""
    import shlex

    from nhidel.cli.render import print_json, rows_table, say
    from nhidel.config import load_config

    servers = sorted(load_config(common.paths()).servers.values(), key=lambda s: s.name)
    if as_json:
        print_json([s.to_json() for s in servers])
        return
    rows = [
        (
            s.name,
            shlex.join(s.command),
            " ".join(s.agents) or "(by ceiling)",
            " ".join(f"{name}={var}" for var, name in sorted(s.secrets.items())),
            " ".join(f"{t}={a}" for t, args in sorted(s.resource_args.items()) for a in args),
        )
        for s in servers
    ]
    if not rows_table(("SERVER", "COMMAND", "AGENTS", "SECRETS", "RESOURCE ARGS"), rows):
        say("no MCP servers yet; register one with: nhidel mcp add SERVER -- CMD [ARGS]...")


def remove(name: ServerName) -> None:
    """Unregister an MCP server: running gateways refuse its next message."""
    from nhidel.actions.registrations import remove_server
    from nhidel.cli.render import say

    where = common.paths()
    remove_server(where, name, now=common.now(), keystore=common.keystore(where))
    say(f"removed MCP server {name}")
