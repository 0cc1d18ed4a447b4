"""`nhidel review` on a real home: grants and verifies, then the figures from the sealed log, the
proposed `agent update --disallow`, `--apply` narrowing the ceiling (asking first as `agent
update` does), and a tampered log refused (exit 5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.support import Cli

API = "repo:read:acme/api"
TICKET = "ticket:create:queue/1"
PROPOSED = "nhidel agent update reviewer --disallow 'ticket:create:queue/*'"


def mint(cli: Cli, scope: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cli.ok("grant", "reviewer", "--scope", scope, "--format", "json").stdout
    )
    return found


@pytest.fixture
def used(ready: Cli) -> dict[str, dict[str, Any]]:
    """reviewer verified twice with a repo grant and denied once; its ticket grant unused."""
    api = mint(ready, API)
    ready.ok("verify", "-", "--scope", API, input=api["token"])
    ready.ok("verify", "-", "--scope", API, input=api["token"])
    assert ready("verify", "-", "--scope", "repo:read:acme/web", input=api["token"]).exit_code == 1
    return {"api": api, "ticket": mint(ready, TICKET)}


def review_json(cli: Cli, *args: str) -> dict[str, Any]:
    (one,) = json.loads(cli.ok("review", "--json", *args).stdout)["agents"]
    assert isinstance(one, dict)
    return one


def status(cli: Cli, grant: dict[str, Any]) -> tuple[str, str | None]:
    shown = json.loads(cli.ok("show", grant["id"], "--json").stdout)
    return shown["status"], shown["revoke_reason"]


def allow(cli: Cli) -> list[str]:
    found: list[str] = json.loads(cli.ok("agent", "show", "reviewer", "--json").stdout)["allow"]
    return found


def test_review_json_has_the_figures_of_what_was_granted_and_used(
    ready: Cli, used: dict[str, dict[str, Any]]
) -> None:
    one = review_json(ready, "--agent", "reviewer")
    assert one["ceiling"] == [
        {"scope": "repo:read:acme/*", "actions": 2},
        {"scope": "ticket:create:queue/*", "actions": 0},
    ]
    assert one["granted"] == [{"scope": API, "grants": 1}, {"scope": TICKET, "grants": 1}]
    assert one["exercised"] == [{"scope": API, "actions": 2}]
    assert one["actions"] == 2
    assert one["unused_ceiling"] == ["ticket:create:queue/*"]
    assert one["unused_grants"] == [used["ticket"]["id"]]
    assert [(g["id"], g["ttl_seconds"], g["actions"]) for g in one["grants"]] == [
        (used["api"]["id"], 900, 2), (used["ticket"]["id"], 900, 0)
    ]  # fmt: skip
    assert one["denials"] == {"scope_not_granted": 1}
    assert one["narrower_ceiling"] == ["repo:read:acme/*"]
    assert one["command"] == PROPOSED


def test_the_table_for_people_names_the_proposal(ready: Cli, used: dict[str, Any]) -> None:
    shown = ready.ok("review").stdout
    assert "agent reviewer: 2 actions, 2 grants issued, 1 denial" in shown
    assert "denials: scope_not_granted 1" in shown
    assert f"narrower ceiling: {PROPOSED}" in shown


def test_apply_yes_narrows_the_ceiling_and_revokes_the_grant_it_no_longer_covers(
    ready: Cli, used: dict[str, dict[str, Any]]
) -> None:
    said = ready.ok("review", "--apply", "--yes").stderr
    assert "updated agent reviewer: repo:read:acme/*" in said
    assert allow(ready) == ["repo:read:acme/*"]
    assert status(ready, used["ticket"]) == ("revoked", "ceiling narrowed")
    assert status(ready, used["api"]) == ("active", None)
    after = review_json(ready)
    assert after["unused_ceiling"] == [] and after["command"] is None
    assert "nothing to narrow" in ready.ok("review", "--apply", "--yes").stderr
    assert ready("audit", "verify").exit_code == 0


def test_apply_asks_first_as_agent_update_does(ready: Cli, used: dict[str, Any]) -> None:
    refused = ready("review", "--apply")  # no terminal: it needs --yes
    assert refused.exit_code == 2
    assert f"{PROPOSED} --yes" in refused.stderr
    declined = ready("review", "--apply", input="n\n", terminal=True)
    assert declined.exit_code == 1
    assert "not confirmed: nothing changed" in declined.stderr
    assert allow(ready) == ["repo:read:acme/*", "ticket:create:queue/*"]
    assert status(ready, used["ticket"]) == ("active", None)


def test_a_tampered_log_is_refused_with_exit_5(
    ready: Cli, used: dict[str, Any], nhidel_home: Path
) -> None:
    log = nhidel_home / "audit.jsonl"
    text = log.read_text("utf-8")
    assert '"outcome":"scope_not_granted"' in text
    log.write_text(text.replace('"outcome":"scope_not_granted"', '"outcome":"allowed"'), "utf-8")
    refused = ready("review", "--json")
    assert refused.exit_code == 5
    assert refused.stdout == ""
    assert "error: audit log integrity failure" in refused.stderr


def test_an_unknown_agent_or_window_is_refused(ready: Cli) -> None:
    assert ready("review", "--agent", "nobody").exit_code == 3
    assert ready("review", "--since", "yesterday").exit_code == 2
    assert ready("review", "--since", "+1h").exit_code == 2
    assert ready("review", "--yes").exit_code == 2
