"""`nhidel grant`, `list`, `show`, `revoke`: minting and managing grants."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from nhidel.cli import common
from nhidel.errors import UsageError
from nhidel.models import SHORT_ID_LENGTH

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path
    from typing import NoReturn, TextIO

    from nhidel.keys.keystore import KeyStore
    from nhidel.models import Grant
    from nhidel.paths import Paths


class TokenFormat(StrEnum):
    token = "token"  # noqa: S105 - an output format name
    json = "json"
    env = "env"
    export = "export"


def register(app: typer.Typer) -> None:
    app.command("grant")(grant)
    app.command("list")(list_grants)
    app.command("show")(show)
    app.command("revoke")(revoke)


def grant(
    agent: Annotated[
        str | None,
        typer.Argument(metavar="AGENT", help="The registered agent to grant to (not with --like)."),
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            metavar="SCOPE",
            help="A scope to grant, within the agent's ceiling (repeat for more; not with --like).",
        ),
    ] = None,
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl",
            metavar="DURATION",
            help="How long the grant lives, e.g. 15m (default: the agent's; with --like, grant "
            "ID's TTL, capped by the agent's max TTL).",
        ),
    ] = None,
    aud: common.AudienceOption = None,
    not_before: Annotated[
        str | None,
        typer.Option(
            "--not-before",
            metavar="TIME",
            help="When it starts: RFC 3339 or +5m (at most 30 days ahead).",
        ),
    ] = None,
    uses: common.UsesOption = None,
    reason: common.ReasonOption = None,
    output: Annotated[
        TokenFormat,
        typer.Option(
            "--format",
            help="token (alone on stdout), json, env (NHIDEL_TOKEN=TOKEN: a dotenv line, which "
            "eval sets but does not export) or export (export NHIDEL_TOKEN='TOKEN': for eval).",
        ),
    ] = TokenFormat.token,
    like: Annotated[
        str | None,
        typer.Option(
            "--like",
            metavar="ID",
            help="Renew: a new grant with grant ID's agent, scopes, audience, reason and use "
            "limit, starting now (or at --not-before). A token cannot be extended: this mints "
            "another.",
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="With --like: revoke grant ID (reason: replaced by the new id) once the new "
            "token is written out.",
        ),
    ] = False,
) -> None:
    """Mint a grant: the token alone on stdout, a summary on stderr.

    A token that cannot be written out (stdout closed, a full disk, a reader gone) reached no
    one: its grant is revoked at once (reason `undelivered`) and the error names it.

    Without --like, AGENT and at least one --scope are required. With --like ID (to renew: a
    token cannot be extended), grant ID's agent, scopes, audience, reason and use limit are
    copied, so AGENT, --scope, --aud, --uses and --reason cannot be given; --ttl and
    --not-before can.
    """
    from nhidel.actions.grants import GrantRequest, issue, replace_with, request_like
    from nhidel.cli.render import grant_summary, json_text, say

    where = common.paths()
    now = common.now()
    original = None
    if like is not None:
        copied = {"AGENT": agent, "--scope": scope, "--aud": aud, "--uses": uses,
                  "--reason": reason}  # fmt: skip
        given = [name for name, value in copied.items() if value is not None]
        if given:
            raise UsageError(
                f"{given[0]} cannot be given with --like: it comes from the grant --like names",
                "leave it out, or grant anew without --like",
            )
        original, request = request_like(where, like, ttl=ttl, not_before=not_before)
    elif replace:
        raise UsageError("--replace goes with --like", "nhidel grant --like ID --replace")
    elif agent is None:
        raise UsageError("missing argument 'AGENT'", "see nhidel grant --help")
    elif not scope:
        raise UsageError("missing option '--scope'", "see nhidel grant --help")
    else:
        request = GrantRequest(agent=agent, scopes=scope, ttl=ttl, aud=aud,
                               not_before=not_before, uses=uses, reason=reason)  # fmt: skip
    store = common.keystore(where)
    issued, token = issue(where, store, request, now=now)
    if output is TokenFormat.json:
        text = json_text({**issued.to_json(now), "token": token})
    elif output is TokenFormat.env:
        text = f"NHIDEL_TOKEN={token}\n"
    elif output is TokenFormat.export:
        text = f"export NHIDEL_TOKEN={_single_quoted(token)}\n"
    else:
        text = token + "\n"
    try:
        _deliver(text)
    except (OSError, ValueError) as exc:  # BrokenPipeError is an OSError
        _revoke_undelivered(where, store, issued, exc)
    summary = grant_summary(issued, now)
    say(summary if original is None else f"{summary} (like {original.short_id})")
    if replace and original is not None:
        # Only now: the new token is out, so the old one is never revoked for nothing.
        replaced = replace_with(where, store, original, issued, now=common.now())
        done = "revoked" if replaced.revoked else "was already revoked"
        say(f"{original.short_id} {done} (replaced by {issued.short_id})")
        common.republish(where, store, changed=True)


def _single_quoted(text: str) -> str:
    """`text` in single quotes for a POSIX shell (a token has no quote, but eval is unforgiving)."""
    return "'" + text.replace("'", "'\\''") + "'"


def _deliver(text: str) -> None:
    """Write `text` to stdout and flush it: when this returns, the token has left the process."""
    out = sys.stdout
    if out is None:  # fd 1 was closed when nhidel started (`nhidel grant ... >&-`)
        import errno

        raise OSError(errno.EBADF, "standard output is closed")
    out.write(text)
    out.flush()


def _revoke_undelivered(where: Paths, store: KeyStore, issued: Grant, exc: Exception) -> NoReturn:
    """Revoke a grant whose token could not be written out, then fail naming it."""
    from nhidel.actions.grants import revoke
    from nhidel.errors import NhidelError

    why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    try:
        revoke(where, ids=[issued.id], reason="undelivered", now=common.now(), keystore=store)
    except NhidelError as failed:
        raise type(failed)(
            f"could not write out the token of grant {issued.id} ({why}), nor revoke it: "
            f"{failed.message}",
            f"revoke it by hand once that is fixed: nhidel revoke {issued.id}",
        ) from None
    raise NhidelError(
        f"could not write out the token of grant {issued.id} ({why}); "
        "the grant is revoked (undelivered)",
        "check where stdout goes (a closed pipe or file, a full disk), then grant again",
    )


def list_grants(
    agent: Annotated[
        str | None, typer.Option("--agent", metavar="AGENT", help="Only this agent's grants.")
    ] = None,
    include_all: Annotated[
        bool,
        typer.Option("--all", help="Also expired, revoked and exhausted grants (same order)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List active and pending grants with their status, soonest to expire first.

    With --all, every grant, in the same order (so expired grants come before live ones);
    --json lists in that order too.
    """
    from nhidel.ledger.store import Ledger

    now = common.now()
    where = common.paths()
    with Ledger(where) as ledger:
        # An agent neither registered nor in the ledger is not found, as for `revoke --agent`
        # (config.toml is read only then: listing a known agent's grants stays fast).
        if agent is not None and not ledger.has_agent(agent):
            from nhidel.config import load_config, unknown_agent

            if agent not in load_config(where).agents:
                raise unknown_agent(agent)
        rows = ledger.grant_rows(now=now, agent=agent, include_all=include_all)
        if as_json:
            from nhidel.ledger.rows import JsonRows

            _stream_json_array(JsonRows(now).lines(rows), spool_dir=where.state_dir)
            return
        from nhidel.cli.render import grants_table, say

        if not grants_table(rows, now):
            say("no grants" if include_all else "no active grants (see --all)")


