"""`nhidel verify`: the check a gateway runs before an agent's action."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from nhidel.cli import common
from nhidel.cli.errors import ExitQuietly, verdict_stands
from nhidel.errors import ExitStatus, UsageError
from nhidel.tokens.decision import Reason

if TYPE_CHECKING:
    from nhidel.scopes import Scope
    from nhidel.tokens.decision import Decision


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)


def verify(
    token: common.TokenArgument = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            metavar="SCOPE",
            help="A scope the action needs (repeat: all must be granted).",
        ),
    ] = None,
    any_scope: Annotated[
        bool, typer.Option("--any-scope", help="Accept the grant whatever its scopes.")
    ] = False,
    aud: Annotated[
        str | None,
        typer.Option(
            "--aud",
            metavar="AUDIENCE",
            help="This verifier's audience; required for grants that name one.",
        ),
    ] = None,
    consume: Annotated[
        bool, typer.Option("--consume", help="Count one use of the grant (only when allowed).")
    ] = False,
    leeway: Annotated[
        str | None,
        typer.Option(
            "--leeway", metavar="DURATION", help="Clock skew to tolerate, e.g. 30s (default none)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
    jwks: Annotated[
        str | None,
        typer.Option(
            "--jwks",
            metavar="FILE|URL",
            help="Verify remotely: trust this JWKS (file or URL), no ledger.",
        ),
    ] = None,
    status_list: Annotated[
        str | None,
        typer.Option(
            "--status-list",
            metavar="URL",
            help="With --jwks: learn revocations from this status list.",
        ),
    ] = None,
    issuer: Annotated[
        str | None,
        typer.Option(
            "--iss", metavar="ISSUER", help="With --jwks: the issuer the tokens must name."
        ),
    ] = None,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="Read one token per stdin line and print one JSON verdict per line, in order "
            "(as --json shapes it); every other option applies to each line.",
        ),
    ] = False,
) -> None:
    """Exit 0 when the token is valid and grants every --scope; else exit 1 and say why.

    With --batch: one JSON verdict per stdin line; blank or garbled lines are malformed.

    --batch exits 0 only when every line was allowed; --consume counts a use per allowed line.
    """
    from nhidel.cli.render import grant_fields, print_json, say
    from nhidel.timefmt import parse_duration
    from nhidel.tokens.claims import requested_scopes

    # Checked (and parsed) before the token is read or a keystore opened.
    requested = requested_scopes(scope or [], any_scope)
    if scope and any_scope:
        raise UsageError("--scope and --any-scope exclude each other", "pass one of them")
    if jwks is None and (status_list is not None or issuer is not None):
        raise UsageError("--status-list and --iss go with --jwks", "add --jwks FILE|URL")
    if jwks is not None and consume:
        raise UsageError("--consume needs the ledger", "a remote verifier cannot count uses")
    if batch and token is not None:
        raise UsageError("--batch reads the tokens from stdin", "drop the TOKEN argument")
    text = "" if batch else common.read_token(token, command="verify")
    skew = 0 if leeway in (None, "0") else parse_duration(leeway, what="--leeway")
    checking = _checker(requested, any_scope=any_scope, aud=aud, consume=consume, leeway=skew,
                        jwks=jwks, status_list=status_list, issuer=issuer)  # fmt: skip
    if batch:
        from nhidel.verifiers.batch import verify_lines

        # A reader gone before the last verdict: not every line was allowed (some unchecked).
        with checking as check, verdict_stands(ExitStatus.DENIED):
            if not verify_lines(sys.stdin.buffer, sys.stdout.buffer, check):
                raise ExitQuietly(ExitStatus.DENIED)
        return
    with checking as check:
        decision = check(text)
    now = common.now()
    if decision.grant is not None:
        # A ledger row that no grant can hold (hand-edited) is an integrity failure: exit 5
        # naming the grant, whatever the decision, and never a crash while printing it.
        grant_fields(decision.grant, now)
    # SPEC: `integrity` (nhidel's own state failed a check) is exit 5; any other denial is 1.
    status = ExitStatus.OK
    if not decision.allowed:
        status = ExitStatus.INTEGRITY if decision.reason is Reason.INTEGRITY else ExitStatus.DENIED
    with verdict_stands(status):
        if as_json:
            print_json(decision.to_json(now))
        if decision.allowed:
            grant = decision.grant
            if not as_json:
                say(f"allowed: {grant.short_id} ({grant.agent})" if grant else "allowed")
        else:
            say(f"denied: {decision.reason}: {decision.detail}")
    if status is not ExitStatus.OK:
        raise ExitQuietly(status)


@contextlib.contextmanager
def _checker(
    requested: tuple[Scope, ...],
    *,
    any_scope: bool,
    aud: str | None,
    consume: bool,
    leeway: int,
    jwks: str | None,
    status_list: str | None,
    issuer: str | None,
) -> Iterator[Callable[[str], Decision]]:
    """The check of one token: against a JWKS (and a status list), or against the keys pinned
    in the keystore and the local ledger, whose verifier is closed (its decisions written)
    at the end."""
    if jwks is not None:
        from nhidel.verifiers.remote import RemoteVerifier

        remote = RemoteVerifier(jwks, status_list, issuer=issuer, leeway=leeway)
        yield lambda text: remote.check(text, requested, any_scope=any_scope, aud=aud)
        return
    from nhidel.verifiers.local import Verifier

    where = common.paths()
    with Verifier(where, common.keystore(where), leeway=leeway) as verifier:
        yield verifier.checker(requested, any_scope=any_scope, aud=aud, consume=consume)
