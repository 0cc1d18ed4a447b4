"""The scope grammar and the cover relation, checked against oracles written here, not in nhidel."""

from __future__ import annotations

import itertools
import re
import unicodedata

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nhidel.errors import UsageError
from nhidel.scopes import MAX_SCOPE_LENGTH, Scope, covers, not_covered, parse_scope, parse_scopes

# -- oracles -------------------------------------------------------------------------------

_ORACLE_NAME = r"[a-z0-9][a-z0-9_.\-]*"
_ORACLE_SCOPE = re.compile(
    rf"(?P<service>{_ORACLE_NAME}):(?P<action>\*|{_ORACLE_NAME})(?::(?P<resource>.+))?",
    re.DOTALL,
)


def _visible(ch: str) -> bool:
    """A character that is neither a control/format/unassigned one (C*) nor a separator (Z*)."""
    return unicodedata.category(ch)[0] not in "CZ"


def grammar_accepts(text: str) -> bool:
    """SPEC.md's scope grammar, written independently of nhidel.scopes."""
    if len(text) > MAX_SCOPE_LENGTH:
        return False
    match = _ORACLE_SCOPE.fullmatch(text)
    if match is None:
        return False
    resource = match.group("resource")
    if resource is None:
        return True
    return all(_visible(ch) for ch in resource) and "*" not in resource[:-1]


def brute_force_matches(pattern: Scope, concrete: Scope) -> bool:
    """Does `pattern` match the concrete scope `concrete`? Spelled out, character by character."""
    if pattern.service != concrete.service:
        return False
    if pattern.action not in ("*", concrete.action):
        return False
    if pattern.resource is None or concrete.resource is None:
        return pattern.resource is None and concrete.resource is None
    if not pattern.resource.endswith("*"):
        return pattern.resource == concrete.resource
    prefix = pattern.resource[:-1]
    if len(concrete.resource) < len(prefix):
        return False
    return all(a == b for a, b in zip(prefix, concrete.resource, strict=False))


# -- strategies ----------------------------------------------------------------------------

# Small alphabets on purpose: scopes then share services, actions and resource prefixes, so
# the cover relation holds often and transitivity is exercised, not assumed away.
services = st.sampled_from(["repo", "ci"])
concrete_actions = st.sampled_from(["read", "write"])
actions = st.one_of(concrete_actions, st.just("*"))
resource_bodies = st.text(alphabet="ab/", min_size=0, max_size=4)


@st.composite
def concrete_scopes(draw: st.DrawFn) -> Scope:
    resource = draw(st.one_of(st.none(), resource_bodies.filter(bool)))
    return Scope(draw(services), draw(concrete_actions), resource)


@st.composite
def any_scopes(draw: st.DrawFn) -> Scope:
    kind = draw(st.sampled_from(["none", "exact", "prefix"]))
    if kind == "none":
        resource = None
    elif kind == "exact":
        resource = draw(resource_bodies.filter(bool))
    else:
        resource = draw(resource_bodies) + "*"
    return Scope(draw(services), draw(actions), resource)


@st.composite
def widened(draw: st.DrawFn, scope: Scope) -> Scope:
    """A scope at least as wide as `scope`: maybe `*` action, maybe a shorter prefix."""
    action = "*" if draw(st.booleans()) else scope.action
    resource = scope.resource
    if resource is not None and draw(st.booleans()):
        body = resource[:-1] if resource.endswith("*") else resource
        resource = body[: draw(st.integers(0, len(body)))] + "*"
    return Scope(scope.service, action, resource)


@st.composite
def chains(draw: st.DrawFn) -> tuple[Scope, Scope, Scope]:
    """(a, b, c) with a at least as wide as b, and b at least as wide as c."""
    c = draw(any_scopes())
    b = draw(widened(c))
    a = draw(widened(b))
    return a, b, c


