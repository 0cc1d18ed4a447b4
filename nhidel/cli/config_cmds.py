"""`nhidel config show|set|unset`: the principal, the issuer and the settings."""

from __future__ import annotations

import sys
from enum import StrEnum
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
