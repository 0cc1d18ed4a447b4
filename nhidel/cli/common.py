"""What every command needs: the clock, the paths, the keystore."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from nhidel.paths import Paths

if TYPE_CHECKING:
    from nhidel.actions.approvals import Settings
    from nhidel.keys.keystore import KeyStore


def now() -> int:
    return int(time.time())


def paths() -> Paths:
    return Paths.from_env()


def keystore(where: Paths, *, revoke_orphans: bool = True) -> KeyStore:
    """The keystore, and (unless `revoke_orphans` is false: doctor changes nothing) the grants
    of `nhidel exec` runs that ended without revoking them revoked first, each named."""
    import getpass

    from nhidel.keys.keystore import open_keystore  # not for commands that only read the ledger

    store = open_keystore(where, prompt=getpass.getpass)
    if revoke_orphans:
        _revoke_orphans(where, store)
    return store


def _revoke_orphans(where: Paths, store: KeyStore) -> None:
    """Revoke what killed `exec` runs left live (nhidel.enforce.bound); a failure is said and
    left to the command, which meets the same problem and reports it."""
    import os

    try:
        if not os.listdir(where.runs_dir):  # the usual case: no exec running or killed
            return
    except OSError:
        return
    from nhidel.cli.render import say
    from nhidel.enforce.bound import revoke_orphans
    from nhidel.errors import NhidelError

    try:
        orphans = revoke_orphans(where, store, now=now())
    except NhidelError as exc:
        say(f"note: could not revoke the grant of a command that ended without it: {exc.message}")
        return
    for orphan in orphans:
        say(f"note: revoked grant {orphan.grant} of a command (exec, mcp run) that ended "
            "without revoking it "
            f"(pid {orphan.pid})")  # fmt: skip


def read_token(argument: str | None, *, command: str) -> str:
    """The token text from the argument, stdin (when the argument is `-`) or $NHIDEL_TOKEN,
    as `verify` and `inspect` read it.

    Bytes that are not UTF-8 are kept as lone surrogates (as Python already does for argv and
    the environment): such a text is refused like any other garbage, never a crash.
    """
    import os
    import sys

    from nhidel.errors import UsageError
    from nhidel.tokens.jws import MAX_TOKEN_LENGTH

    if argument == "-":
        stdin = sys.stdin.buffer if sys.stdin is not None else None
        # A longer one is malformed anyway.
        data = stdin.read(MAX_TOKEN_LENGTH + 2) if stdin is not None else b""
        text = data.decode("utf-8", "surrogateescape")
    elif argument is not None:
        text = argument
    else:
        text = os.environ.get("NHIDEL_TOKEN", "")
    text = text.strip()
    if not text:
        raise UsageError(
            f"no token to {command}", f"pipe it in with '{command} -', or set NHIDEL_TOKEN"
        )
    return text


def republish(where: Paths, store: KeyStore, *, changed: bool) -> None:
    """After a command `changed` revocations or keys: republish (nhidel.actions.publish
    decides whether and where) and say what came of it."""
    from nhidel.actions.publish import republish as publish_again
    from nhidel.cli.render import say

    if not changed:
        return
    done = publish_again(where, store, now=now())
    if done.by_hand:
        say(
            "verifiers on other machines see this once you publish again: "
            "nhidel publish --out DIR (or nhidel status publish --out FILE)"
        )
    elif done.directory is not None:
        say(f"published jwks.json and status.jwt to {done.directory}")


# The token `verify` and `inspect` read (see `read_token`), declared once for both.
TokenArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="TOKEN",
        help="The token, or - to read it from stdin (default: $NHIDEL_TOKEN). Prefer stdin or "
        "the variable: an argument is visible to other processes.",
    ),
]

# Grant flags `grant` and `exec` share, declared once for both.
AudienceOption = Annotated[
    str | None,
    typer.Option("--aud", metavar="AUDIENCE", help="The audience (service) the token is for."),
]
UsesOption = Annotated[
    int | None,
    typer.Option("--uses", metavar="COUNT", help="How many times verify --consume may count it."),
]
ReasonOption = Annotated[
    str | None,
    typer.Option("--reason", metavar="TEXT", help="Why: recorded in the ledger and the audit log."),
]


ApprovalHold = Annotated[
    str,
    typer.Option(
        "--approval-hold",
        metavar="DURATION",
        help="Hold a call an approval mark covers this long for a yes, then answer "
        "approval_pending (default 45s).",
    ),
]
ApprovalTimeout = Annotated[
    str,
    typer.Option(
        "--approval-timeout",
        metavar="DURATION",
        help="Keep an unanswered approval request open this long (default 10m).",
    ),
]


def approval_settings(hold: str, timeout: str) -> Settings:
    """The Enforcer's approval settings from `--approval-hold` and `--approval-timeout`."""
    from nhidel.actions.approvals import Settings
    from nhidel.errors import UsageError
    from nhidel.timefmt import parse_duration

    held = parse_duration(hold, what="--approval-hold") if hold != "0" else 0
    lapses = parse_duration(timeout, what="--approval-timeout")
    if held > lapses:
        raise UsageError("--approval-hold is longer than --approval-timeout",
                         "hold a call no longer than its request stays open")  # fmt: skip
    return Settings(held, lapses)
