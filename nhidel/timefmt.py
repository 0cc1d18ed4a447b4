"""Durations and times as people type them, and as nhidel prints them.

Durations: `90s`, `15m`, `2h`, `1d`, combinations such as `1h30m`, and ISO 8601 (`PT15M`, `P1DT2H`).
Times: RFC 3339 (`2026-11-23T10:00:00Z`) or an offset from now (`+5m`).
All times are integer Unix seconds, the resolution of JWT's NumericDate.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache

from nhidel.errors import UsageError
from nhidel.relative_time import UNIT_SECONDS

# `relative` lives where completion can use it without this module's imports; said here too.
from nhidel.relative_time import relative as relative

# Nothing nhidel does needs a span longer than this; anything longer is a typo.
MAX_DURATION = 366 * 86400

# ASCII digits only, and few enough that no number can be absurd before it is even parsed.
_N = r"([0-9]{1,9})"
_SHORT = re.compile(rf"(?:{_N}d)?(?:{_N}h)?(?:{_N}m)?(?:{_N}s)?")
_ISO = re.compile(rf"P(?:{_N}D)?(?:T(?:{_N}H)?(?:{_N}M)?(?:{_N}S)?)?")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_DURATION_HINT = "write a duration such as 90s, 15m, 2h, 1d, 1h30m or PT15M"


def parse_duration(text: str, *, what: str = "duration") -> int:
    """Return the number of seconds in `text`; raise UsageError for anything else."""
    raw = text.strip()
    if raw.upper().startswith("P"):
        # A trailing "T" (`P1DT`) is accepted by the regex but not by ISO 8601.
        match = None if raw.upper().endswith("T") else _ISO.fullmatch(raw.upper())
    else:
        match = _SHORT.fullmatch(raw.lower())
    if match is None or not any(match.groups()):
        raise UsageError(f"invalid {what} {text!r}", _DURATION_HINT)
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UsageError(f"{what} {text!r} must be longer than zero", _DURATION_HINT)
    if total > MAX_DURATION:
        raise UsageError(f"{what} {text!r} is longer than a year", "use a shorter duration")
    return total


def format_duration(seconds: int) -> str:
    """The shortest exact spelling, e.g. 5400 -> '1h30m', 0 -> '0s'."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in UNIT_SECONDS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_time(text: str, *, now: int, what: str = "time") -> int:
    """Return Unix seconds for an RFC 3339 time or `+DURATION` from `now`."""
    raw = text.strip()
    if raw.startswith("+"):
        return now + parse_duration(raw[1:], what=what)
    when = None
    if _RFC3339.fullmatch(raw):
        try:
            # fromisoformat takes at most 6 fractional digits; RFC 3339 allows more.
            when = datetime.fromisoformat(re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", raw.upper()))
        except ValueError:
            when = None
    if when is None:
        raise UsageError(
            f"invalid {what} {text!r}",
            "write an RFC 3339 time with a zone, such as 2026-11-23T10:00:00Z, or +5m from now",
        )
    return int(when.timestamp())


def parse_ago(text: str, *, now: int, what: str = "time") -> int:
    """A point in the past: an RFC 3339 time, or a duration ago (`1h`, `PT30M`)."""
    try:
        return now - parse_duration(text, what=what)
    except UsageError:
        pass
    try:
        return parse_time(text, now=now, what=what)
    except UsageError:
        raise UsageError(
            f"invalid {what} {text!r}",
            "write a duration ago such as 1h or PT30M, or an RFC 3339 time with a zone",
        ) from None


def rfc3339(timestamp: int | None) -> str | None:
    """UTC RFC 3339 with a `Z`, or None."""
    if timestamp is None:
        return None
    minute, second = divmod(int(timestamp), 60)
    return f"{rfc3339_minute(minute)}{second:02d}Z"


@lru_cache(maxsize=1024)
def rfc3339_minute(minute: int) -> str:
    """The RFC 3339 text of a minute since the epoch, up to its seconds: `2026-11-23T23:42:`.

    Formatted once per minute: times fall in few minutes, and datetime formatting costs
    ~1.5 us a call (`verify --batch` writes three times a verdict, `list --json` four a row).
    """
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:")


def local_clock(timestamp: int, *, seconds: bool = False) -> str:
    """The local wall-clock time with its date and zone: '2026-12-04 09:15 CET' ('UTC' when
    the local zone is UTC), with `seconds` '2026-12-04 09:15:42 CET'. Every absolute time
    people read is written so (the date too, so a line read tomorrow still says which day);
    JSON keeps RFC 3339 UTC (`rfc3339`).
    """
    return _local(datetime.fromtimestamp(timestamp, UTC), seconds=seconds)


def local_clock_of(text: object, *, seconds: bool = False) -> str:
    """`local_clock` of a time stored as RFC 3339 text (an audit record's, a key's creation);
    anything else (an unchecked record may hold anything) is returned as it is."""
    shown = str(text)
    try:
        when = datetime.fromisoformat(shown)
        if when.tzinfo is None:  # no zone: not a time nhidel wrote, so not one to convert
            return shown
        return _local(when, seconds=seconds)
    except (ValueError, OverflowError, OSError):
        return shown


def relative_with_clock(timestamp: int, *, now: int) -> str:
    """A time as people read it in a message: 'in 1h 30m (2026-12-04 09:15 CET)'."""
    return f"{relative(timestamp, now=now)} ({local_clock(timestamp)})"


def _local(when: datetime, *, seconds: bool) -> str:
    local = when.astimezone()  # the zone as the C library sees it now (TZ, /etc/localtime)
    zone = local.strftime("%Z") or local.strftime("%z")
    return local.strftime("%Y-%m-%d %H:%M:%S " if seconds else "%Y-%m-%d %H:%M ") + zone
