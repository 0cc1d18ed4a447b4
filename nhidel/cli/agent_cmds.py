"""`nhidel agent ...`: register agents and their ceilings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from nhidel.cli import common

if TYPE_CHECKING:
    from nhidel.actions.agents import CeilingChange
    from nhidel.keys.keystore import KeyStore
    from nhidel.paths import Paths


def register(app: typer.Typer) -> None:
    agent_app = typer.Typer(
        help="Register agents and the ceiling of what they may be granted.", no_args_is_help=True
    )
    agent_app.command("add")(add)
    agent_app.command("list")(list_agents)
    agent_app.command("show")(show)
    agent_app.command("update")(update)
    agent_app.command("remove")(remove)
    app.add_typer(agent_app, name="agent")


def add(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The agent's name, e.g. release-bot.")
    ],
    allow: Annotated[
        list[str],
        typer.Option(
            "--allow",
            metavar="SCOPE",
            help="A scope the agent may ever be granted (repeat for more).",
        ),
    ],
    max_ttl: Annotated[
        str | None,
        typer.Option("--max-ttl", metavar="DURATION", help="Longest grant allowed (default 1h)."),
    ] = None,
    default_ttl: Annotated[
        str | None,
        typer.Option(
            "--default-ttl",
            metavar="DURATION",
            help="TTL when grant has no --ttl (default 15m, at most --max-ttl).",
        ),
    ] = None,
    aud: Annotated[
        list[str] | None,
        typer.Option(
            "--aud",
            metavar="AUDIENCE",
            help="An audience the agent's grants may name (repeat for more).",
        ),
    ] = None,
    approve: Annotated[
        list[str] | None,
        typer.Option(
            "--approve",
            metavar="SCOPE",
            help="Calls this scope covers wait for a human's yes (within --allow; repeat).",
        ),
    ] = None,
) -> None:
    """Register an agent and its ceiling."""
    from nhidel.actions.agents import add_agent
    from nhidel.cli.render import say
    from nhidel.timefmt import format_duration

    where = common.paths()
    agent = add_agent(
        where,
        name,
        keystore=common.keystore(where),
        allow=allow,
        max_ttl=max_ttl,
        default_ttl=default_ttl,
        audiences=aud or [],
        approve=approve or [],
        now=common.now(),
    )
    say(
        f"added agent {agent.name}: {' '.join(str(s) for s in agent.allow)} "
        f"(ttl {format_duration(agent.default_ttl)}, max {format_duration(agent.max_ttl)}"
        + (f", approve {' '.join(str(s) for s in agent.approve)}" if agent.approve else "")
        + ")"
    )


def list_agents(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List the registered agents."""
    from nhidel.cli.render import agents_table, print_json, say
    from nhidel.config import load_config

    agents = sorted(load_config(common.paths()).agents.values(), key=lambda a: a.name)
    if as_json:
        print_json([agent.to_json() for agent in agents])
    elif not agents_table(agents):
        say("no agents yet; add one with: nhidel agent add NAME --allow SCOPE")


def show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The agent's name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one agent and its ceiling."""
    from nhidel.cli.render import agent_details, print_json
    from nhidel.config import load_config, unknown_agent

    agent = load_config(common.paths()).agents.get(name)
    if agent is None:
        raise unknown_agent(name)
    if as_json:
        print_json(agent.to_json())
    else:
        agent_details(agent)


