"""names.py says each rule twice, as a hand-written check (completion's, without `re`) and as a
pattern (everyone else's): the two accept exactly the same text."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nhidel import names

# Near misses weigh more than random text: the alphabets' edges, upper case, a non-ASCII
# letter and digit, separators the rules refuse, and a newline (which `$` would let through).
NEAR = "az09_.-g27AZ18é٣/: \n"
near_text = st.text(alphabet=NEAR, max_size=70) | st.text(max_size=70)


@given(near_text)
@example("a" * 64)
@example("a" * 65)
@example("-bot")
@example("bot\n")
def test_an_agent_name_is_what_its_pattern_says(text: str) -> None:
    assert names.is_agent_name(text) == bool(names.AGENT_NAME.fullmatch(text))


@given(near_text | st.text(alphabet="abcxyz234567g18", min_size=25, max_size=29).map("g".__add__))
@example("g" + "a" * 26)
@example("g" + "a" * 25 + "1")
@example("G" + "a" * 26)
def test_a_grant_id_is_what_its_pattern_says(text: str) -> None:
    assert names.is_grant_id(text) == bool(names.GRANT_ID.fullmatch(text))


@given(near_text | st.text(alphabet="abcxyz234567a18", min_size=14, max_size=19).map("a".__add__))
@example("a" + "b" * 16)
@example("a" + "b" * 15 + "1")
@example("A" + "b" * 16)
@example("g" + "b" * 16)
def test_an_approval_id_is_what_its_pattern_says(text: str) -> None:
    assert names.is_approval_id(text) == bool(names.APPROVAL_ID.fullmatch(text))


def test_the_patterns_are_compiled_once_and_only_the_named_ones_exist() -> None:
    assert names.GRANT_ID_PREFIX is names.GRANT_ID_PREFIX
    assert names.GRANT_ID_PREFIX.fullmatch("gq3")
    assert names.APPROVAL_ID_PREFIX.fullmatch("aq3") and not names.APPROVAL_ID_PREFIX.fullmatch(
        "gq3"
    )
    with pytest.raises(AttributeError):
        _ = names.AGENT_PATTERN
