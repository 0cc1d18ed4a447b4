"""Listing many grants fast: ledger rows straight to JSON text, with no Grant built per row.

`nhidel list` may walk tens of thousands of rows, and building a Grant, its Scopes and a dict per
row, then formatting four times through datetime, costs about 10 µs a row. Here a row becomes its
JSON text with C-level string escaping, a cached time prefix per minute and cached scope lists
(the same few scope strings recur across many grants), about 1.5 µs a row. The text is the exact
`json.dumps(grant.to_json(now), ensure_ascii=False)` of the same grant, byte for byte
(tests/test_list_fast.py checks that over random grants). A row that `Grant` could not hold
(a malformed scope, a time that is not an integer) raises IntegrityError naming the grant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from json.encoder import encode_basestring
from typing import Any

from nhidel.errors import IntegrityError, UsageError
from nhidel.models import GrantStatus
from nhidel.scopes import parse_scopes
from nhidel.timefmt import rfc3339_minute

# Caches are cleared when they reach this size, so memory never grows with the ledger.
_CACHE_LIMIT = 4096

# The end of a JSON time for each second of a minute; a fraction (a corrupt row) is no index.
_SECONDS = tuple(f'{second:02d}Z"' for second in range(60))

# A row of nhidel.ledger.store.LIST_COLUMNS, from Ledger.grant_rows.
GrantRow = tuple[Any, ...]

# json.dumps's own string escaping with ensure_ascii=False (the C version when there is one).
_quote: Callable[[str], str] = encode_basestring


# The values of GrantStatus, looked up once: an enum member's `.value` is slow in a loop.
_REVOKED, _EXPIRED, _EXHAUSTED, _PENDING, _ACTIVE = (
    GrantStatus.REVOKED.value, GrantStatus.EXPIRED.value, GrantStatus.EXHAUSTED.value,
    GrantStatus.PENDING.value, GrantStatus.ACTIVE.value,
)  # fmt: skip


def row_status(row: GrantRow, now: int) -> str:
    """Grant.status(now) of a listed row, as its string value."""
    if row[11] is not None:  # revoked_at
        return _REVOKED
    if now >= row[6]:  # expires_at
        return _EXPIRED
    if row[7] is not None and row[8] >= row[7]:  # uses reached max_uses
        return _EXHAUSTED
    if now < row[5]:  # not_before
        return _PENDING
    return _ACTIVE


class ScopeCache:
    """Each stored scope string, checked once with the scope grammar, as its parsed scopes."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, ...]] = {}

    def scopes(self, grant_id: object, stored: Any) -> tuple[str, ...]:
        found = self._seen.get(stored) if isinstance(stored, str) else None
        if found is None:
            try:
                found = tuple(str(scope) for scope in parse_scopes([stored]))
            except (UsageError, AttributeError, TypeError):
                raise corrupt_row(grant_id, "a malformed scope") from None
            if len(self._seen) >= _CACHE_LIMIT:
                self._seen.clear()
            self._seen[stored] = found
        return found


class JsonRows:
    """Turns listed rows into JSON text; keeps its caches across rows, so reuse one per listing."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.scope_cache = ScopeCache()
        self._scope_json: dict[str, str] = {}
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

    def _scopes(self, grant_id: object, stored: Any) -> str:
        scopes = self.scope_cache.scopes(grant_id, stored)
        text = "[" + ", ".join(_quote(scope) for scope in scopes) + "]"
        if len(self._scope_json) >= _CACHE_LIMIT:
            self._scope_json.clear()
        self._scope_json[stored] = text
        return text

    def line(self, row: GrantRow) -> str:
        """json.dumps(grant.to_json(now), ensure_ascii=False) for the grant in `row`."""
        (grant_id, agent, stored_scope, aud, issued_at, not_before, expires_at, max_uses, uses,
         reason, kid, revoked_at, revoke_reason) = row  # fmt: skip
        minutes = self._minutes
        try:
            # Only strings are ever cached, so a value of another type always takes the check.
            scopes = self._scope_json.get(stored_scope) or self._scopes(grant_id, stored_scope)
            minute, second = divmod(issued_at, 60)
            issued = (minutes.get(minute) or self._minute(minute)) + _SECONDS[second]
            minute, second = divmod(expires_at, 60)
            expires = (minutes.get(minute) or self._minute(minute)) + _SECONDS[second]
            return (
                f'{{"id": {_quote(grant_id)}, "agent": {_quote(agent)}, "scopes": {scopes}, '
                f'"aud": {"null" if aud is None else _quote(aud)}, '
                f'"status": "{row_status(row, self.now)}", '
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
