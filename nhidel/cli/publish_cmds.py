"""`nhidel status publish` and `nhidel publish`: serving verifiers elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nhidel.cli import common


def register(app: typer.Typer) -> None:
    status_app = typer.Typer(
        help="The signed token status list that verifiers elsewhere check revocation with.",
        no_args_is_help=True,
    )
    status_app.command("publish")(status_publish)
    app.add_typer(status_app, name="status")
    app.command("publish")(publish)


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
