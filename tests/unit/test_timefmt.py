"""Durations and times as people type them, and as nhidel prints them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from helpers.local_zone import BERLIN, pinned_zone
from helpers.local_zone import UTC as UTC_ZONE
from hypothesis import given
from hypothesis import strategies as st

from nhidel.errors import UsageError
from nhidel.timefmt import (
    MAX_DURATION,
    format_duration,
    local_clock,
    local_clock_of,
    parse_duration,
    parse_time,
    relative,
    relative_with_clock,
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
        (5400, "in 1h 30m"),
        (5399, "in 1h 30m"),  # a 90m grant a second later: not "in 1h", nor "in 1h 29m"
        (5369, "in 1h 29m"),  # 1h 29m 29s: rounded to the nearest minute
        (-3 * 3600, "3h ago"),  # a unit that rounds to zero is left out
        (-192, "3m 12s ago"),  # seconds under 10 minutes
        (-180, "3m ago"),
        (90, "in 1m 30s"),  # not "in 2m", then "in 1m" a second later
        (89, "in 1m 29s"),
        (599, "in 9m 59s"),
        (629, "in 10m"),  # from 10 minutes on, whole minutes, rounded half up
        (630, "in 11m"),
        (86399, "in 1d"),  # 23h 59m 59s rounds up into the next unit
        (2 * 86400, "in 2d"),
        (2 * 86400 + 5 * 3600 + 1800, "in 2d 6h"),  # hours beyond a day
        (45, "in 45s"),
        (-45, "45s ago"),
        (0, "now"),
    ],
)
def test_relative_reads_like_people_say_it(delta: int, expected: str) -> None:
    assert relative(NOW + delta, now=NOW) == expected


@given(st.integers(min_value=1, max_value=MAX_DURATION - 3600), st.booleans())
def test_relative_is_at_most_two_units_and_off_by_at_most_half_its_precision(
    span: int, future: bool
) -> None:
    text = relative(NOW + span if future else NOW - span, now=NOW)
    amount = text.removeprefix("in ") if future else text.removesuffix(" ago")
    assert text == (f"in {amount}" if future else f"{amount} ago")
    assert 1 <= len(amount.split(" ")) <= 2
    precision = 1 if span < 600 else 60 if span < 86400 else 3600
    assert abs(parse_duration(amount.replace(" ", "")) - span) <= precision // 2


@given(st.integers(min_value=2, max_value=MAX_DURATION - 3600))
def test_relative_never_grows_as_the_moment_comes_closer(span: int) -> None:
    """Read a second later, a time never says it is further away: no "in 2h" then "in 2h 1m"."""
    sooner = parse_duration(relative(NOW + span - 1, now=NOW).removeprefix("in ").replace(" ", ""))
    later = parse_duration(relative(NOW + span, now=NOW).removeprefix("in ").replace(" ", ""))
    assert sooner <= later


def test_local_clock_writes_the_date_the_minute_and_the_zone_abbreviation() -> None:
    summer = NOW + 200 * 86400  # 2027-06-11: daylight saving time
    with pinned_zone(BERLIN):
        assert local_clock(NOW) == "2026-11-23 11:00 CET"
        assert local_clock(summer) == "2027-06-11 12:00 CEST"
        assert local_clock(NOW + 42, seconds=True) == "2026-11-23 11:00:42 CET"
        assert local_clock(NOW) == "2026-11-23 11:00 CET"  # a date, even today
    with pinned_zone(UTC_ZONE):
        assert local_clock(NOW) == "2026-11-23 10:00 UTC"


def test_local_clock_of_converts_rfc3339_text_and_leaves_anything_else_alone() -> None:
    with pinned_zone(BERLIN):
        assert local_clock_of("2026-11-23T10:00:00Z") == "2026-11-23 11:00 CET"
        assert local_clock_of("2026-11-23T10:00:07.123456Z", seconds=True) == (
            "2026-11-23 11:00:07 CET"
        )
        for other in ("", "garbage", "2026-11-23", "2026-11-23T10:00:00", 12, None):
            assert local_clock_of(other) == str(other)


def test_relative_with_clock_says_how_far_then_when() -> None:
    with pinned_zone(BERLIN):
        assert relative_with_clock(NOW + 5400, now=NOW) == "in 1h 30m (2026-11-23 12:30 CET)"
        assert relative_with_clock(NOW - 180, now=NOW) == "3m ago (2026-11-23 10:57 CET)"


@given(st.integers(min_value=-(10**10), max_value=253402300799))
def test_rfc3339_matches_datetime_formatting_for_any_second(timestamp: int) -> None:
    """rfc3339 caches each minute's prefix; the text must be what datetime gives."""
    expected = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert rfc3339(timestamp) == expected
    assert rfc3339(timestamp) == expected  # and again, from the cache
