"""`nhidel approvals`, `approve`, `deny`: the human answers what enforcement points hold."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from nhidel.cli import common

if TYPE_CHECKING:
    from nhidel.actions.approvals import Listed
    from nhidel.actions.grant_requests import Minting
    from nhidel.keys.keystore import KeyStore
    from nhidel.paths import Paths

ApprovalId = Annotated[
    str,
    typer.Argument(metavar="ID", help="The request's id (or its first 4+ characters)."),
]


def register(app: typer.Typer) -> None:
    approvals_app = typer.Typer(
        help="The requests waiting for a human's yes (approve or deny them).",
        invoke_without_command=True,
    )
    approvals_app.callback()(approvals)
    approvals_app.command("show")(show)
    approvals_app.command("watch")(watch)
    app.add_typer(approvals_app, name="approvals")
    app.command("approve")(approve)
    app.command("deny")(deny)


def approvals(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    every: Annotated[
        bool, typer.Option("--all", help="Also the answered, lapsed and withdrawn ones.")
    ] = False,
) -> None:
    """List the approval requests still open: what each call would do, and since when.

    Each line: the id, the agent, what is asked (the server or route, the tool or request, a
    summary of the arguments nhidel wrote itself) and when it lapses. Approve one with
    nhidel approve ID, refuse it with nhidel deny ID; nhidel approvals show ID prints its full
    arguments.
    """
    if ctx.invoked_subcommand is not None:
        return
    from nhidel.actions.approvals import listed
    from nhidel.cli import request_cmds
    from nhidel.cli.render import print_json, rows_table, say
    from nhidel.relative_time import relative

    where = common.paths()
    now = common.now()
    store = common.keystore(where)
    request_cmds.take_in(where, store)
    found = listed(where, store, now=now, every=every)
    grants = request_cmds.mintings(where, store, found)
    if as_json:
        print_json([_json(item, grants) for item in found])
        return
    rows = [
        (item.id, item.status, item.agent,
         item.summary + (f" — {request_cmds.described(grants[item.id])}"
                         if item.id in grants else ""),
         relative(item.lapses_at, now=now) if item.status == "pending" else "-")
        for item in found
    ]  # fmt: skip
    if not rows_table(("ID", "STATUS", "AGENT", "REQUEST", "LAPSES"), rows):
        say("no approval requests waiting" + ("" if every else " (--all shows answered ones)"))


def show(
    approval_id: ApprovalId,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one request whole: who asks, for what, and its full arguments (escaped)."""
    import sys

    from nhidel.actions.approvals import find
    from nhidel.cli import request_cmds
    from nhidel.cli.render import print_json

    where = common.paths()
    now = common.now()
    store = common.keystore(where)
    request_cmds.take_in(where, store)
    item = find(where, store, approval_id, now=now)
    grants = request_cmds.mintings(where, store, [item])
    if as_json:
        print_json({**_json(item, grants), "arguments": _arguments(item)})
        return
    sys.stdout.write(_details_text(item, grants, now=now) + "\n")


def watch(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print each new request as a JSON line; ask nothing.")
    ] = False,
) -> None:
    """Show requests as they arrive and ask yes or no for each, until Ctrl-C (or q).

    On a terminal: the waiting requests (agent, summary, when each lapses) and a prompt for the
    oldest: y approves it, n or Enter denies it, s skips it, d prints it whole. A desktop
    notification tells of each new request where the platform has one. With --json, each
    request (those already waiting first) is printed as one line with the keys of
    nhidel approvals --json, for a script that answers with nhidel approve or deny.
    """
    import sys

    from nhidel.errors import UsageError

    if not as_json and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("approvals watch asks on a terminal, and this has none",
                         "run it in a terminal, or give --json to print each request as a "
                         "JSON line and answer with nhidel approve/deny")  # fmt: skip
    from nhidel.cli import request_cmds
    from nhidel.cli.approval_watch import print_arrivals, watch_on_terminal

    where = common.paths()
    store = common.keystore(where)
    request_cmds.take_in(where, store)

    def as_json_line(item: Listed) -> dict[str, Any]:
        return _json(item, request_cmds.mintings(where, store, [item]))

    if as_json:
        print_arrivals(where, store, as_json_line)
        return

    def answer(approval_id: str, choice: Any) -> None:
        _answer(approval_id, choice, where=where, store=store)

    def details(item: Listed) -> str:
        return _details_text(item, request_cmds.mintings(where, store, [item]), now=common.now())

    watch_on_terminal(where, store, answer, details)


