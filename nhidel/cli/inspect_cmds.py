"""`nhidel inspect`: what a token says, the grant behind it, and whether it would verify now."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from nhidel.cli import common


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


def inspect(
    token: common.TokenArgument = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print JSON: header, claims, grant (or null), verdict."),
    ] = False,
) -> None:
    """Decode a token: its header and claims, the grant behind it, and whether it would verify now.

    Needs no keystore, spends no use and writes no audit record. Without the keystore the
    signature is checked against the keys listed in config.toml, and revocation and uses against
    the ledger's rows, which an agent could have edited: the verdict says so (unverified: keys
    from config.toml, sealed state). Exit 0 whatever the verdict (nhidel verify decides); exit 2
    for a text that is not a token.
    """
    from nhidel.actions.inspect import inspect_token
    from nhidel.cli.render import inspection_details, inspection_json

    now = common.now()
    text = common.read_token(token, command="inspect")
    found = inspect_token(common.paths(), text, now=now)
    if as_json:
        sys.stdout.write(inspection_json(found, now))
    else:
        inspection_details(found, now)
