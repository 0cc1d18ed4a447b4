"""`nhidel init` and `nhidel key ...`: the principal's key, public material only."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Annotated

import typer

from . import common


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    key_app = typer.Typer(help="Show and export the principal's public keys.", no_args_is_help=True)
    key_app.command("show")(show)
    key_app.command("export")(export)
    app.add_typer(key_app, name="key")


def init(
    principal: Annotated[
        str | None,
        typer.Option(
            "--principal",
            help="Who you are: the accountable human (default: your user name).",
        ),
    ] = None,
    issuer: Annotated[
        str | None,
        typer.Option(
            "--issuer",
            help="The tokens' iss (default: nhidel:PRINCIPAL).",
        ),
    ] = None,
) -> None:
    """Create your signing key in the keystore; print its kid and public key."""
    from ..keys import public_pem
    from ..principal import init_principal
    from ..render import say

    where = common.paths()
    store = common.keystore(where)
    info = init_principal(
        where, store, principal=principal or getpass.getuser(), issuer=issuer, now=common.now()
    )
    say(f"created a signing key for {info.principal} in {store.description}")
    sys.stdout.write(f"kid: {info.kid}\n{public_pem(info.x)}")


def show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the public keys verify trusts, with their states."""
    from ..principal import public_keys
    from ..render import print_json, safe

    where = common.paths()
    infos = public_keys(where, common.keystore(where))
    if as_json:
        print_json(
            [
                {
                    "kid": i.kid,
                    "state": i.state,
                    "created_at": i.created_at,
                    "issuer": i.issuer,
                    "principal": i.principal,
                    "x": i.x,
                }
                for i in infos
            ]
        )
        return
    for info in infos:
        sys.stdout.write(
            f"{info.kid}  {info.state}  created {info.created_at}  issuer {safe(info.issuer)}\n"
        )


def export(
    jwks: Annotated[bool, typer.Option("--jwks", help="Print a JWKS instead of PEM.")] = False,
) -> None:
    """Print the public key (PEM), or every trusted key as a JWKS for other verifiers."""
    from ..keys import public_jwk, public_pem
    from ..principal import public_keys

    where = common.paths()
    infos = public_keys(where, common.keystore(where))
    if jwks:
        sys.stdout.write(json.dumps({"keys": [public_jwk(i.x) for i in infos]}, indent=2) + "\n")
        return
    active = [i for i in infos if i.state == "active"]
    sys.stdout.write(public_pem((active or infos)[0].x))
