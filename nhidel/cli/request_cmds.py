"""`nhidel request`: ask a human for a grant, just in time, without the keystore."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nhidel.cli import common

if TYPE_CHECKING:
    from nhidel.actions.approvals import Listed
    from nhidel.actions.grant_requests import Asked, Minting, OneTimeKey, Outcome
    from nhidel.keys.keystore import KeyStore
    from nhidel.paths import Paths

POLL_FILES = 0.5  # seconds between looks at the ledger while waiting through the files


class Via(StrEnum):
    AUTO = "auto"
    DAEMON = "daemon"
    FILES = "files"


def register(app: typer.Typer) -> None:
    app.command("request")(request)


def request(
    agent: Annotated[str, typer.Argument(metavar="AGENT", help="The agent the grant is for.")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", metavar="SCOPE", help="A scope to ask for (repeatable)."),
    ],
    reason: Annotated[
        str, typer.Option("--reason", metavar="TEXT", help="Why: the human reads it.")
    ],
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", metavar="DURATION", help="How long (default: the agent's)."),
    ] = None,
    wait: Annotated[
        str | None,
        typer.Option(
            "--wait",
            metavar="DURATION",
            help="Wait this long (--wait alone: 10m) for the answer, then print the token. "
            "Also how long the request stays open.",
        ),
    ] = None,
    via: Annotated[
        Via,
        typer.Option(
            "--via",
            help="How to send it: daemon (authenticated by the grant in $NHIDEL_TOKEN), files "
            "(unauthenticated), auto (daemon when NHIDEL_TOKEN is set).",
        ),
    ] = Via.AUTO,
    daemon: Annotated[
        str | None,
        typer.Option(
            "--daemon",
            metavar="ADDRESS",
            help="The daemon's address (unix:PATH or http://IP:PORT; default: the nhidel "
            "proxy running for this home).",
        ),
    ] = None,
) -> None:
    """Ask a human for a grant: approve mints it and only this command can read it.

    Needs no keystore. It makes a one-time key pair, prints its fingerprint on stderr (nhidel
    approvals shows the same one beside the request: compare them), and sends the request
    through the daemon (authenticated by a grant of AGENT in $NHIDEL_TOKEN) or into nhidel's
    files (marked unauthenticated). With --wait it prints the token on stdout once approved
    (exit 0), or approval_denied / approval_timeout (exit 1). Without --wait it prints the
    request id and ends: the one-time key ends with it, so the grant cannot be delivered.
    """
    import os

    from nhidel.actions.grant_requests import OneTimeKey, asked, lapse_for
    from nhidel.cli.render import say
    from nhidel.timefmt import parse_duration

    seconds = parse_duration(wait, what="--wait") if wait is not None else None
    key = OneTimeKey()
    filed = asked(agent, scope, ttl, reason, key.pubkey)
    now = common.now()
    lapses_at = lapse_for(seconds, now)
    token = os.environ.get("NHIDEL_TOKEN", "").strip()
    through_daemon = via is Via.DAEMON or (via is Via.AUTO and bool(token))
    if through_daemon:
        address = _daemon_address(daemon)
        approval_id = _send(address, token, filed, lapses_at - now)
    else:
        approval_id = _write(filed, now=now, lapses_at=lapses_at)
    say(f"request {approval_id}: key fingerprint {key.fingerprint}")
    say(
        f"  (nhidel approvals shows it; approve only if the fingerprint there is {key.fingerprint})"
    )
    if seconds is None:
        import sys

        sys.stdout.write(approval_id + "\n")
        return
    deadline = min(now + seconds, lapses_at)
    if through_daemon:
        outcome = _wait_daemon(address, token, approval_id, deadline)
    else:
        outcome = _wait_files(approval_id, deadline)
    _end(outcome, key)


def _daemon_address(given: str | None) -> str:
    from nhidel.actions.daemon import find
    from nhidel.errors import NhidelError

    if given is not None:
        return given
    running = [d for d in find(common.paths()) if d.state == "running"]
    if not running:
        raise NhidelError(
            "no nhidel proxy is running for this home",
            "start one (nhidel proxy), give its address with --daemon, or send the request "
            "through nhidel's files: --via files",
        )
    return running[0].url


def _send(address: str, token: str, filed: Asked, lapse: int) -> str:
    from nhidel.actions.daemon_requests import send
    from nhidel.errors import UsageError

    if not token:
        raise UsageError(
            "--via daemon needs a grant of the agent in NHIDEL_TOKEN",
            "set NHIDEL_TOKEN, or send the request through the files: --via files",
        )
    return str(send(address, token, filed, lapse=lapse)["id"])


def _write(filed: Asked, *, now: int, lapses_at: int) -> str:
    from nhidel.actions.approvals import new_approval_id
    from nhidel.actions.grant_requests import write_file

    approval_id = new_approval_id()
    write_file(common.paths(), approval_id, filed, now=now, lapses_at=lapses_at)
    return approval_id


def _wait_daemon(address: str, token: str, approval_id: str, deadline: int) -> Outcome:
    from nhidel.actions.daemon_requests import poll
    from nhidel.integrity.approvals import PENDING

    while True:
        left = deadline - common.now()
        outcome = poll(address, token, approval_id, wait=max(left, 0))
        if outcome.status != PENDING or common.now() >= deadline:
            return outcome


def _wait_files(approval_id: str, deadline: int) -> Outcome:
    import time

    from nhidel.actions.grant_requests import outcome_in_files
    from nhidel.integrity.approvals import PENDING

    where = common.paths()
    while True:
        outcome = outcome_in_files(where, approval_id, now=common.now())
        if outcome.status != PENDING or common.now() >= deadline:
            return outcome
        time.sleep(POLL_FILES)


def _end(outcome: Outcome, key: OneTimeKey) -> None:
    import sys

    from nhidel.actions.grant_requests import DROPPED
    from nhidel.cli.errors import ExitQuietly
    from nhidel.cli.render import say
    from nhidel.errors import ExitStatus, IntegrityError
    from nhidel.integrity.approvals import DENIED, GRANTED

    if outcome.status == GRANTED:
        if outcome.box is None:
            raise IntegrityError("the request was approved without a token sealed to its key",
                                 "run nhidel audit verify")  # fmt: skip
        sys.stdout.write(key.open(outcome.box) + "\n")
        return
    if outcome.status == DENIED:
        say("approval_denied" + (f": {outcome.reason}" if outcome.reason else ""))
    elif outcome.status == DROPPED:
        say("approval_timeout: the request file was removed without being taken in")
    else:
        say("approval_timeout")
    raise ExitQuietly(ExitStatus.DENIED)


# -- what approvals, approve and deny show of grant requests (nhidel.cli.approval_cmds) ----


def take_in(where: Paths, store: KeyStore) -> None:
    """Take in the request files written without a daemon (sealed, marked unauthenticated):
    every command that lists or answers approvals does this first."""
    from nhidel.actions.grant_requests import take_in_files
    from nhidel.cli.render import say

    take_in_files(where, store, now=common.now(), warn=lambda line: say(f"warning: {line}"))


def mintings(where: Paths, store: KeyStore, items: list[Listed]) -> dict[str, Minting]:
    """What approve would mint for each grant request among `items`, checked now."""
    from nhidel.actions.grant_requests import minting

    requests = [item.request for item in items if item.request is not None]
    return minting(where, store, requests, now=common.now())


def described(found: Minting) -> str:
    """One line: what approve mints, the key fingerprint, and a refusal if it would refuse."""
    from nhidel.timefmt import format_duration

    ttl = format_duration(found.ttl) if found.ttl is not None else "?"
    line = (
        f"approve mints: {found.agent} {' '.join(found.scopes)} for {ttl}; key "
        f"{found.fingerprint}; {'authenticated' if found.authenticated else 'UNAUTHENTICATED'}"
        f" (via {found.via})"
    )
    if found.refusal is not None:
        line += f"; REFUSED, beyond the ceiling now: {found.refusal}"
    return line


def details(found: Minting) -> list[tuple[str, str]]:
    """`approvals show` lines for a grant request."""
    from nhidel.timefmt import format_duration

    return [
        ("mints", f"{found.agent} {' '.join(found.scopes)}"),
        ("ttl", format_duration(found.ttl) if found.ttl is not None else "?"),
        ("key", found.fingerprint),
        ("sender", ("authenticated" if found.authenticated else "UNAUTHENTICATED")
                   + f" (via {found.via})"),
        ("ceiling", "within it" if found.refusal is None else f"BEYOND IT: {found.refusal}"),
    ]  # fmt: skip


def as_json(found: Minting) -> dict[str, Any]:
    return {"agent": found.agent, "scopes": list(found.scopes), "ttl": found.ttl,
            "fingerprint": found.fingerprint, "authenticated": found.authenticated,
            "via": found.via, "refusal": found.refusal}  # fmt: skip