# Output held back in memory up to this many characters (a few MB), then in a temp file.
_SPOOL_IN_MEMORY = 1 << 22


def _stream_json_array(items: Iterable[str], *, spool_dir: Path) -> None:
    """Write a JSON array of already-encoded items, one a line, all or nothing.

    Every item is read before the first byte reaches stdout, so a corrupt row (IntegrityError,
    exit 5) leaves stdout empty rather than holding an array cut short. Memory stays flat: past
    a few MB the text waits in a temp file, 0600 in the ledger's own directory and unlinked
    from the start, and is copied out at the end.
    """
    import tempfile

    from nhidel.errors import StorageError

    held: list[str] = []
    size = 0
    spool: TextIO | None = None
    try:
        try:
            for part in _json_array_parts(items):
                if spool is not None:
                    spool.write(part)
                    continue
                held.append(part)
                size += len(part)
                if size > _SPOOL_IN_MEMORY:
                    spool = tempfile.TemporaryFile(
                        "w+", encoding="utf-8", newline="", dir=spool_dir
                    )
                    spool.writelines(held)
                    held.clear()
            if spool is not None:
                spool.seek(0)
        except OSError as exc:  # the spool's own writes; stdout's errors are not caught here
            raise StorageError(
                f"could not hold the listing in a temp file in {spool_dir}: {exc.strerror or exc}",
                "free disk space, or list fewer grants at once (--agent A, or without --all)",
            ) from None
        if spool is None:
            sys.stdout.writelines(held)
        else:
            import shutil

            shutil.copyfileobj(spool, sys.stdout)
    finally:
        if spool is not None:
            spool.close()


