"""`nhidel route ...`: upstreams for the HTTP broker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nhidel.cli import common


def register(app: typer.Typer) -> None:
    route_app = typer.Typer(
        help="Register upstreams the HTTP broker forwards to, with a secret.",
        no_args_is_help=True,
    )
    route_app.command("add")(add)
    route_app.command("list")(list_routes)
    route_app.command("remove")(remove)
    app.add_typer(route_app, name="route")


RouteName = Annotated[str, typer.Argument(metavar="NAME", help="The route's name, e.g. github.")]


def add(
    name: RouteName,
    url: Annotated[
        str,
        typer.Argument(metavar="URL", help="The upstream's base URL, e.g. https://api.github.com."),
    ],
    secret: Annotated[
        str, typer.Option("--secret", metavar="SECRET", help="The stored secret to inject.")
    ],
    header: Annotated[
        str | None,
        typer.Option("--header", metavar="HEADER", help="The header it goes in (Authorization)."),
    ] = None,
    header_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="The header's value, {secret} where it goes ('Bearer {secret}').",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            metavar="PATH",
            help="Trust this CA (PEM) for this upstream only; its contents are sealed.",
        ),
    ] = None,
    url_var: Annotated[
        list[str] | None,
        typer.Option(
            "--url-var",
            metavar="VAR",
            help="exec --proxy sets VAR to the route's broker URL (repeat).",
        ),
    ] = None,
) -> None:
    """Register an upstream: requests to /NAME/PATH go to URL with the secret injected."""
    from nhidel.actions.registrations import add_route
    from nhidel.cli.render import say

    where = common.paths()
    route = add_route(
        where,
        name,
        url,
        secret=secret,
        header=header,
        format=header_format,
        ca_file=ca_file,
        url_vars=url_var or (),
        now=common.now(),
        keystore=common.keystore(where),
    )
    say(f"registered route {route.name}: {route.url} ({route.header} from secret {route.secret})")


def list_routes(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List the routes (never a secret's value)."""
    from nhidel.cli.render import print_json, rows_table, say
    from nhidel.config import load_config

    routes = sorted(load_config(common.paths()).routes.values(), key=lambda r: r.name)
    if as_json:
        print_json([r.to_json() for r in routes])
        return
    rows = [
        (r.name, r.url, r.secret, f"{r.header}: {r.format}", "own CA" if r.ca_pem else "system")
        for r in routes
    ]
    if not rows_table(("ROUTE", "URL", "SECRET", "HEADER", "TLS TRUST"), rows):
        say("no routes yet; add one with: nhidel route add NAME URL --secret SECRET")


def remove(name: RouteName) -> None:
    """Unregister a route: the broker answers its next request 404."""
    from nhidel.actions.registrations import remove_route
    from nhidel.cli.render import say

    where = common.paths()
    remove_route(where, name, now=common.now(), keystore=common.keystore(where))
    say(f"removed route {name}")
