"""`nhidel secret ...`: upstream secrets kept in the keystore, named, never shown."""

from __future__ import annotations

from typing import Annotated

import typer

from nhidel.cli import common


def register(app: typer.Typer) -> None:
    secret_app = typer.Typer(
        help="Keep upstream secrets (API keys, tokens) in the keystore.", no_args_is_help=True
    )
    secret_app.command("add")(add)
    secret_app.command("list")(list_secrets)
    secret_app.command("remove")(remove)
    app.add_typer(secret_app, name="secret")


SecretName = Annotated[
    str, typer.Argument(metavar="NAME", help="The secret's name, e.g. github-token.")
]


def add(
    name: SecretName,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the value of an existing secret.")
    ] = False,
) -> None:
    """Store a secret: typed at a no-echo prompt, or piped on stdin (never an argument)."""
    from nhidel.actions.secrets import add_secret
    from nhidel.cli.render import say

    where = common.paths()
    store = common.keystore(where)
    value = _read_value(name)
    entry = add_secret(where, name, value, replace=replace, now=common.now(), keystore=store)
    say(f"{'replaced' if replace else 'stored'} secret {entry.name}")


def _read_value(name: str) -> str:
    """The value from a no-echo prompt on a terminal, else all of stdin."""
    import getpass
    import sys

    from nhidel.actions.secrets import MAX_SECRET_LENGTH
    from nhidel.errors import UsageError

    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        return getpass.getpass(f"Value of secret {name}: ")
    if stdin is None:
        raise UsageError("no value to store", f"pipe it in: ... | nhidel secret add {name}")
    data = stdin.buffer.read(MAX_SECRET_LENGTH + 3)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the secret is not UTF-8 text", "pipe the value as text") from None


def list_secrets(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List the stored secrets: names, when stored and last used, what uses them."""
    from nhidel.actions.secrets import list_secrets as listed
    from nhidel.cli.render import print_json, rows_table, say
    from nhidel.timefmt import local_clock

    secrets = listed(common.paths())
    if as_json:
        print_json([s.to_json() for s in secrets])
        return
    rows = [
        (
            s.name,
            local_clock(s.created_at),
            local_clock(s.last_used) if s.last_used else "never",
            ", ".join(s.used_by),
        )
        for s in secrets
    ]
    if not rows_table(("SECRET", "STORED", "LAST USED", "USED BY"), rows):
        say("no secrets yet; store one with: nhidel secret add NAME")


def remove(name: SecretName) -> None:
    """Forget a secret (refused while an MCP server or route uses it)."""
    from nhidel.actions.secrets import remove_secret
    from nhidel.cli.render import say

    where = common.paths()
    remove_secret(where, name, now=common.now(), keystore=common.keystore(where))
    say(f"removed secret {name}")
