"""`nhidel init` and `nhidel key ...`: the principal's key, public material only."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from nhidel.cli import common


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    key_app = typer.Typer(
        help="Show, export and rotate the principal's keys.", no_args_is_help=True
    )
    key_app.command("show")(show)
    key_app.command("export")(export)
    key_app.command("rotate")(rotate)
    app.add_typer(key_app, name="key")


def init(
    principal: Annotated[
        str | None,
        typer.Option(
            "--principal",
            metavar="NAME",
            help="Who you are: the accountable human (default: your user name).",
        ),
    ] = None,
    issuer: Annotated[
        str | None,
        typer.Option(
            "--issuer",
            metavar="ISSUER",
            help="The tokens' iss (default: nhidel:PRINCIPAL).",
        ),
    ] = None,
) -> None:
    """Create your signing key in the keystore; print its kid and public key."""
    from nhidel.actions.keys import init_principal
    from nhidel.cli.render import say
    from nhidel.keys.material import public_pem

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
    """List the public keys verify trusts, with their states (active, retired, expired)."""
    from nhidel.cli.render import print_json, safe
    from nhidel.keys.principal import public_keys
    from nhidel.timefmt import local_clock_of, relative_with_clock, rfc3339

    where = common.paths()
    now = common.now()
    infos = public_keys(where, common.keystore(where), now=now)
    if as_json:
        print_json([
            {"kid": i.kid, "state": i.state, "created_at": i.created_at,
             "live_until": rfc3339(i.live_until), "issuer": i.issuer,
             "principal": i.principal, "x": i.x}
            for i in infos
        ])  # fmt: skip
        return
    for info in infos:
        created = local_clock_of(info.created_at)
        line = f"{info.kid}  {info.state}  created {safe(created)}  issuer {safe(info.issuer)}"
        if info.live_until is not None:
            line += (f"  verifies its grants until they expire, "
                     f"{relative_with_clock(info.live_until, now=now)}")  # fmt: skip
        sys.stdout.write(line + "\n")


def export(
    jwks: Annotated[bool, typer.Option("--jwks", help="Print a JWKS instead of PEM.")] = False,
) -> None:
    """Print the active public key (PEM), or a JWKS of every key whose grants may be live."""
    from nhidel.actions.publish import jwks_json
    from nhidel.keys.material import public_pem
    from nhidel.keys.principal import public_keys

    where = common.paths()
    if jwks:
        sys.stdout.write(jwks_json(where, common.keystore(where), now=common.now()))
        return
    infos = public_keys(where, common.keystore(where), now=common.now())
    (active,) = [i for i in infos if i.state == "active"]
    sys.stdout.write(public_pem(active.x))


def rotate(
    now_: Annotated[
        bool,
        typer.Option(
            "--now",
            help="After a compromise: drop the old key at once and revoke its grants.",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before revoking (for scripts).")
    ] = False,
) -> None:
    """Make a new active signing key; the old one verifies its grants until they expire.

    With --now, when the old key signed live grants, it says how many it revokes and asks
    first; without a terminal it needs --yes.
    """
    from nhidel.actions.keys import rotate_key
    from nhidel.cli.render import say
    from nhidel.timefmt import relative_with_clock

    where = common.paths()
    now = common.now()
    store = common.keystore(where)
    if now_ and not yes:
        from nhidel.actions.keys import compromise_revokes
        from nhidel.cli.confirm import confirm, live_count

        doomed = compromise_revokes(where, store, now=now)
        if doomed:
            confirm(
                "rotating now stops trusting the signing key at once and revokes the "
                f"{live_count(len(doomed))} it signed",
                again="nhidel key rotate --now --yes",
            )
    rotation = rotate_key(where, store, now=now, compromised=now_)
    message = f"rotated: new signing key {rotation.new_kid}; "
    if rotation.old_live_until is not None:
        message += (f"{rotation.old_kid} verifies its grants until they expire, "
                    f"{relative_with_clock(rotation.old_live_until, now=now)}")  # fmt: skip
    else:
        message += f"{rotation.old_kid} is no longer trusted"
        if rotation.revoked:
            message += f" ({len(rotation.revoked)} of its grants revoked)"
    say(message)
    sys.stdout.write(rotation.new_kid + "\n")
    # Verifiers elsewhere need the new JWKS, and the list signed with the new key.
    common.republish(where, store, changed=True)
