"""What people read about time and grants: one way to say a time, one order for every listing.

Relative times come from one formatter (`in 1h 30m`, at most two units, rounded to the nearest),
so `grant`, `list`, `show` and completion agree a second apart. Absolute times are local, with the
date and the zone's abbreviation; JSON keeps RFC 3339 UTC. `list` says each grant's status (and
when a pending one starts), and every listing is soonest to expire first, ties by id.

The clock is fixed (`nhidel.cli.common.now`) and the zone pinned (TZ), so the text is exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from helpers.local_zone import BERLIN, UTC, pinned_zone
from helpers.support import Cli

from nhidel.cli import common, complete

T = 1_795_428_000  # 2026-11-23T10:00:00Z, 11:00 in Berlin


class Clock:
    """What `nhidel.cli.common.now` answers; a test moves it."""

    def __init__(self, now: int) -> None:
        self.now = now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fixed = Clock(T)
    monkeypatch.setattr(common, "now", lambda: fixed.now)
    return fixed


@pytest.fixture
def berlin() -> Iterator[None]:
    with pinned_zone(BERLIN):
        yield


@pytest.fixture
def alice(cli: Cli, clock: Clock, berlin: None, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """A principal and the agent `reviewer`, made at T; a terminal wide enough for no fold."""
    monkeypatch.setenv("COLUMNS", "120")
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1d")
    return cli


def grant(cli: Cli, *args: str) -> tuple[str, str]:
    """Mint a grant for reviewer: (its full id, the summary on stderr)."""
    result = cli.ok("grant", "reviewer", "--format", "json", *args)
    return str(json.loads(result.stdout)["id"]), result.stderr


def table(cli: Cli, *args: str) -> list[dict[str, str]]:
    """`nhidel list` as rows of {column: cell}, cut at the header's column starts."""
    header, *lines = cli.ok("list", *args).stdout.splitlines()
    names = header.split()
    starts = [header.index(name) for name in names]
    ends = [*starts[1:], None]
    return [
        {
            name: line[start:end].strip()
            for name, start, end in zip(names, starts, ends, strict=True)
        }
        for line in lines
    ]


def shown(cli: Cli, grant_id: str) -> dict[str, str]:
    """`nhidel show` as {field: value}."""
    pairs = (line.split("  ", 1) for line in cli.ok("show", grant_id).stdout.splitlines())
    return {key: value.strip() for key, value in pairs}


def described(grant_id: str, now: int) -> str:
    return dict(complete.candidates(["revoke", ""], now=now))[grant_id]


# -- one relative time, everywhere -------------------------------------------------------------


def test_a_90_minute_grant_reads_in_1h_30m_in_grant_list_show_and_completion(
    alice: Cli, clock: Clock
) -> None:
    grant_id, summary = grant(alice, "--scope", "repo:read:acme/api", "--ttl", "90m")
    assert summary == (
        f"granted {grant_id[:10]} to reviewer: repo:read:acme/api; "
        "expires in 1h 30m (2026-11-23 12:30 CET)\n"
    )
    clock.now = T + 1  # a second later, every view still agrees
    (row,) = table(alice)
    assert row["EXPIRES"] == "in 1h 30m"
    assert shown(alice, grant_id)["expires_at"] == "in 1h 30m (2026-11-23 12:30 CET)"
    assert described(grant_id, T + 1) == "reviewer repo:read:acme/api, expires in 1h 30m"
    clock.now = T + 31  # 1h 29m 29s: rounded to the nearest minute, never up to "2h"
    assert table(alice)[0]["EXPIRES"] == "in 1h 29m"
    assert described(grant_id, T + 31) == "reviewer repo:read:acme/api, expires in 1h 29m"


def test_seconds_show_under_ten_minutes_and_the_past_reads_ago(alice: Cli, clock: Clock) -> None:
    grant_id, summary = grant(alice, "--scope", "repo:read:acme/api", "--ttl", "90s")
    assert "expires in 1m 30s (2026-11-23 11:01 CET)" in summary
    clock.now = T + 45
    assert table(alice)[0]["EXPIRES"] == "in 45s"
    clock.now = T + 90 + 180
    (row,) = table(alice, "--all")
    assert (row["EXPIRES"], row["STATUS"]) == ("3m ago", "expired")
    assert shown(alice, grant_id)["issued_at"] == "4m 30s ago (2026-11-23 11:00 CET)"


# -- a pending grant says when it starts ---------------------------------------------------------


def test_a_pending_grant_says_when_it_starts_in_grant_list_show_and_completion(
    alice: Cli, clock: Clock
) -> None:
    grant_id, summary = grant(
        alice, "--scope", "repo:read:acme/web", "--not-before", "+16h", "--ttl", "15m"
    )
    assert summary == (
        f"granted {grant_id[:10]} to reviewer: repo:read:acme/web; "
        "starts in 16h (2026-11-24 03:00 CET), expires in 16h 15m (2026-11-24 03:15 CET)\n"
    )
    assert "valid from" not in summary
    clock.now = T + 1
    (row,) = table(alice)
    assert (row["EXPIRES"], row["STATUS"]) == ("in 16h 15m", "pending, starts in 16h")
    fields = shown(alice, grant_id)
    assert fields["status"] == "pending, starts in 16h"
    assert fields["not_before"] == "in 16h (2026-11-24 03:00 CET)"
    assert described(grant_id, T + 1) == (
        "reviewer repo:read:acme/web, pending, starts in 16h, expires in 16h 15m"
    )