def approve(
    approval_id: ApprovalId,
    window: Annotated[
        str | None,
        typer.Option(
            "--for",
            metavar="DURATION",
            help="Also let the identical call through for this long (same agent, grant, tool "
            "or request, resource and arguments).",
        ),
    ] = None,
    any_args: Annotated[
        bool, typer.Option("--any-args", help="With --for: whatever the arguments.")
    ] = False,
) -> None:
    """Say yes to a request: the held call goes on (or its identical retry, once).

    A grant request (nhidel request) is minted within the agent's sealed ceiling and sent
    encrypted to the requester's one-time key: approve it only when the key fingerprint nhidel
    approvals shows is the one the requester printed.
    """
    from nhidel.actions.approvals import Choice
    from nhidel.timefmt import parse_duration

    seconds = parse_duration(window, what="--for") if window is not None else None
    _answer(approval_id, Choice(True, seconds, any_args))


def deny(
    approval_id: ApprovalId,
    reason: Annotated[
        str | None,
        typer.Option("--reason", metavar="TEXT", help="Why (the agent is told)."),
    ] = None,
) -> None:
    """Say no to a request: the held call is refused (approval_denied), as is its retry."""
    from nhidel.actions.approvals import Choice
    from nhidel.errors import UsageError
    from nhidel.models import is_plain_text

    if reason is not None and (len(reason) > 500 or not is_plain_text(reason.replace(" ", "_"))):
        raise UsageError("--reason must be printable text of at most 500 characters",
                         "e.g. --reason 'not this account'")  # fmt: skip
    _answer(approval_id, Choice(False, reason=reason))


def _answer(
    approval_id: str, choice: Any, *, where: Paths | None = None, store: KeyStore | None = None
) -> None:
    """Answer one request and say so (`watch` passes the paths and keystore it opened)."""
    from nhidel.actions.approvals import answer
    from nhidel.actions.grant_requests import deliverer
    from nhidel.cli import request_cmds
    from nhidel.cli.render import say
    from nhidel.timefmt import format_duration

    where = where or common.paths()
    store = store or common.keystore(where)
    request_cmds.take_in(where, store)
    done = answer(where, store, approval_id, choice, now=common.now(),
                  deliver=deliverer(store))  # fmt: skip
    verb = "approved" if choice.granted else "denied"
    extra = f" and identical calls for {format_duration(choice.window)}" if choice.window else ""
    if choice.any_args:
        extra += " (any arguments)"
    if done.answer is not None and done.answer.extra:
        extra += f" (grant {done.answer.extra['grant']}, sent sealed to the requester's key)"
    say(f"{verb} {done.id}{extra}: {done.agent}: {done.summary}")


def _json(item: Listed, grants: dict[str, Minting]) -> dict[str, Any]:
    from nhidel.cli.request_cmds import as_json
    from nhidel.timefmt import rfc3339

    request = item.request
    body = request.body if request is not None else {}
    answer = item.answer
    return {
        "id": item.id,
        "status": item.status,
        "kind": request.kind if request is not None else None,
        "agent": item.agent,
        "summary": item.summary,
        "grant": body.get("grant"),
        "call": body.get("call"),
        "mark": body.get("mark"),
        "created_at": rfc3339(request.created_at) if request is not None else None,
        "lapses_at": rfc3339(item.lapses_at),
        "answer": None if answer is None else {
            "decision": answer.decision, "at": rfc3339(answer.answered_at),
            "reason": answer.reason,
            "until": rfc3339(answer.window["until"]) if answer.window else None,
            "any_args": bool(answer.window and answer.window["call"]["args_sha256"] is None),
        },
        "forged": item.forged,
        "grant_request": as_json(grants[item.id]) if item.id in grants else None,
    }  # fmt: skip


def _details(item: Listed, *, now: int) -> list[tuple[str, str]]:
    from nhidel.relative_time import relative

    request = item.request
    lines = [("id", item.id), ("status", item.status), ("agent", item.agent)]
    if item.forged is not None:
        return [*lines, ("forged", item.forged)]
    assert request is not None  # noqa: S101 - a request whose seal held
    body = request.body
    call = body.get("call")
    if isinstance(call, dict):
        lines += [("grant", str(body.get("grant"))), ("target", str(call.get("target"))),
                  ("action", str(call.get("action"))),
                  ("resources", " ".join(call.get("resources") or []) or "-"),
                  ("marked by", str(body.get("mark"))),
                  ("args hash", str(call.get("args_sha256")))]  # fmt: skip
    lines += [("summary", item.summary), ("lapses", relative(item.lapses_at, now=now))]
    return lines


def _details_text(item: Listed, grants: dict[str, Minting], *, now: int) -> str:
    """What `approvals show` prints: a field a line (escaped), what approving a grant request
    would mint, then the full arguments (which nhidel escaped when it wrote them)."""
    from nhidel.cli import request_cmds
    from nhidel.cli.render import safe

    lines = _details(item, now=now)
    if item.id in grants:
        lines += request_cmds.details(grants[item.id])
    text = "\n".join(f"{key.ljust(10)}  {safe(value)}" for key, value in lines)
    arguments = _arguments(item)
    return text if arguments is None else f"{text}\narguments:\n{arguments}"


def _arguments(item: Listed) -> str | None:
    if item.request is None:
        return None
    arguments = item.request.body.get("arguments")
    return arguments if isinstance(arguments, str) else None
