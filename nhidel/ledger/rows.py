"""Listing many grants fast: ledger rows straight to JSON text, with no Grant built per row.

`nhidel list` may walk tens of thousands of rows, and building a Grant, its Scopes and a dict per
row, then formatting four times through datetime, costs about 10 µs a row. Here a row becomes its
JSON text with C-level string escaping, a cached time prefix per minute and cached scope lists
(the same few scope strings recur across many grants), about 1.5 µs a row. What it says comes
from the model's own definitions: the columns from `ledger.columns`, the status from
`models.grant_status`, the scopes from the scope grammar's parser. The text is the exact
`json.dumps(grant.to_json(now), ensure_ascii=False)` of the same grant, byte for byte: its keys
are spelled out in the f-string (taking them from one list costs about a sixth more a row), and
tests/unit/ledger/test_list_output_matches_the_model.py checks the two over random grants. A
row that `Grant` could not hold (a malformed scope, a time that is not an integer) raises
IntegrityError naming the grant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from json.encoder import encode_basestring
from typing import Any

from nhidel.errors import IntegrityError, UsageError
from nhidel.ledger.columns import EXPIRES_AT, MAX_USES, NOT_BEFORE, REVOKED_AT, USES
from nhidel.models import grant_status
from nhidel.scopes import parse_scope_text
from nhidel.timefmt import rfc3339_minute

# Caches are cleared when they reach this size, so memory never grows with the ledger.
_CACHE_LIMIT = 4096

# The end of a JSON time for each second of a minute; a fraction (a corrupt row) is no index.
_SECONDS = tuple(f'{second:02d}Z"' for second in range(60))

# A row of `ledger.columns.LIST_COLUMNS`, from Ledger.grant_rows.
GrantRow = tuple[Any, ...]

# json.dumps's own string escaping with ensure_ascii=False (the C version when there is one).
_quote: Callable[[str], str] = encode_basestring


def row_status(row: GrantRow, now: int) -> str:
    """Grant.status(now) of a listed row, as its string value."""
    status = grant_status(
        now, row[REVOKED_AT], row[EXPIRES_AT], row[MAX_USES], row[USES], row[NOT_BEFORE]
    )
    return status._value_


class ScopeCache:
    """Each stored scope text of a listing, checked once with the scope grammar, as the scope
    names the table shows and the JSON array `list --json` prints: a listing's one scope cache."""

    def __init__(self) -> None:
        # Cleared, never replaced, when full: JsonRows keeps a reference to it.
        self.seen: dict[str, tuple[tuple[str, ...], str]] = {}

    def lookup(self, grant_id: object, stored: Any) -> tuple[tuple[str, ...], str]:
        """(the scope names, their JSON array text) of a row's stored scope text."""
        found = self.seen.get(stored) if isinstance(stored, str) else None
        if found is None:
            try:
                names = tuple(str(scope) for scope in parse_scope_text(stored))
            except (UsageError, AttributeError, TypeError):
                raise corrupt_row(grant_id, "a malformed scope") from None
            found = (names, "[" + ", ".join(_quote(name) for name in names) + "]")
            if len(self.seen) >= _CACHE_LIMIT:
                self.seen.clear()
            self.seen[stored] = found
        return found


class JsonRows:
    """Turns listed rows into JSON text; keeps its caches across rows, so reuse one per listing."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.scope_cache = ScopeCache()
        self._scopes_seen = self.scope_cache.seen
        self._minutes: dict[int, str] = {}

    def _time(self, timestamp: int) -> str:
        """rfc3339(timestamp) in JSON quotes: the minute formatted once, the seconds appended."""
        minute, second = divmod(timestamp, 60)
        return (self._minutes.get(minute) or self._minute(minute)) + _SECONDS[second]

    def _minute(self, minute: int) -> str:
        prefix = '"' + rfc3339_minute(minute)
        if len(self._minutes) >= _CACHE_LIMIT:
            self._minutes.clear()
        self._minutes[minute] = prefix
        return prefix

    def line(self, row: GrantRow) -> str:
        """json.dumps(grant.to_json(now), ensure_ascii=False) for the grant in `row`."""
        # Unpacked in LIST_COLUMNS order, the quickest way to read a row (the byte-for-byte
        # tests would see any other order).
        (grant_id, agent, stored_scope, aud, issued_at, not_before, expires_at, max_uses, uses,
         reason, kid, revoked_at, revoke_reason) = row  # fmt: skip
        minutes = self._minutes
        try:
            # Only strings are ever cached, so a value of another type always takes the check.
            scopes = (
                self._scopes_seen.get(stored_scope)
                or self.scope_cache.lookup(grant_id, stored_scope)
            )[1]
            status = grant_status(self.now, revoked_at, expires_at, max_uses, uses, not_before)
            minute, second = divmod(issued_at, 60)
            issued = (minutes.get(minute) or self._minute(minute)) + _SECONDS[second]
            minute, second = divmod(expires_at, 60)
            expires = (minutes.get(minute) or self._minute(minute)) + _SECONDS[second]
            return (
                f'{{"id": {_quote(grant_id)}, "agent": {_quote(agent)}, "scopes": {scopes}, '
                f'"aud": {"null" if aud is None else _quote(aud)}, '
                f'"status": "{status._value_}", '
                f'"issued_at": {issued}, '
                f'"not_before": {issued if not_before == issued_at else self._time(not_before)}, '
                f'"expires_at": {expires}, "uses": {uses:d}, '
                f'"max_uses": {"null" if max_uses is None else format(max_uses, "d")}, '
                f'"reason": {"null" if reason is None else _quote(reason)}, "kid": {_quote(kid)}, '
                f'"revoked_at": {"null" if revoked_at is None else self._time(revoked_at)}, '
                f'"revoke_reason": {"null" if revoke_reason is None else _quote(revoke_reason)}}}'
            )
        except (TypeError, ValueError, OverflowError, OSError):
            # What a hand-edited row holds: text or a fraction where an integer belongs, a
            # number where text belongs, a time out of range.
            raise corrupt_row(grant_id, "a value of the wrong type or out of range") from None

    def lines(self, rows: Iterable[GrantRow]) -> Iterator[str]:
        """Each row's line, lazily: memory does not grow with the listing."""
        return map(self.line, rows)


def corrupt_row(grant_id: object, what: str) -> IntegrityError:
    """The error for a ledger row that no Grant could hold."""
    return IntegrityError(
        f"the ledger row for {str(grant_id)[:64]} holds {what}", "restore the ledger from a backup"
    )