def update(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The agent's name.")],
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow", metavar="SCOPE", help="A scope to add to the ceiling (repeat for more)."
        ),
    ] = None,
    disallow: Annotated[
        list[str] | None,
        typer.Option(
            "--disallow",
            metavar="SCOPE",
            help="Remove every entry of the ceiling this scope covers (repeat for more).",
        ),
    ] = None,
    max_ttl: Annotated[
        str | None,
        typer.Option(
            "--max-ttl",
            metavar="DURATION",
            help="The new longest grant (a lower one lowers the default TTL with it).",
        ),
    ] = None,
    default_ttl: Annotated[
        str | None,
        typer.Option(
            "--default-ttl", metavar="DURATION", help="The new TTL when grant has no --ttl."
        ),
    ] = None,
    aud: Annotated[
        list[str] | None,
        typer.Option(
            "--aud",
            metavar="AUDIENCE",
            help="The audiences the agent's grants may name, replacing its list (repeat for more).",
        ),
    ] = None,
    approve: Annotated[
        list[str] | None,
        typer.Option(
            "--approve",
            metavar="SCOPE",
            help="Calls this scope covers wait for a human's yes (within the ceiling; repeat).",
        ),
    ] = None,
    no_approve: Annotated[
        list[str] | None,
        typer.Option(
            "--no-approve", metavar="SCOPE", help="Remove an approval mark (repeat for more)."
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before revoking (for scripts).")
    ] = False,
) -> None:
    """Change an agent's ceiling; its grants stay, but for those a narrower one no longer covers.

    Narrowing (--disallow, a lower --max-ttl, fewer --aud) revokes exactly the live grants the
    new ceiling no longer covers: a scope it lacks, an audience it does not list, or more time
    left than the new maximum TTL. It names them and asks first; without a terminal it needs
    --yes. Widening revokes nothing.
    """
    from nhidel.actions.agents import CeilingChange

    where = common.paths()
    change = CeilingChange(allow or [], disallow or [], max_ttl, default_ttl, aud,
                           approve or [], no_approve or [])  # fmt: skip
    change_ceiling(where, common.keystore(where), name, change, yes=yes,
                   again=f"nhidel agent update {name} (the same options) --yes")  # fmt: skip


def change_ceiling(
    where: Paths, store: KeyStore, name: str, change: CeilingChange, *, yes: bool, again: str
) -> None:
    """Make one ceiling change as `agent update` does (and `review --apply` with it): name the
    live grants a narrowing revokes and ask first unless `yes` (`again`: the command line to
    run with --yes), then change it, say what changed, and republish when grants went."""
    from nhidel.actions.agents import plan_update, update_agent
    from nhidel.cli.confirm import confirm, live_count, short_ids
    from nhidel.cli.render import say
    from nhidel.timefmt import format_duration

    if not yes:
        doomed = plan_update(where, name, change, now=common.now(), keystore=store).revoked
        if doomed:
            confirm(f"agent {name}'s narrower ceiling no longer covers {live_count(len(doomed))}, "
                    f"which this revokes: {short_ids(doomed)}", again=again)  # fmt: skip
    done = update_agent(where, name, change, now=common.now(), keystore=store)
    if not done.changed:
        say(f"agent {name} unchanged: its ceiling is already that")
        return
    after = done.after
    message = (
        f"updated agent {name}: {' '.join(str(s) for s in after.allow)} "
        f"(ttl {format_duration(after.default_ttl)}, max {format_duration(after.max_ttl)}"
        + (f", aud {' '.join(after.audiences)}" if after.audiences else "")
        + (f", approve {' '.join(str(s) for s in after.approve)}" if after.approve else "")
        + ")"
    )
    count = len(done.revoked)
    if count:
        message += f"; revoked {count} grant{'s' if count != 1 else ''}: {short_ids(done.revoked)}"
    say(message)
    common.republish(where, store, changed=count > 0)


def remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The agent's name.")],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before revoking (for scripts).")
    ] = False,
) -> None:
    """Remove an agent, revoking every grant of it that is still live.

    With live grants, it says how many and asks first; without a terminal it needs --yes.
    """
    from nhidel.actions.agents import remove_agent
    from nhidel.cli.render import say

    where = common.paths()
    store = common.keystore(where)
    if not yes:
        from nhidel.actions.grants import live_grants
        from nhidel.cli.confirm import confirm, live_count

        doomed = live_grants(where, store, now=common.now(), agent=name)
        if doomed:
            confirm(f"removing agent {name} revokes its {live_count(len(doomed))}",
                    again=f"nhidel agent remove {name} --yes")  # fmt: skip
    removal = remove_agent(where, name, now=common.now(), keystore=store)
    count = len(removal.revoked)
    say(f"removed agent {name}; revoked {count} grant{'s' if count != 1 else ''}")
    common.republish(where, store, changed=count > 0)
