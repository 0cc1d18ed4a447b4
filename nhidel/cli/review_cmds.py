"""`nhidel review`: granted against used scopes per agent, and a narrower ceiling to apply."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from nhidel.cli import common

SHOWN = 10  # scopes a line names; --json lists them all

if TYPE_CHECKING:
    from collections import Counter

    from nhidel.actions.review import AgentReview, Review
    from nhidel.keys.keystore import KeyStore
    from nhidel.paths import Paths


def register(app: typer.Typer) -> None:
    app.command("review")(review)


def review(
    agent: Annotated[
        str | None, typer.Option("--agent", metavar="AGENT", help="Only this agent.")
    ] = None,
    since: Annotated[
        str,
        typer.Option(
            "--since",
            metavar="TIME",
            help="The window's start: a duration ago (30d, 12h) or an RFC 3339 time.",
        ),
    ] = "30d",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    apply: Annotated[
        bool,
        typer.Option("--apply", help="Narrow each ceiling as proposed (agent update --disallow)."),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="With --apply: do not ask before revoking.")
    ] = False,
) -> None:
    """Show, per agent, what its ceiling allows against what it really used in the window.

    From the sealed audit log (checked first: a log that fails its check is refused, exit 5):
    the ceiling and how many actions each of its scopes covered, the scopes granted and
    exercised (each action counted once), ceiling scopes and grants never used, each grant's
    TTL against how long it was used, denials by reason, and the narrower ceiling (the ceiling
    scopes used) as an agent update command. --apply runs that command for every agent with
    one, asking first as agent update does before revoking (--yes for scripts).
    """
    from nhidel.actions.review import review as review_log
    from nhidel.cli.render import print_json
    from nhidel.errors import UsageError
    from nhidel.timefmt import parse_ago

    if yes and not apply:
        raise UsageError("--yes goes with --apply", "nhidel review --apply --yes")
    now = common.now()
    where = common.paths()
    store = common.keystore(where)
    start = parse_ago(since, now=now, what="--since")
    found = review_log(where, store, since=start, now=now, agent=agent)
    if as_json:
        print_json(found.to_json())
    else:
        _report(found)
    if apply:
        _apply(found, where, store, yes=yes)


def _report(found: Review) -> None:
    from nhidel.cli.render import say
    from nhidel.timefmt import local_clock

    if not found.agents:
        say("no agents yet; add one with: nhidel agent add NAME --allow SCOPE")
        return
    say(f"since {local_clock(found.since)}")
    for number, one in enumerate(found.agents):
        if number:
            _line("")
        _agent_report(one)


def _agent_report(one: AgentReview) -> None:
    from nhidel.cli.render import rows_table
    from nhidel.timefmt import format_duration

    used = one.actions - one.unscoped
    _line(f"agent {one.agent.name}: {_count(one.actions, 'action')}"
          + (f" ({one.unscoped} with --any-scope)" if one.unscoped else "")
          + f", {_count(len(one.grants), 'grant')} issued, "
          + f"{_count(sum(one.denials.values()), 'denial')}")  # fmt: skip
    rows_table(
        ("CEILING", "ACTIONS", "USED"),
        [(str(s), str(one.ceiling_use.get(s, 0)), "no" if s in one.unused_ceiling else "yes")
         for s in one.agent.allow],
    )  # fmt: skip
    if one.granted:
        _line(f"granted: {_most(one.granted)}")
    if used:
        _line(f"exercised: {_most(one.exercised)}")
    if one.grants:
        rows_table(
            ("GRANT", "SCOPES", "TTL", "USED FOR", "ACTIONS"),
            [(g.id[:10], " ".join(g.scopes), format_duration(g.ttl),
              "never" if g.used_for is None else format_duration(g.used_for), str(g.actions))
             for g in one.grants.values()],
        )  # fmt: skip
    if one.denials:
        _line("denials: " + ", ".join(f"{r} {n}" for r, n in sorted(one.denials.items())))
    if one.command is not None:
        _line(f"narrower ceiling: {one.command}")
    elif one.idle:
        _line(f"no ceiling scope used: if {one.agent.name} is no longer needed, "
              f"nhidel agent remove {one.agent.name}")  # fmt: skip
    else:
        _line("every ceiling scope used: nothing to narrow")


def _apply(found: Review, where: Paths, store: KeyStore, *, yes: bool) -> None:
    from nhidel.actions.agents import CeilingChange
    from nhidel.cli.agent_cmds import change_ceiling
    from nhidel.cli.render import say

    proposals = [one for one in found.agents if one.command is not None]
    if not proposals:
        say("nothing to narrow")
    for one in proposals:
        change = CeilingChange(disallow=[str(s) for s in one.unused_ceiling])
        change_ceiling(where, store, one.agent.name, change, yes=yes, again=f"{one.command} --yes")


def _most(counts: Counter[str]) -> str:
    """`scope (n), ...`: the SHOWN most counted (`--json` lists them all)."""
    shown = ", ".join(f"{scope} ({n})" for scope, n in counts.most_common(SHOWN))
    more = len(counts) - SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' if number != 1 else ''}"


def _line(text: str) -> None:
    import sys

    from nhidel.cli.render import safe

    sys.stdout.write(safe(text) + "\n")