def _json_array_parts(items: Iterable[str]) -> Iterator[str]:
    """`[`, the items one a line and indented by two, `]`, in parts of many items each."""
    from itertools import islice

    remaining = iter(items)
    separator = "[\n  "
    while chunk := list(islice(remaining, 512)):
        yield separator + ",\n  ".join(chunk)
        separator = ",\n  "
    yield "[]\n" if separator == "[\n  " else "\n]\n"


def show(
    grant_id: Annotated[str, typer.Argument(metavar="ID", help="A grant id or unique prefix.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one grant (for a token, see nhidel inspect)."""
    from nhidel.cli.render import grant_details, grant_fields, print_json
    from nhidel.ledger.store import Ledger
    from nhidel.models import refuse_token_as_id

    refuse_token_as_id(grant_id)
    now = common.now()
    with Ledger(common.paths()) as ledger:
        try:
            (found,) = ledger.resolve([grant_id])
        except (TypeError, ValueError, AttributeError):  # a row no Grant can hold (a blob)
            from nhidel.ledger.rows import corrupt_row

            raise corrupt_row(grant_id, "a value of the wrong type") from None
    if as_json:
        print_json(grant_fields(found, now))  # a corrupt row: exit 5 naming it, as list does
    else:
        grant_details(found, now)


def revoke(
    grant_ids: Annotated[
        list[str] | None, typer.Argument(metavar="ID", help="Grant ids or unique prefixes.")
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option("--agent", metavar="AGENT", help="Revoke every live grant of this agent."),
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Revoke every live grant.")] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Do not ask before revoking by --agent or --all (for scripts)."
        ),
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", metavar="TEXT", help="Why; recorded.")
    ] = None,
) -> None:
    """Revoke grants: by id (all resolved first), or every live grant of an agent, or all.

    By --agent or --all, it says how many live grants it will revoke and asks first; without a
    terminal it needs --yes. Used-up, expired and revoked grants are left as they are.
    """
    from nhidel.actions.grants import revoke as revoke_grants
    from nhidel.cli.render import say

    ids = grant_ids or []
    where = common.paths()
    store = common.keystore(where)
    if not (yes or ids) and everything != (agent is not None):  # (else revoke says what is wrong)
        _confirm_bulk(where, store, agent=agent)
    result = revoke_grants(
        where,
        keystore=store,
        ids=ids,
        agent=agent,
        everything=everything,
        reason=reason,
        now=common.now(),
    )
    count = len(result.revoked)
    message = f"revoked {count} grant{'s' if count != 1 else ''}"
    if result.revoked:
        message += ": " + " ".join(g[:SHORT_ID_LENGTH] for g in result.revoked)
    if result.already:
        message += f" ({len(result.already)} already revoked)"
    say(message)
    # Also when all were revoked before: running revoke again mends a failed publish.
    common.republish(where, store, changed=bool(result.revoked or result.already))


def _confirm_bulk(where: Paths, store: KeyStore, *, agent: str | None) -> None:
    """Say how many live grants `revoke --agent`/`--all` takes, and ask (nhidel.cli.confirm)."""
    from nhidel.actions.grants import live_grants
    from nhidel.cli.confirm import confirm, live_count

    doomed = live_grants(where, store, now=common.now(), agent=agent)
    if not doomed:
        return
    if agent is not None:
        confirm(f"this revokes {live_count(len(doomed))} of agent {agent}",
                again=f"nhidel revoke --agent {agent} --yes")  # fmt: skip
        return
    agents = sorted({grant.agent for grant in doomed})
    of = f"agent{'s' if len(agents) != 1 else ''} {', '.join(agents)}"
    confirm(f"this revokes every live grant ({len(doomed)}, of {of})",
            again="nhidel revoke --all --yes")  # fmt: skip
