"""`nhidel config`, `nhidel status publish` and `nhidel publish`: serving verifiers elsewhere."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from nhidel.cli import common


class Setting(StrEnum):
    status_uri = "status-uri"
    status_dir = "status-dir"


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(help="Show and change nhidel's settings.", no_args_is_help=True)
    config_app.command("show")(config_show)
    config_app.command("set")(config_set)
    config_app.command("unset")(config_unset)
    app.add_typer(config_app, name="config")
    status_app = typer.Typer(
        help="The signed token status list that verifiers elsewhere check revocation with.",
        no_args_is_help=True,
    )
    status_app.command("publish")(status_publish)
    app.add_typer(status_app, name="status")
    app.command("publish")(publish)


def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the principal, the issuer and the settings."""
    from nhidel.cli.render import print_json, safe
    from nhidel.config import load_config

    config = load_config(common.paths())
    shown = {"principal": config.principal, "issuer": config.issuer,
             "status_uri": config.status_uri, "status_dir": config.status_dir}  # fmt: skip
    if as_json:
        print_json(shown)
        return
    for name, value in shown.items():
        label = name.replace("_", "-")
        sys.stdout.write(f"{label}: {safe(value) if value is not None else '(not set)'}\n")


SettingArgument = Annotated[
    Setting, typer.Argument(metavar="NAME", help="The setting: status-uri or status-dir.")
]


def config_set(
    name: SettingArgument,
    value: Annotated[str, typer.Argument(metavar="VALUE", help="Its new value.")],
) -> None:
    """Set status-uri (where the status list is served) or status-dir (where revoke publishes)."""
    from nhidel.actions.settings import set_status_dir, set_status_uri
    from nhidel.cli.render import say

    where = common.paths()
    store = common.keystore(where)
    if name is Setting.status_uri:
        set_status_uri(where, store, value, now=common.now())
        say(f"status-uri set to {value}; new grants carry it, older ones do not")
    else:
        config = set_status_dir(where, store, value, now=common.now())
        say(f"status-dir set to {config.status_dir}; revoke and key rotate publish there")


def config_unset(name: SettingArgument) -> None:
    """Clear a setting."""
    from nhidel.actions.settings import set_status_dir, set_status_uri
    from nhidel.cli.render import say

    where = common.paths()
    store = common.keystore(where)
    if name is Setting.status_uri:
        set_status_uri(where, store, None, now=common.now())
        say("status-uri cleared; new grants carry no status claim")
    else:
        set_status_dir(where, store, None, now=common.now())
        say("status-dir cleared; publish with nhidel publish --out DIR")


TtlOption = Annotated[
    str | None,
    typer.Option(
        "--ttl", metavar="DURATION", help="How long the list is valid: its exp (default 1h)."
    ),
]
CacheTtlOption = Annotated[
    str | None,
    typer.Option(
        "--cache-ttl",
        metavar="DURATION",
        help="How long a verifier may cache it: its ttl claim (default 5m).",
    ),
]


def _durations(ttl: str | None, cache_ttl: str | None) -> tuple[int, int]:
    from nhidel.actions.publish import DEFAULT_CACHE_TTL, DEFAULT_TTL
    from nhidel.timefmt import parse_duration

    return (
        parse_duration(ttl, what="--ttl") if ttl else DEFAULT_TTL,
        parse_duration(cache_ttl, what="--cache-ttl") if cache_ttl else DEFAULT_CACHE_TTL,
    )


def status_publish(
    out: Annotated[
        Path, typer.Option("--out", metavar="FILE", help="The file to write (mode 0644).")
    ],
    ttl: TtlOption = None,
    cache_ttl: CacheTtlOption = None,
) -> None:
    """Write the signed status list token (statuslist+jwt), marking every revoked grant."""
    from nhidel.actions.publish import publish_status
    from nhidel.cli.render import say

    where = common.paths()
    seconds, cache = _durations(ttl, cache_ttl)
    published = publish_status(
        where, common.keystore(where), out, now=common.now(), ttl=seconds, cache_ttl=cache
    )
    say(_summary(published.size, published.revoked, str(out), published.uri))


def publish(
    out: Annotated[
        Path,
        typer.Option(
            "--out", metavar="DIR", help="The directory to write jwks.json and status.jwt into."
        ),
    ],
    ttl: TtlOption = None,
    cache_ttl: CacheTtlOption = None,
) -> None:
    """Write jwks.json and status.jwt into a directory, ready for a static web host."""
    from nhidel.actions.publish import JWKS_FILE, STATUS_FILE, publish_site
    from nhidel.cli.render import say

    where = common.paths()
    seconds, cache = _durations(ttl, cache_ttl)
    published = publish_site(
        where, common.keystore(where), out, now=common.now(), ttl=seconds, cache_ttl=cache
    )
    say(f"wrote {out / JWKS_FILE}")
    say(_summary(published.size, published.revoked, str(out / STATUS_FILE), published.uri))


def _summary(size: int, revoked: int, where: str, uri: str) -> str:
    return (
        f"wrote {where}: {size} entries, {revoked} revoked; serve it at {uri} "
        "(Content-Type: application/statuslist+jwt)"
    )
