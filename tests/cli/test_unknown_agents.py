"""One rule for an agent name nhidel does not know (README, "Exit codes").

`agent show`, `agent update` and `agent remove` need a registered agent; `list --agent` and
`revoke --agent` need a name that is registered or has grants in the ledger (a removed agent's
grants stay there). Otherwise exit 3, and the hint lists the agents: an unknown name is not an
agent to create. `grant` to an unknown agent still says how to add it (that is what it needs).
`audit tail --agent` filters the log, which outlives agents, and never exits 3 for a name.
"""

from __future__ import annotations

import json

import pytest
from helpers.support import Cli

UNKNOWN = [
    ("agent", "show", "nobody"),
    ("agent", "update", "nobody", "--allow", "a:b"),
    ("agent", "remove", "nobody"),
    ("list", "--agent", "nobody"),
    ("list", "--agent", "nobody", "--all", "--json"),
    ("revoke", "--agent", "nobody"),
    ("revoke", "--agent", "nobody", "--yes"),
]


@pytest.mark.parametrize("args", UNKNOWN)
def test_an_unknown_agent_is_not_found_and_the_hint_lists_the_agents(
    ready: Cli, args: tuple[str, ...]
) -> None:
    result = ready(*args)
    assert result.exit_code == 3, result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        "error: no agent named 'nobody'\nhint: see the registered agents: nhidel agent list\n"
    )


def test_granting_to_an_unknown_agent_says_how_to_add_it(ready: Cli) -> None:
    result = ready("grant", "nobody", "--scope", "a:b")
    assert result.exit_code == 3 and "nhidel agent add nobody" in result.stderr


def test_a_removed_agent_is_still_known_where_its_grants_and_records_are(ready: Cli) -> None:
    minted = ready.ok("grant", "reviewer", "--scope", "repo:read:acme/a", "--format", "json")
    grant_id = json.loads(minted.stdout)["id"]
    ready.ok("agent", "remove", "reviewer", "--yes")
    assert ready.ok("list", "--agent", "reviewer").stderr == "no active grants (see --all)\n"
    listed = json.loads(ready.ok("list", "--agent", "reviewer", "--all", "--json").stdout)
    assert [(g["id"], g["status"]) for g in listed] == [(grant_id, "revoked")]
    assert ready.ok("revoke", "--agent", "reviewer").stderr == "revoked 0 grants\n"
    assert ready("agent", "show", "reviewer").exit_code == 3
    assert ready("agent", "remove", "reviewer").exit_code == 3
    shown = ready.ok("audit", "tail", "--agent", "reviewer").stdout
    assert "agent.removed" in shown and grant_id[:10] in shown


def test_audit_tail_by_an_agent_with_no_records_prints_nothing(ready: Cli) -> None:
    result = ready("audit", "tail", "--agent", "nobody")
    assert (result.exit_code, result.stdout) == (0, "")