# Parts that are usually valid and sometimes not, so both verdicts of the parser are common.
name_parts = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9_.\-]{0,5}", fullmatch=True),
    st.text(alphabet="aZ0_.-*: \u00e9\n", max_size=4),
)
resource_parts = st.one_of(
    st.just(""),
    st.from_regex(r":[a-z0-9/:._\-]{0,6}\*?", fullmatch=True),
    st.text(alphabet=":ab/*\u00e9 \t\x7f\u00a0\u2028\u200b", max_size=6).map(lambda r: ":" + r),
)
scopeish_text = st.one_of(
    st.text(),
    st.text(alphabet="ab0_.-:*/ \tA\n\u00e9\x00\u200b\u3000", max_size=20),
    st.builds(
        lambda s, a, r: f"{s}:{a}{r}",
        name_parts,
        st.one_of(name_parts, st.just("*")),
        resource_parts,
    ),
)

# A denser space still (one service, two actions, two letters) for arbitrary triples, where
# a chain a >= b >= c of distinct scopes must turn up often for transitivity to be tested.
dense_scopes = st.builds(
    Scope,
    st.just("repo"),
    st.sampled_from(["read", "*"]),
    st.one_of(
        st.none(),
        st.text(alphabet="ab", min_size=1, max_size=2),
        st.text(alphabet="ab", max_size=2).map(lambda r: r + "*"),
    ),
)


# -- grammar examples ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("repo:read", Scope("repo", "read", None)),
        ("repo:read:acme/api", Scope("repo", "read", "acme/api")),
        ("repo:*:acme/api", Scope("repo", "*", "acme/api")),
        ("repo:read:acme/*", Scope("repo", "read", "acme/*")),
        ("repo:read:*", Scope("repo", "read", "*")),
        ("release:publish", Scope("release", "publish", None)),
        (
            "s3.v2:get-object_x:bucket/key:with:colons",
            Scope("s3.v2", "get-object_x", "bucket/key:with:colons"),
        ),
        ("0svc:9act:ü/ñ", Scope("0svc", "9act", "ü/ñ")),
    ],
)
def test_parse_scope_accepts_grammar_examples(text: str, expected: Scope) -> None:
    scope = parse_scope(text)
    assert scope == expected
    assert str(scope) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "repo",
        "repo:",
        ":read",
        "Repo:read",
        "repo:Read",
        "repo:read:",
        "-repo:read",
        "repo:.read",
        "*:read",
        "repo:re*d",
        "repo:rea*",
        "repo:read:a*b",
        "repo:read:**",
        "repo:read:acme api",
        "repo:read:acme\tapi",
        "repo:read:acme\n",
        "repo:read:\x00",
        "repo:read:a\u200bb",
        "repo:read:a\u3000b",
        " repo:read",
        "repo:read ",
        "repo :read",
        "re po:read",
        "repö:read",
        "repo:read:" + "x" * MAX_SCOPE_LENGTH,
    ],
)
def test_parse_scope_rejects_text_outside_grammar_with_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_scope(text)
    assert caught.value.exit_status == 2
    assert caught.value.hint


def test_parse_scope_length_limit_is_inclusive() -> None:
    head = "repo:read:"
    longest = head + "x" * (MAX_SCOPE_LENGTH - len(head))
    assert len(parse_scope(longest).resource or "") == MAX_SCOPE_LENGTH - len(head)
    with pytest.raises(UsageError):
        parse_scope(longest + "x")


def test_parse_scopes_splits_on_whitespace_and_drops_repeats() -> None:
    parsed = parse_scopes(["repo:read:a ci:run", "repo:read:a", "ci:*"])
    assert parsed == (Scope("repo", "read", "a"), Scope("ci", "run"), Scope("ci", "*"))


# -- grammar properties --------------------------------------------------------------------


@given(scopeish_text)
def test_parser_never_crashes_and_agrees_with_independent_grammar(text: str) -> None:
    try:
        scope = parse_scope(text)
    except UsageError:
        accepted = False
    else:
        accepted = True
        assert str(scope) == text
    assert accepted == grammar_accepts(text)


