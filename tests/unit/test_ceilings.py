"""What a ceiling covers, the narrowing part of a change to it, and which scopes overlap."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nhidel.ceilings import covers_grant, narrowing_of, overlaps
from nhidel.models import Agent, Grant
from nhidel.scopes import parse_scope, parse_scopes

NOW = 1_800_000_000
AGENT = Agent("bot", parse_scopes(["repo:read:acme/*", "ticket:create:q/*"]), 3600, 900)


def grant(*scopes: str, aud: str | None = None, start: int = NOW, ttl: int = 900) -> Grant:
    return Grant("g" + "a" * 26, "bot", parse_scopes(scopes), aud, NOW, start, start + ttl,
                 None, None, "kid")  # fmt: skip


def test_a_ceiling_covers_a_grant_only_when_it_covers_every_scope() -> None:
    assert covers_grant(AGENT, grant("repo:read:acme/api", "ticket:create:q/1"), now=NOW)
    assert not covers_grant(AGENT, grant("repo:read:acme/api", "repo:write:acme/api"), now=NOW)


def test_a_ceiling_with_audiences_covers_only_grants_for_one_of_them() -> None:
    narrowed = replace(AGENT, audiences=("api.example.com",))
    assert covers_grant(narrowed, grant("repo:read:acme/api", aud="api.example.com"), now=NOW)
    assert not covers_grant(narrowed, grant("repo:read:acme/api", aud="other.example.com"), now=NOW)
    assert not covers_grant(narrowed, grant("repo:read:acme/api"), now=NOW)  # no aud: any verifier
    assert covers_grant(AGENT, grant("repo:read:acme/api", aud="other.example.com"), now=NOW)


def test_time_left_not_the_minted_ttl_is_held_to_the_maximum() -> None:
    ten_minutes = replace(AGENT, max_ttl=600)
    assert not covers_grant(ten_minutes, grant("repo:read:acme/a", ttl=900), now=NOW)
    assert covers_grant(ten_minutes, grant("repo:read:acme/a", ttl=900), now=NOW + 300)
    # A pending grant counts from its start: its wait is no time it can be used.
    assert covers_grant(ten_minutes, grant("repo:read:acme/a", start=NOW + 3600, ttl=600), now=NOW)
    assert not covers_grant(
        ten_minutes, grant("repo:read:acme/a", start=NOW + 60, ttl=601), now=NOW
    )


def test_the_narrowing_of_a_pure_narrowing_is_what_was_asked() -> None:
    asked = replace(AGENT, allow=parse_scopes(["repo:read:acme/*"]), max_ttl=600, default_ttl=600,
                    audiences=("api.example.com",))  # fmt: skip
    assert narrowing_of(AGENT, asked) == asked


def test_the_narrowing_of_a_pure_widening_is_the_ceiling_before() -> None:
    asked = replace(AGENT, allow=(*AGENT.allow, parse_scope("deploy:run")), max_ttl=7200,
                    default_ttl=1800)  # fmt: skip
    assert narrowing_of(AGENT, asked) == AGENT
    with_aud = replace(AGENT, audiences=("api.example.com",))
    assert narrowing_of(with_aud, replace(with_aud, audiences=())) == with_aud


def test_the_narrowing_of_a_mixed_change_keeps_only_what_both_allow() -> None:
    asked = replace(AGENT, allow=parse_scopes(["repo:read:acme/web", "deploy:run"]), max_ttl=7200,
                    default_ttl=600)  # fmt: skip
    narrowed = narrowing_of(AGENT, asked)
    assert narrowed.allow == parse_scopes(["repo:read:acme/web"])
    assert (narrowed.max_ttl, narrowed.default_ttl) == (3600, 600)
    two = replace(AGENT, audiences=("a.example.com", "b.example.com"))
    swapped = narrowing_of(two, replace(two, audiences=("b.example.com", "c.example.com")))
    assert swapped.audiences == ("b.example.com",)


def test_when_nothing_of_the_old_ceiling_is_left_the_narrowing_is_what_was_asked() -> None:
    asked = replace(AGENT, allow=parse_scopes(["deploy:run"]))
    assert narrowing_of(AGENT, asked).allow == asked.allow


@pytest.mark.parametrize(("one", "other", "expected"), [
    ("repo:read:acme/api", "repo:read:acme/*", True),
    ("repo:*:acme/api", "repo:read:acme/*", True),
    ("repo:read:acme/a*", "repo:read:acme/*", True),
    ("repo:read:acme/*", "repo:read:acme/api", True),
    ("repo:read:acme/api", "repo:read:acme/api", True),
    ("repo:read", "repo:read", True),
    ("repo:write:acme/api", "repo:read:acme/*", False),
    ("repo:read:other/*", "repo:read:acme/*", False),
    ("repo:read", "repo:read:acme/*", False),
    ("ticket:read:acme/*", "repo:read:acme/*", False),
    ("repo:read:acme/api", "repo:read:acme/web", False),
])  # fmt: skip
def test_scopes_overlap_when_some_request_matches_both(
    one: str, other: str, expected: bool
) -> None:
    assert overlaps(parse_scope(one), parse_scope(other)) is expected
    assert overlaps(parse_scope(other), parse_scope(one)) is expected
