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
    mcp_app.command("run")(run)
    mcp_app.command("config")(config)
    mcp_app.command("connect")(connect)
    mcp_app.command("tools")(tools)
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


AgentOption = Annotated[
    str, typer.Option("--agent", metavar="AGENT", help="The agent the client acts for.")
]
ScopeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--scope",
        metavar="SCOPE",
        help="Mint a grant of SCOPE (SERVER:TOOL[:RESOURCE]) for this session, revoked when it "
        "ends (repeat; without it: the grant in $NHIDEL_TOKEN).",
    ),
]
TtlOption = Annotated[
    str | None,
    typer.Option(
        "--ttl",
        metavar="DURATION",
        help="The minted grant's lifetime (default: the agent's default TTL).",
    ),
]


def run(
    name: ServerName,
    agent: AgentOption,
    scope: ScopeOption = None,
    ttl: TtlOption = None,
    approval_hold: common.ApprovalHold = "45s",
    approval_timeout: common.ApprovalTimeout = "10m",
) -> None:
    """The stdio MCP gateway: start the registered server, relay only what the grant covers."""
    import sys

    from nhidel.cli.errors import Terminated
    from nhidel.enforce.mcp_session import GatewayError, run_session

    where = common.paths()
    ending = run_session(
        where,
        common.keystore(where),
        name,
        agent=agent,
        scopes=scope or (),
        ttl=ttl,
        client_in=sys.stdin.buffer,
        client_out=sys.stdout.buffer,
        log=sys.stderr,
        approvals=common.approval_settings(approval_hold, approval_timeout),
    )
    if ending.signum is not None:
        raise Terminated(ending.signum)
    if not ending.client_closed and ending.server_status is not None:
        raise GatewayError(
            f"MCP server {name} exited (status {ending.server_status}) while the client was "
            "connected",
            "its own messages above (prefixed with its name) say why",
        )


def connect(
    socket_path: Annotated[
        str,
        typer.Argument(
            metavar="SOCKET",
            help="The daemon's Unix socket (as nhidel proxy prints it, unix: optional).",
        ),
    ],
    name: ServerName,
) -> None:
    """Relay stdio to SERVER on nhidel proxy's socket, with the grant in $NHIDEL_TOKEN.

    For a stdio-only MCP client in a sandbox: it needs no keystore and no nhidel home (the
    daemon checks everything). Ends when the client closes stdin (the session is ended), or
    with an error when the daemon ends the session or cannot be reached.
    """
    import asyncio
    import os
    import stat
    import sys

    from nhidel.cli.errors import Terminated
    from nhidel.cli.render import say
    from nhidel.errors import NhidelError, UsageError
    from nhidel.registrations import check_registered_name

    check_registered_name(name, "MCP server")
    token = os.environ.get("NHIDEL_TOKEN", "").strip()
    if not token:
        raise UsageError(
            "no grant: NHIDEL_TOKEN is not set",
            f"give the client the agent's grant: NHIDEL_TOKEN=$(nhidel grant AGENT --scope "
            f"'{name}:*' --ttl 8h)",
        )
    path = socket_path.removeprefix("unix:")
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        raise NhidelError(
            f"no daemon socket at {path}",
            "start nhidel proxy (it prints unix:PATH), and in a container bind-mount that "
            'socket (docker run -v "$XDG_RUNTIME_DIR/nhidel/proxy.sock:/run/nhidel.sock")',
        )
    from nhidel.enforce.mcp_connect import relay

    ending = asyncio.run(
        relay(
            path,
            name,
            token,
            sys.stdin.buffer,
            sys.stdout.buffer,
            lambda line: say(f"nhidel mcp connect: {line}"),
        )  # fmt: skip
    )
    if ending.signum is not None:
        raise Terminated(ending.signum)
    if ending.why is not None:
        raise NhidelError(
            f"MCP server {name}: {ending.why}",
            "start the client again (a new session); if the grant was revoked or expired, "
            "with a new one in NHIDEL_TOKEN",
        )


def config(
    name: ServerName,
    agent: AgentOption,
    scope: ScopeOption = None,
    ttl: TtlOption = None,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="URL",
            help="Point the client at nhidel proxy at URL (/mcp/SERVER is added), sending the "
            "grant in $NHIDEL_TOKEN, instead of starting mcp run.",
        ),
    ] = None,
    client: Annotated[
        str,
        typer.Option(
            "--client",
            metavar="CLIENT",
            help="The client's shape: claude, cursor, codex or vscode.",
        ),
    ] = "claude",
) -> None:
    """Print the client entry (user scope) that reaches the gateway: no secret, no token."""
    from nhidel.cli.mcp_clients import CLIENTS, WHERE, entry, gateway_argv, gateway_env
    from nhidel.cli.render import say
    from nhidel.config import load_config
    from nhidel.enforce.mcp_session import check_request
    from nhidel.errors import UsageError

    if client not in CLIENTS:
        raise UsageError(f"unknown --client {client!r}", f"use one of: {', '.join(CLIENTS)}")
    if http is not None:
        if scope or ttl:
            raise UsageError(
                "--scope and --ttl mint a grant in mcp run; with --http the client sends its own",
                f"mint it for the client's environment: NHIDEL_TOKEN=$(nhidel grant {agent} "
                f"--scope {name}:TOOL --ttl 8h)",
            )
        check_request(load_config(common.paths()), name, agent, (), None)
        _http_config(name, agent, http, client)
        return
    check_request(load_config(common.paths()), name, agent, scope or (), ttl)
    env = gateway_env()
    typer.echo(entry(client, name, gateway_argv(name, agent, scope or (), ttl), env), nl=False)
    say(f"paste it into {WHERE[client]}")
    if env.get("NHIDEL_KEYSTORE") == "file":
        say("the file keystore needs NHIDEL_PASSPHRASE_FILE in the client's environment too "
            "(not written here: point it at your passphrase file yourself)")  # fmt: skip
    if not scope:
        say("without --scope the gateway takes the grant in NHIDEL_TOKEN from the client's "
            "environment")  # fmt: skip


def _http_config(name: str, agent: str, base: str, client: str) -> None:
    from nhidel.cli.mcp_clients import HTTP_WHERE, cleartext_off_loopback, http_entry, server_url
    from nhidel.cli.render import say

    url = server_url(base, name, client)
    typer.echo(http_entry(client, name, url), nl=False)
    say(f"paste it into {HTTP_WHERE[client]}")
    say(f"the client sends the grant in NHIDEL_TOKEN from its environment: "
        f"NHIDEL_TOKEN=$(nhidel grant {agent} --scope '{name}:*' --ttl 8h)")  # fmt: skip
    if cleartext_off_loopback(url):
        say("warning: plain http to another host: the grant crosses the network unencrypted")


def tools(
    name: ServerName,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """Start a registered server once: its tools, their arguments, suggested scopes."""
    from nhidel.cli.render import print_json, say
    from nhidel.enforce.context import Enforcer
    from nhidel.enforce.mcp_tools import list_tools, render

    where = common.paths()
    with Enforcer(where, common.keystore(where)) as enforcer:
        found = list_tools(where, enforcer, name)
    if as_json:
        print_json([t.to_json() for t in found])
        return
    if not found:
        say(f"MCP server {name} lists no tools")
        return
    typer.echo("\n".join(render(found, name)))