@given(any_scopes())
def test_every_generated_scope_round_trips_through_the_parser(scope: Scope) -> None:
    assert grammar_accepts(str(scope))
    assert parse_scope(str(scope)) == scope


# -- cover relation ------------------------------------------------------------------------


@given(any_scopes())
def test_covers_is_reflexive(scope: Scope) -> None:
    assert covers(scope, scope)


@given(chains())
def test_a_scope_covers_every_narrowing_of_itself(chain: tuple[Scope, Scope, Scope]) -> None:
    a, b, c = chain
    assert covers(b, c)
    assert covers(a, b)


@given(chains())
def test_covers_is_transitive_along_widening_chains(chain: tuple[Scope, Scope, Scope]) -> None:
    a, b, c = chain
    assume(covers(a, b) and covers(b, c))
    assert covers(a, c)


@given(st.lists(dense_scopes, min_size=3, max_size=10))
def test_covers_is_transitive_over_every_triple_of_a_random_set(scopes: list[Scope]) -> None:
    for a, b, c in itertools.product(scopes, repeat=3):
        if covers(a, b) and covers(b, c):
            assert covers(a, c), (a, b, c)


def test_covers_is_transitive_over_a_whole_small_universe() -> None:
    bodies = ["a", "b", "aa", "ab", "ba", "bb"]
    resources = [None, *bodies, "*", *(body + "*" for body in bodies)]
    universe = [Scope("repo", action, r) for action in ("read", "write", "*") for r in resources]
    chains_seen = 0
    for a, b, c in itertools.product(universe, repeat=3):
        if covers(a, b) and covers(b, c):
            chains_seen += a != b and b != c
            assert covers(a, c), (a, b, c)
    assert chains_seen > 100  # the premise held for many distinct chains, not just a == b


@given(any_scopes(), any_scopes(), concrete_scopes())
def test_covers_is_sound_every_concrete_scope_of_the_narrower_matches_the_wider(
    wide: Scope, narrow: Scope, concrete: Scope
) -> None:
    if covers(wide, narrow) and brute_force_matches(narrow, concrete):
        assert brute_force_matches(wide, concrete)


@given(st.lists(any_scopes(), max_size=4), concrete_scopes())
def test_ceiling_never_admits_a_concrete_scope_outside_it(
    ceiling: list[Scope], request: Scope
) -> None:
    admitted = not_covered(ceiling, [request]) == []
    matched = any(brute_force_matches(scope, request) for scope in ceiling)
    if admitted:
        assert matched
    # And the converse: a concrete scope the ceiling matches is never refused.
    assert admitted == matched


@given(st.lists(any_scopes(), max_size=4), st.lists(any_scopes(), max_size=4))
def test_not_covered_returns_exactly_the_uncovered_requests(
    ceiling: list[Scope], requested: list[Scope]
) -> None:
    expected = [r for r in requested if not any(covers(c, r) for c in ceiling)]
    assert not_covered(ceiling, requested) == expected


@pytest.mark.parametrize(
    ("granted", "requested", "expected"),
    [
        ("repo:read:acme/*", "repo:read:acme/api", True),
        ("repo:read:acme/*", "repo:read:acme/", True),
        ("repo:read:acme/*", "repo:read:acmex", False),
        ("repo:read:acme/*", "repo:read:acme/api/*", True),
        ("repo:read:acme/api/*", "repo:read:acme/*", False),
        ("repo:read:acme/api", "repo:read:acme/*", False),
        ("repo:read:acme/api", "repo:read:acme/api", True),
        ("repo:*:acme/api", "repo:write:acme/api", True),
        ("repo:write:acme/api", "repo:*:acme/api", False),
        ("repo:read", "repo:read:acme", False),
        ("repo:read:*", "repo:read", False),
        ("repo:read", "repo:read", True),
        ("repo:read:*", "ci:read:x", False),
    ],
)
def test_covers_examples(granted: str, requested: str, expected: bool) -> None:
    assert covers(parse_scope(granted), parse_scope(requested)) is expected
