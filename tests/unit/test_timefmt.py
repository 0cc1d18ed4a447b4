"""Durations and times as people type them, and as nhidel prints them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nhidel.errors import UsageError
from nhidel.timefmt import (
    MAX_DURATION,
    format_duration,
    parse_duration,
    parse_time,
    relative,
    rfc3339,
)

NOW = 1_795_428_000  # 2026-11-23T10:00:00Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 15 * 60),
        ("2h", 2 * 3600),
        ("1d", 86400),
        ("1h30m", 3600 + 30 * 60),
        ("1d2h3m4s", 86400 + 2 * 3600 + 3 * 60 + 4),
        ("PT15M", 15 * 60),
        ("P1DT2H", 86400 + 2 * 3600),
        ("PT90S", 90),
        ("P1D", 86400),
        ("pt15m", 15 * 60),
        (" 15m ", 15 * 60),
        ("366d", 366 * 86400),
    ],
)
def test_parse_duration_accepts_short_and_iso_forms(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "0s",
        "0m",
        "PT0S",
        "P0D",  # zero
        "-5m",
        "-PT5M",
        "+5m",  # negative or signed
        "",
        " ",
        "P",
        "PT",
        "P1DT",  # empty
        "15",
        "m",
        "15x",
        "1.5h",
        "15 m",
        "1m1h",
        "1h1h",
        "forever",
        "PT1.5H",
        "P1W",
        "1w",
        "\x00",
        "15m\n5s",  # garbage
        "367d",
        f"{MAX_DURATION + 1}s",
        "8785h",
        "P400D",  # over a year
    ],
)
def test_parse_duration_rejects_zero_negative_empty_garbage_and_over_a_year(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_duration(text)
    assert caught.value.exit_status == 2
    assert caught.value.hint


def test_parse_duration_names_what_was_wrong() -> None:
    with pytest.raises(UsageError, match="--ttl"):
        parse_duration("soon", what="--ttl")


@given(st.integers(min_value=1, max_value=MAX_DURATION))
def test_format_duration_round_trips_through_parse_duration(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=30))
def test_parse_duration_on_arbitrary_text_returns_a_positive_bounded_count_or_usage_error(
    text: str,
) -> None:
    try:
        seconds = parse_duration(text)
    except UsageError:
        return
    assert 0 < seconds <= MAX_DURATION


def test_parse_duration_with_thousands_of_digits_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_duration("9" * 5000 + "s")


@pytest.mark.parametrize("text", ["\u0661\u0665m", "\uff11\uff15m"])  # Arabic-Indic, full-width 15
def test_parse_duration_rejects_non_ascii_digits(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


# -- times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T10:00:00Z", NOW),
        ("2026-11-23T10:00:00z", NOW),
        ("2026-11-23T11:00:00+01:00", NOW),
        ("2026-11-23T05:00:00-05:00", NOW),
        ("2026-11-23T10:00:00.75Z", NOW),
    ],
)
def test_parse_time_accepts_rfc3339_with_a_zone(text: str, expected: int) -> None:
    assert parse_time(text, now=0) == expected


@pytest.mark.parametrize(("text", "offset"), [("+5m", 300), ("+1h30m", 5400), ("+PT15M", 900)])
def test_parse_time_plus_duration_is_relative_to_now(text: str, offset: int) -> None:
    assert parse_time(text, now=NOW) == NOW + offset


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T10:00:00",  # naive: no zone
        "2026-11-23",  # a date is not a time
        "10:00:00Z",
        "tomorrow",
        "",
        "+",
        "+0s",
        "+-5m",
        "-5m",
        "now",
        "2026-13-01T00:00:00Z",
        "2026-11-23T25:00:00Z",
        "\x00",
    ],
)
def test_parse_time_rejects_naive_and_garbage(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_time(text, now=NOW, what="--not-before")
    assert "--not-before" in caught.value.message


@pytest.mark.parametrize("text", ["2026-W48-1T10:00:00Z", "20261123T100000Z"])
def test_parse_time_rejects_iso_forms_that_are_not_rfc3339(text: str) -> None:
    with pytest.raises(UsageError):
        parse_time(text, now=NOW)


@given(st.text(max_size=40))
def test_parse_time_on_arbitrary_text_returns_an_int_or_usage_error(text: str) -> None:
    try:
        value = parse_time(text, now=NOW)
    except UsageError:
        return
    assert isinstance(value, int)


def test_rfc3339_is_utc_with_z() -> None:
    assert rfc3339(NOW) == "2026-11-23T10:00:00Z"
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(None) is None


@given(st.integers(min_value=0, max_value=253_402_300_799))
def test_rfc3339_round_trips_through_parse_time(timestamp: int) -> None:
    text = rfc3339(timestamp)
    assert text is not None and text.endswith("Z")
    assert parse_time(text, now=0) == timestamp
    assert datetime.fromtimestamp(timestamp, UTC).isoformat().startswith(text[:-1])


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (900, "in 15m"),
        (899, "in 15m"),  # read a second later, a 15m grant still says 15m
        (-3 * 3600, "3h ago"),
        (2 * 86400, "in 2d"),
        (45, "in 45s"),
        (-45, "45s ago"),
        (0, "now"),
    ],
)
def test_relative_reads_like_people_say_it(delta: int, expected: str) -> None:
    assert relative(NOW + delta, now=NOW) == expected


@given(st.integers(min_value=-(10**10), max_value=253402300799))
def test_rfc3339_matches_datetime_formatting_for_any_second(timestamp: int) -> None:
    """rfc3339 caches each minute's prefix; the text must be what datetime gives."""
    expected = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert rfc3339(timestamp) == expected
    assert rfc3339(timestamp) == expected  # and again, from the cache
