"""`review_records` on a generated log with known usage: exact figures and the proposed ceiling.

The log is built by hand, record by record, as the verifier, the gateway and the broker write
them, so every figure below is known in advance: which action left two records, which came
before the window, which grant was never used.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nhidel.actions.agents import CeilingChange, changed_ceiling
from nhidel.actions.review import PAIRED, AgentReview, review_records
from nhidel.models import Agent
from nhidel.scopes import parse_scopes

DAY = 86400
SINCE = 1_780_000_000
T0 = SINCE + DAY  # the agent's day of work, inside the window

REVIEWER = Agent(
    "reviewer",
    parse_scopes(
        ["repo:read:acme/*", "ticket:create:queue/*", "fs:read_file:/srv/*", "gh:get:repos/*"]
    ),
    3600,
    900,
)
IDLE = Agent("idle-bot", parse_scopes(["deploy:run"]), 3600, 900)


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(name: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"event": name, "agent": "reviewer", "time": stamp(at), **fields}


def issued(grant: str, at: int, ttl: int, *scopes: str) -> dict[str, Any]:
    return record("grant.issued", at, grant=grant, scopes=list(scopes), not_before=at,
                  expires_at=at + ttl)  # fmt: skip


def verified(grant: str, at: float, *requested: str, outcome: str = "allowed",
             **extra: Any) -> dict[str, Any]:  # fmt: skip
    name = "verify.allowed" if outcome == "allowed" else "verify.denied"
    return record(name, at, grant=grant, requested=list(requested), outcome=outcome, **extra)


def tool(
    grant: str, at: float, name: str, *resources: str, reason: str | None = None
) -> dict[str, Any]:
    event = "tool.allowed" if reason is None else "tool.denied"
    return record(event, at, grant=grant, server="fs", tool=name,
                  resources=list(resources) or None, reason=reason)  # fmt: skip


def http(grant: str, at: float, scope: str, reason: str | None = None) -> dict[str, Any]:
    event = "http.allowed" if reason is None else "http.denied"
    return record(event, at, grant=grant, scopes=[scope], reason=reason)


LOG = [
    # Before the window: a ticket created then does not keep ticket:create:queue/* in use.
    tool("g0", SINCE - 10, "read_file", "/srv/old"),
    record("tool.allowed", SINCE - 5, grant="g0", server="ticket", tool="create"),
    http("g0", SINCE - 5, "ticket:create:queue/1"),
    issued("g1", T0, 3600, "repo:read:acme/api", "fs:read_file:/srv/*"),
    verified("g1", T0 + 30),  # verify --any-scope: an action, but no scope exercised
    verified("g1", T0 + 60, "repo:read:acme/api", count=3, last_time=stamp(T0 + 120)),
    # A gateway call with a use-limited grant: the use it spent, then its own record: one action.
    verified("g1", T0 + 300, "fs:read_file:/srv/a"),
    record("grant.used", T0 + 300, grant="g1", uses=1, max_uses=10),
    tool("g1", T0 + 300.0004, "read_file", "/srv/a"),
    tool("g1", T0 + 600, "read_file", "/srv/b"),
    issued("g2", T0 + 1000, 900, "gh:get:repos/acme/*"),
    http("g2", T0 + 1100, "gh:get:repos/acme/x"),
    issued("g3", T0 + 2000, 1800, "repo:read:acme/api"),  # never used
    verified("g1", T0 + 700, "ticket:create:queue/1", outcome="scope_not_granted", count=2),
    tool("g1", T0 + 710, "write_file", "/srv/a", reason="scope_not_granted"),
    http("g2", T0 + 2000, "gh:get:repos/acme/z", reason="expired"),
    # A broker denial under the use lock: its verify record and its own, one denial.
    verified("g2", T0 + 1200, "gh:get:repos/acme/y", outcome="revoked"),
    http("g2", T0 + 1200.0002, "gh:get:repos/acme/y", reason="revoked"),
    # Another agent's records, and records that are no actions, count for no one here.
    {**tool("g9", T0, "read_file", "/srv/x"), "agent": "stranger"},
    {"event": "key.created", "agent": None, "time": stamp(T0)},
]


def reviewed(log: list[dict[str, Any]], *agents: Agent) -> dict[str, AgentReview]:
    found = review_records(log, agents or (REVIEWER, IDLE), since=SINCE, until=T0 + DAY)
    return {one.agent.name: one for one in found.agents}


def test_each_action_is_counted_once_whichever_records_it_left() -> None:
    one = reviewed(LOG)["reviewer"]
    assert one.actions == 7  # any-scope 1 + verify 3 + paired gateway call 1 + call 1 + http 1
    assert one.unscoped == 1
    assert dict(one.exercised) == {
        "repo:read:acme/api": 3,
        "fs:read_file:/srv/a": 1,
        "fs:read_file:/srv/b": 1,
        "gh:get:repos/acme/x": 1,
    }
    assert {str(s): n for s, n in one.ceiling_use.items()} == {
        "repo:read:acme/*": 3,
        "fs:read_file:/srv/*": 2,
        "gh:get:repos/*": 1,
    }


def test_granted_scopes_unused_grants_and_ttl_against_the_span_used() -> None:
    one = reviewed(LOG)["reviewer"]
    assert dict(one.granted) == {
        "repo:read:acme/api": 2,
        "fs:read_file:/srv/*": 1,
        "gh:get:repos/acme/*": 1,
    }
    figures = {g.id: (g.ttl, g.actions, g.used_for) for g in one.grants.values()}
    assert figures == {"g1": (3600, 6, 600), "g2": (900, 1, 100), "g3": (1800, 0, None)}
    assert one.unused_grants == ["g3"]


def test_denials_by_reason_count_an_enforced_denial_once() -> None:
    one = reviewed(LOG)["reviewer"]
    assert dict(one.denials) == {"scope_not_granted": 3, "expired": 1, "revoked": 1}


def test_the_narrower_ceiling_is_the_ceiling_scopes_used_as_an_agent_update() -> None:
    one = reviewed(LOG)["reviewer"]
    assert [str(s) for s in one.unused_ceiling] == ["ticket:create:queue/*"]
    assert one.command == "nhidel agent update reviewer --disallow 'ticket:create:queue/*'"
    assert one.narrower is not None
    assert [str(s) for s in one.narrower] == [
        "repo:read:acme/*", "fs:read_file:/srv/*", "gh:get:repos/*"
    ]  # fmt: skip
    # What agent update makes of the proposed --disallow is exactly that ceiling.
    disallow = [str(s) for s in one.unused_ceiling]
    assert changed_ceiling(REVIEWER, CeilingChange(disallow=disallow)).allow == one.narrower


def test_the_json_carries_the_same_figures_under_stable_keys() -> None:
    found = review_records(LOG, [REVIEWER], since=SINCE, until=T0 + DAY).to_json()
    assert set(found) == {"since", "until", "agents"}
    (one,) = found["agents"]
    assert list(one) == [
        "agent", "ceiling", "granted", "exercised", "actions", "unscoped_actions",
        "unused_ceiling", "grants", "unused_grants", "denials", "idle", "narrower_ceiling",
        "disallow", "command",
    ]  # fmt: skip
    assert one["ceiling"][1] == {"scope": "ticket:create:queue/*", "actions": 0}
    assert one["grants"][0]["ttl_seconds"] == 3600 and one["grants"][0]["used_seconds"] == 600
    assert one["disallow"] == ["ticket:create:queue/*"]
    assert one["denials"] == {"expired": 1, "revoked": 1, "scope_not_granted": 3}


def test_an_agent_that_used_every_ceiling_scope_gets_no_proposal() -> None:
    busy = Agent("reviewer", parse_scopes(["repo:read:acme/*", "gh:get:repos/*"]), 3600, 900)
    one = reviewed(LOG, busy)["reviewer"]
    assert one.unused_ceiling == ()
    assert one.narrower is None and one.command is None
    assert one.to_json()["disallow"] == []


def test_an_agent_that_used_nothing_is_idle_and_gets_no_agent_update() -> None:
    idle = reviewed(LOG)["idle-bot"]
    assert idle.actions == 0 and idle.idle
    assert idle.narrower is None and idle.command is None


def test_a_verify_long_before_a_gateway_call_is_another_action() -> None:
    log = [
        verified("g1", T0, "fs:read_file:/srv/a"),
        tool("g1", T0 + PAIRED + 0.5, "read_file", "/srv/a"),
    ]
    assert reviewed(log)["reviewer"].actions == 2


def test_nothing_is_invented_from_a_scope_the_ceiling_no_longer_holds() -> None:
    log = [http("g1", T0, "deploy:run")]  # allowed under an older, wider ceiling
    one = reviewed(log)["reviewer"]
    assert dict(one.exercised) == {"deploy:run": 1}
    assert one.ceiling_use == {}
    assert one.idle and one.command is None


def test_a_resources_request_exercises_server_resources() -> None:
    log = [record("tool.allowed", T0, grant="g1", server="fs", tool="resources/read")]
    wide = Agent("reviewer", parse_scopes(["fs:resources", "fs:read_file:/srv/*"]), 3600, 900)
    one = reviewed(log, wide)["reviewer"]
    assert dict(one.exercised) == {"fs:resources": 1}
    assert one.command == "nhidel agent update reviewer --disallow 'fs:read_file:/srv/*'"


def test_a_verify_that_spent_no_use_is_another_action_however_close() -> None:
    log = [
        verified("g1", T0, "fs:read_file:/srv/a"),  # a plain verify: no grant.used after it
        tool("g1", T0 + 0.0001, "read_file", "/srv/a"),
    ]
    assert reviewed(log)["reviewer"].actions == 2