def test_plain_list_has_a_status_column_telling_active_from_pending(alice: Cli) -> None:
    active, _ = grant(alice, "--scope", "repo:read:acme/api", "--ttl", "10m")
    pending, _ = grant(alice, "--scope", "repo:read:acme/api", "--not-before", "+5m")
    assert [(row["ID"], row["STATUS"]) for row in table(alice)] == [
        (active[:10], "active"),
        (pending[:10], "pending, starts in 5m"),
    ]


# -- one order for every listing -------------------------------------------------------------------


def test_list_list_all_their_json_and_completion_share_one_order_soonest_to_expire_first(
    alice: Cli, clock: Clock
) -> None:
    ids = {
        "later": grant(alice, "--scope", "repo:read:acme/a", "--ttl", "30m")[0],
        "soon": grant(alice, "--scope", "repo:read:acme/b", "--ttl", "10m")[0],
        "pending": grant(alice, "--scope", "repo:read:acme/c", "--not-before", "+1h")[0],
        "revoked": grant(alice, "--scope", "repo:read:acme/d", "--ttl", "20m")[0],
        "gone": grant(alice, "--scope", "repo:read:acme/e", "--ttl", "1m")[0],
        "tie": grant(alice, "--scope", "repo:read:acme/f", "--ttl", "20m")[0],
    }
    alice.ok("revoke", ids["revoked"])
    clock.now = T + 120  # "gone" has expired
    tied = sorted([ids["revoked"], ids["tie"]])  # both expire at T + 20m: by id
    every = [ids["gone"], ids["soon"], *tied, ids["later"], ids["pending"]]
    live = [grant_id for grant_id in every if grant_id not in (ids["gone"], ids["revoked"])]
    assert [row["ID"] for row in table(alice, "--all")] == [g[:10] for g in every]
    assert [row["ID"] for row in table(alice)] == [g[:10] for g in live]
    assert [g["id"] for g in json.loads(alice.ok("list", "--all", "--json").stdout)] == every
    assert [g["id"] for g in json.loads(alice.ok("list", "--json").stdout)] == live
    offered = [value for value, _ in complete.candidates(["revoke", ""], now=T + 120)]
    assert offered == live


# -- absolute times: local, with the zone; JSON stays UTC -----------------------------------------


def test_key_show_and_rotate_write_every_time_local_with_its_zone(alice: Cli, clock: Clock) -> None:
    grant(alice, "--scope", "repo:read:acme/api", "--ttl", "15m")
    (line,) = alice.ok("key", "show").stdout.splitlines()
    assert "  active  created 2026-11-23 11:00 CET  issuer nhidel:alice" in line
    assert "T10:00:00Z" not in line
    clock.now = T + 60
    rotated = alice.ok("key", "rotate").stderr
    assert "verifies its grants until they expire, in 14m (2026-11-23 11:15 CET)" in rotated
    old = [line for line in alice.ok("key", "show").stdout.splitlines() if "retired" in line]
    assert old[0].endswith(
        "created 2026-11-23 11:00 CET  issuer nhidel:alice  "
        "verifies its grants until they expire, in 14m (2026-11-23 11:15 CET)"
    )
    keys = json.loads(alice.ok("key", "show", "--json").stdout)
    assert {key["created_at"] for key in keys} == {"2026-11-23T10:00:00Z", "2026-11-23T10:01:00Z"}


def test_show_and_agent_show_write_local_times_and_their_json_stays_rfc3339_utc(
    alice: Cli,
) -> None:
    grant_id, _ = grant(alice, "--scope", "repo:read:acme/api", "--ttl", "15m")
    fields = shown(alice, grant_id)
    assert fields["issued_at"] == "now (2026-11-23 11:00 CET)"
    assert fields["expires_at"] == "in 15m (2026-11-23 11:15 CET)"
    assert fields["revoked_at"] == "-"
    as_json = json.loads(alice.ok("show", grant_id, "--json").stdout)
    assert (as_json["issued_at"], as_json["expires_at"]) == (
        "2026-11-23T10:00:00Z",
        "2026-11-23T10:15:00Z",
    )
    assert "created_at   2026-11-23 11:00 CET" in alice.ok("agent", "show", "reviewer").stdout
    assert json.loads(alice.ok("agent", "show", "reviewer", "--json").stdout)["created_at"] == (
        "2026-11-23T10:00:00Z"
    )


def test_times_say_utc_when_the_local_zone_is_utc(alice: Cli) -> None:
    with pinned_zone(UTC):
        _, summary = grant(alice, "--scope", "repo:read:acme/api", "--ttl", "15m")
        assert summary.endswith("expires in 15m (2026-11-23 10:15 UTC)\n")
        assert "created 2026-11-23 10:00 UTC" in alice.ok("key", "show").stdout


def test_audit_tail_writes_each_time_to_the_second_with_its_zone(alice: Cli) -> None:
    grant(alice, "--scope", "repo:read:acme/api")
    lines = alice.ok("audit", "tail").stdout.splitlines()
    assert len(lines) == 3  # key.created, agent.added, grant.issued
    for line in lines:  # the records' own times (the log's clock), in Berlin's zone
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d CES?T  #\d+  ", line), line
