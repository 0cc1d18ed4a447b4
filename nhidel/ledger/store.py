"""The grant ledger: one SQLite database (WAL) of every grant's claims and its life.

It keeps a SHA-256 of each token, never the token. Every write is one short IMMEDIATE
transaction, so several nhidel processes can share the ledger; readers never block writers.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nhidel.errors import IntegrityError, NotFoundError, StorageError, UsageError
from nhidel.fsutil import check_sqlite_files, create_private_file
from nhidel.ledger.columns import AGENT, GRANT_COLUMNS, ID, LIST_COLUMNS, LIVE_GRANT_SQL
from nhidel.models import SHORT_ID_LENGTH, Grant
from nhidel.names import GRANT_ID_PREFIX
from nhidel.paths import Paths
from nhidel.scopes import parse_scope_text

_SECRET_USE = "secret_used:"  # noqa: S105 - a meta row prefix: when a secret was last used
SCHEMA_VERSION = 5
MIN_PREFIX = 4
BUSY_TIMEOUT_MS = 10_000

_APPROVALS = """
-- Approvals (nhidel.integrity.approvals): each request as sealed by whoever wrote it, and the
-- human's sealed answer. The other columns only index and show them: nothing trusts them.
CREATE TABLE approvals (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    agent        TEXT NOT NULL,
    summary      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    lapses_at    INTEGER NOT NULL,
    status       TEXT NOT NULL,
    body         TEXT NOT NULL,
    seal         TEXT NOT NULL,
    answer       TEXT,
    answer_seal  TEXT,
    window_until INTEGER
);
CREATE INDEX approvals_by_agent ON approvals (agent, lapses_at)
"""
_SCHEMA = f"""
CREATE TABLE grants (
    id            TEXT PRIMARY KEY,
    agent         TEXT NOT NULL,
    scope         TEXT NOT NULL,
    aud           TEXT,
    issued_at     INTEGER NOT NULL,
    not_before    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    max_uses      INTEGER,
    uses          INTEGER NOT NULL DEFAULT 0,
    reason        TEXT,
    kid           TEXT NOT NULL,
    token_sha256  TEXT NOT NULL,
    revoked_at    INTEGER,
    revoke_reason TEXT,
    status_idx    INTEGER,
    seal          TEXT
);
CREATE INDEX grants_by_expiry ON grants (expires_at);
CREATE INDEX grants_by_agent ON grants (agent, expires_at);
CREATE INDEX grants_by_status_idx ON grants (status_idx, expires_at);
-- The live grants alone, in `list` order, so listing them never steps over revoked or used-up
-- history (SQLite uses it only for a query that repeats this WHERE's terms). And every grant in
-- `list --all` order, so its first rows come without sorting the whole ledger.
CREATE INDEX grants_live ON grants (expires_at, id)
    WHERE {LIVE_GRANT_SQL};
CREATE INDEX grants_by_issue ON grants (issued_at, id);
-- Bumped by `revoke --all`, `revoke --agent` and `key rotate`: a grant minted meanwhile is refused.
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta VALUES ('revocation_epoch', 0);
-- What verify trusts about revocations, uses and keys: one sealed document
-- (nhidel.integrity.state), bound to the audit log's high-water mark in the keystore.
CREATE TABLE sealed_state (id INTEGER PRIMARY KEY CHECK (id = 1), body BLOB NOT NULL);
{_APPROVALS};
"""
# Each schema version's upgrade from the one before it, run in one transaction.
_MIGRATIONS = {
    # 2: each grant's index in the principal's token status list (NULL for older grants).
    2: (
        "ALTER TABLE grants ADD COLUMN status_idx INTEGER",
        "CREATE INDEX grants_by_status_idx ON grants (status_idx, expires_at)",
    ),
    # 3: indexes that let `nhidel list` stream its rows in order (see _SCHEMA).
    3: (
        f"CREATE INDEX grants_live ON grants (expires_at, id) WHERE {LIVE_GRANT_SQL}",
        "CREATE INDEX grants_by_issue ON grants (issued_at, id)",
    ),
    # 4: each row sealed, and the sealed state (nhidel.integrity.state). Older rows stay
    # unsealed, and verify refuses them: `nhidel repair --accept-loss` starts the sealed
    # state afresh.
    4: (
        "ALTER TABLE grants ADD COLUMN seal TEXT",
        "CREATE TABLE sealed_state (id INTEGER PRIMARY KEY CHECK (id = 1), body BLOB NOT NULL)",
    ),
    # 5: approvals (see _SCHEMA).
    5: tuple(_APPROVALS.split(";")),
}
_COLUMNS = ", ".join(GRANT_COLUMNS)
_LIST_COLUMNS = ", ".join(LIST_COLUMNS)

# id, kind, agent, summary, created_at, lapses_at, status, body, seal, answer, answer_seal,
# window_until
ApprovalRow = tuple[Any, ...]
_APPROVAL_SELECT = (
    "SELECT id, kind, agent, summary, created_at, lapses_at, status, body, seal, answer,"
    " answer_seal, window_until FROM approvals"
)

_LOOKUP = f"SELECT {_COLUMNS}, token_sha256, seal FROM grants WHERE id = ?"


class Ledger:
    """A connection to the ledger; use as a context manager so it is always closed."""

    def __init__(self, paths: Paths) -> None:
        self.path = paths.ledger_file
        with self._errors():
            check_sqlite_files(self.path)  # SQLite itself would follow a planted link
            _refuse_emptied(self.path)
            create_private_file(self.path)
            self.db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                self._create_schema()

    @classmethod
    def read_only(cls, paths: Paths) -> Ledger:
        """The existing ledger opened only to read (`nhidel doctor`): no file is created, no
        mode or schema written (but for one case: a -wal with no -shm beside it, which SQLite
        creates to read it). FileNotFoundError when there is none; `schema_version()` says
        whether this nhidel can read its rows yet (an older one is upgraded by the next writer)."""
        ledger = cls.__new__(cls)
        ledger.path = path = paths.ledger_file
        with ledger._errors():
            check_sqlite_files(path)
            _refuse_emptied(path)
            if not path.is_file():
                raise FileNotFoundError(path)
            # A read-only connection to a WAL database still creates -wal and -shm files unless
            # it is told nothing can change; with no -wal there, no writer is in the middle of
            # anything (as shell completion reads it, nhidel.cli.complete).
            wal = path.with_name(path.name + "-wal")
            mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
            ledger.db = sqlite3.connect(
                f"{path.as_uri()}?{mode}", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
            )
            version = ledger.schema_version()
        if version > SCHEMA_VERSION:
            ledger.close()
            raise _newer_schema(path, version)
        return ledger

    def schema_version(self) -> int:
        with self._errors():
            return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def _create_schema(self) -> None:
        with self.transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif 0 < version < SCHEMA_VERSION:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[step]:
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise _newer_schema(self.path, version)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StorageError(
                    f"the ledger {self.path} is busy", "another nhidel process holds it; retry"
                ) from None
            if "disk is full" in text or "readonly" in text or "unable to open" in text:
                raise StorageError(
                    f"could not write the ledger {self.path}: {text}",
                    "free disk space or fix the directory's permissions, then retry",
                ) from None
            raise IntegrityError(
                f"the ledger {self.path} is unusable: {text}", "restore it from a backup"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(
                f"the ledger {self.path} is corrupt: {exc}", "restore it from a backup"
            ) from None
        except UnicodeDecodeError:  # SQLite's error quoted bytes that are not UTF-8 (its schema)
            raise IntegrityError(
                f"the ledger {self.path} is corrupt: it holds text that is not UTF-8",
                "restore it from a backup",
            ) from None
        except sqlite3.Error as exc:  # anything else SQLite can raise about the file
            raise IntegrityError(
                f"the ledger {self.path} is unusable: {exc}", "restore it from a backup"
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One IMMEDIATE transaction: it takes the write lock up front, so checks stay true."""
        with self._errors():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            if self.db.in_transaction:
                self.db.execute("COMMIT")

    # -- reads ---------------------------------------------------------------------------

    def revocation_epoch(self) -> int:
        with self._errors():
            row = self.db.execute("SELECT value FROM meta WHERE name = 'revocation_epoch'")
            return int(row.fetchone()[0])

    def get(self, grant_id: str) -> Grant | None:
        with self._errors():
            row = self.db.execute(f"SELECT {_COLUMNS} FROM grants WHERE id = ?", (grant_id,))
            found = row.fetchone()
        return _grant(found) if found else None

    def lookup(self, grant_id: str) -> tuple[Grant, str, str | None] | None:
        """A grant, the SHA-256 of its token and the row's seal, for verify (on every check:
        kept lean)."""
        try:
            row = self.db.execute(_LOOKUP, (grant_id,)).fetchone()
        except sqlite3.DatabaseError:
            with self._errors():
                raise
        return (_grant(row[:-2]), row[-2], row[-1]) if row else None

    def check_pages(self) -> None:
        """SQLite's own check of every page and index (`PRAGMA quick_check`): for audit verify,
        which must notice a byte changed anywhere SQLite keeps data."""
        with self._errors():
            found = [row[0] for row in self.db.execute("PRAGMA quick_check")]
        if found != ["ok"]:
            raise IntegrityError(
                f"the ledger {self.path} is corrupt: {found[0]}", "restore it from a backup"
            )

    def sealed_state(self) -> bytes | None:
        """The sealed state document as stored (nhidel.integrity.state checks and reads it)."""
        with self._errors():
            row = self.db.execute("SELECT body FROM sealed_state WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    def set_sealed_state(self, body: bytes) -> None:
        with self._errors():
            self.db.execute("INSERT OR REPLACE INTO sealed_state (id, body) VALUES (1, ?)", (body,))

    def all_rows(self) -> Iterator[tuple[Grant, str, str | None]]:
        """Every grant with its token hash and seal (for audit verify and repair)."""
        with self._errors():
            cursor = self.db.execute(f"SELECT {_COLUMNS}, token_sha256, seal FROM grants")
            while batch := cursor.fetchmany(512):
                for row in batch:
                    yield _grant(row[:-2]), row[-2], row[-1]

    def all_ids(self) -> list[str]:
        with self._errors():
            return [row[0] for row in self.db.execute("SELECT id FROM grants")]

    def delete(self, grant_id: str) -> None:
        """Remove a row (only `nhidel repair --accept-loss`, which logs it)."""
        with self._errors():
            self.db.execute("DELETE FROM grants WHERE id = ?", (grant_id,))

    def reseal(self, grant_id: str, seal: str) -> None:
        with self._errors():
            self.db.execute("UPDATE grants SET seal = ? WHERE id = ?", (seal, grant_id))

    def commit(self) -> None:
        """Commit the open transaction now (`transaction()` then has nothing left to do)."""
        with self._errors():
            self.db.execute("COMMIT")

    def data_version(self) -> int:
        """SQLite's `PRAGMA data_version`: it changes when another connection commits."""
        with self._errors():
            return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def resolve(self, prefixes: Iterable[str]) -> list[Grant]:
        """Resolve every id prefix, or raise NotFoundError naming each one that fails."""
        grants: dict[str, Grant] = {}
        problems = []
        for prefix in prefixes:
            try:
                grant = self._resolve_one(prefix)
            except NotFoundError as exc:
                problems.append(exc)
                continue
            grants.setdefault(grant.id, grant)
        if problems:
            if len(problems) == 1:
                raise problems[0]
            raise NotFoundError("; ".join(p.message for p in problems), problems[0].hint)
        return list(grants.values())

    def _resolve_one(self, prefix: str) -> Grant:
        wanted = prefix.strip().lower()
        if len(wanted) < MIN_PREFIX:
            raise UsageError(
                f"grant id {prefix!r} is too short",
                f"give at least {MIN_PREFIX} characters of the id (see nhidel list)",
            )
        if not GRANT_ID_PREFIX.fullmatch(wanted):
            raise NotFoundError(
                f"no grant {prefix!r}", "grant ids look like gmfrggzdfmz; see nhidel list --all"
            )
        with self._errors():
            rows = self.db.execute(
                f"SELECT {_COLUMNS} FROM grants WHERE id >= ? AND id < ? ORDER BY id LIMIT 6",
                (wanted, wanted + "{"),
            ).fetchall()
        if not rows:
            raise NotFoundError(f"no grant {prefix!r}", "see nhidel list --all for grant ids")
        if len(rows) > 1:
            shown = ", ".join(
                f"{row[ID][: SHORT_ID_LENGTH + 2]} ({row[AGENT]})" for row in rows[:5]
            )
            raise NotFoundError(
                f"grant id {prefix!r} is ambiguous: {shown}{', ...' if len(rows) > 5 else ''}",
                "give more characters of the id",
            )
        return _grant(rows[0])

    def grant_rows(
        self, *, now: int, agent: str | None = None, include_all: bool = False
    ) -> Iterator[tuple[Any, ...]]:
        """Grants as raw rows of `columns.LIST_COLUMNS`: by default the live ones (active and
        pending), with `include_all` every grant; either way soonest to expire first, ties by
        id (the one order `list`, `list --json` and completion share). Streams.

        For `nhidel list`, which turns each row straight into text (nhidel.ledger.rows) and so
        needs no Grant per row.
        """
        where: list[str] = []
        params: list[object] = []
        if not include_all:
            # Walks grants_by_expiry (or grants_by_agent) from `now` on, already in order.
            where.append(f"expires_at > ? AND {LIVE_GRANT_SQL}")
            params.append(now)
        if agent is not None:
            where.append("agent = ?")
            params.append(agent)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._errors():
            # With `include_all`, grants_by_expiry (or grants_by_agent) gives the order, and
            # SQLite sorts only the grants that expire in the same second: it still streams.
            cursor = self.db.execute(
                f"SELECT {_LIST_COLUMNS} FROM grants {clause} ORDER BY expires_at, id", params
            )
            while batch := cursor.fetchmany(512):
                yield from batch

    # -- writes (call inside `transaction()`) -------------------------------------------

    def insert(
        self,
        grant: Grant,
        token_sha256: str,
        seal: str | None = None,
        *,
        revoked_reason: str | None = None,
    ) -> None:
        """Insert a grant's row, sealed by nhidel.integrity.state (verify refuses a row without
        a seal); `revoked_reason`: born revoked, a repair's tombstone."""
        with self._errors():
            self.db.execute(
                "INSERT INTO grants (id, agent, scope, aud, issued_at, not_before, expires_at, "
                "max_uses, reason, kid, token_sha256, status_idx, seal, revoked_at, "
                "revoke_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    grant.id,
                    grant.agent,
                    grant.scope_claim,
                    grant.aud,
                    grant.issued_at,
                    grant.not_before,
                    grant.expires_at,
                    grant.max_uses,
                    grant.reason,
                    grant.kid,
                    token_sha256,
                    grant.status_idx,
                    seal,
                    None if revoked_reason is None else grant.issued_at,
                    revoked_reason,
                ),
            )

    def next_status_idx(self, *, reusable_before: int) -> int:
        """The status list index for a new grant (call inside the transaction that inserts it).

        The smallest index whose every holder expired at or before `reusable_before` (so no
        verifier, whatever its leeway, still accepts their tokens), else one past the highest.
        Reuse keeps the published list short when many grants come and go.
        """
        with self._errors():
            row = self.db.execute(
                "SELECT status_idx FROM grants WHERE status_idx IS NOT NULL GROUP BY status_idx "
                "HAVING max(expires_at) <= ? ORDER BY status_idx LIMIT 1",
                (reusable_before,),
            ).fetchone()
            if row is not None:
                return int(row[0])
            row = self.db.execute("SELECT max(status_idx) FROM grants").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def revoked_status_indices(self, *, live_after: int) -> tuple[list[int], int]:
        """Indices of revoked grants that expire after `live_after`, and the list's size.

        An index is reused only once its holders are past `live_after`, so at most one grant
        counted here holds each index. The size covers every index ever allocated.
        """
        with self._errors():
            revoked = [
                int(row[0])
                for row in self.db.execute(
                    "SELECT status_idx FROM grants WHERE status_idx IS NOT NULL "
                    "AND revoked_at IS NOT NULL AND expires_at > ?",
                    (live_after,),
                )
            ]
            top = self.db.execute("SELECT max(status_idx) FROM grants").fetchone()[0]
        return revoked, 0 if top is None else int(top) + 1

    def status_indices(self, grant_ids: Iterable[str], *, live_after: int) -> list[int]:
        """The status list indices of these grants, of those that expire after `live_after`."""
        with self._errors():
            return [
                int(row[0])
                for grant_id in grant_ids
                for row in self.db.execute(
                    "SELECT status_idx FROM grants WHERE id = ? AND status_idx IS NOT NULL "
                    "AND expires_at > ?",
                    (grant_id, live_after),
                )
            ]

    def revoke(self, grant_ids: Iterable[str], *, now: int, reason: str | None) -> list[str]:
        """Revoke the given grants; return the ids that were not already revoked."""
        newly = []
        with self._errors():
            for grant_id in grant_ids:
                cursor = self.db.execute(
                    "UPDATE grants SET revoked_at = ?, revoke_reason = ? "
                    "WHERE id = ? AND revoked_at IS NULL",
                    (now, reason, grant_id),
                )
                if cursor.rowcount:
                    newly.append(grant_id)
        return newly

    def has_agent(self, agent: str) -> bool:
        """Whether any grant of `agent` is in the ledger (a removed agent's grants stay)."""
        with self._errors():
            row = self.db.execute("SELECT 1 FROM grants WHERE agent = ? LIMIT 1", (agent,))
            return row.fetchone() is not None

    def live_ids(self, *, now: int, agent: str | None = None, kid: str | None = None) -> list[str]:
        """Ids of grants not yet expired (pending included), revoked or not: whether one is
        revoked is the sealed state's to say (nhidel.integrity.state), since a row can be edited."""
        sql = "SELECT id FROM grants WHERE expires_at > ?"
        params: list[Any] = [now]
        if agent is not None:
            sql += " AND agent = ?"
            params.append(agent)
        if kid is not None:
            sql += " AND kid = ?"
            params.append(kid)
        with self._errors():
            return [row[0] for row in self.db.execute(sql, params)]

    def last_expiry(self, kid: str, *, now: int) -> int | None:
        """When the last grant signed by `kid` that could still be used expires, if any does."""
        with self._errors():
            row = self.db.execute(
                "SELECT max(expires_at) FROM grants WHERE kid = ? AND revoked_at IS NULL "
                "AND expires_at > ?",
                (kid, now),
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def note_secret_use(self, names: Iterable[str], *, now: int) -> None:
        """When each of `names` last went into a request or a server (for `secret list`: not
        trusted for anything, so the meta table, not the sealed state)."""
        with self._errors():
            self.db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
                [(_SECRET_USE + name, now) for name in names],
            )

    def secret_uses(self) -> dict[str, int]:
        with self._errors():
            rows = self.db.execute(
                "SELECT name, value FROM meta WHERE name >= ? AND name < ?",
                (_SECRET_USE, _SECRET_USE[:-1] + chr(ord(_SECRET_USE[-1]) + 1)),
            ).fetchall()
        return {name[len(_SECRET_USE) :]: int(value) for name, value in rows}

    def bump_revocation_epoch(self) -> None:
        with self._errors():
            self.db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revocation_epoch'")

    def raise_uses(self, grant_id: str, uses: int) -> None:
        """At least `uses` uses (a repair putting back what the log holds)."""
        with self._errors():
            self.db.execute("UPDATE grants SET uses = max(uses, ?) WHERE id = ?", (uses, grant_id))

    # -- approvals (rows as stored: nhidel.integrity.approvals checks their seals) -----------

    def add_approval(self, row: ApprovalRow) -> None:
        with self._errors():
            self.db.execute(
                "INSERT INTO approvals (id, kind, agent, summary, created_at, lapses_at, status,"
                " body, seal, answer, answer_seal, window_until) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )

    def approval(self, approval_id: str) -> ApprovalRow | None:
        with self._errors():
            found = self.db.execute(f"{_APPROVAL_SELECT} WHERE id = ?", (approval_id,)).fetchone()
        return None if found is None else tuple(found)

    def approvals(
        self, *, open_after: int | None = None, agent: str | None = None, status: str | None = None
    ) -> list[ApprovalRow]:
        """Rows, oldest first: those still open at `open_after` (pending or answered, not yet
        lapsed, or a window not yet closed), of `agent`, with `status`."""
        where: list[str] = []
        args: list[int | str] = []
        if open_after is not None:
            where.append("(lapses_at > ? OR window_until > ?)")
            args += [open_after, open_after]
        if agent is not None:
            where.append("agent = ?")
            args.append(agent)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._errors():
            rows = self.db.execute(f"{_APPROVAL_SELECT}{clause} ORDER BY created_at, id", args)
            return [tuple(row) for row in rows]

    def approval_ids(self, prefix: str) -> list[str]:
        with self._errors():
            rows = self.db.execute(
                "SELECT id FROM approvals WHERE substr(id, 1, ?) = ?", (len(prefix), prefix)
            )
            return [row[0] for row in rows]

    def answer_approval(
        self, approval_id: str, *, status: str, answer: str, seal: str, window_until: int | None
    ) -> None:
        with self._errors():
            self.db.execute(
                "UPDATE approvals SET status = ?, answer = ?, answer_seal = ?, window_until = ? "
                "WHERE id = ?",
                (status, answer, seal, window_until, approval_id),
            )

    def set_approval_status(self, approval_id: str, status: str) -> None:
        with self._errors():
            self.db.execute("UPDATE approvals SET status = ? WHERE id = ?", (status, approval_id))

    def count_use(self, grant_id: str) -> None:
        """Count one use in the row (the sealed state decides whether a use is left)."""
        with self._errors():
            self.db.execute("UPDATE grants SET uses = uses + 1 WHERE id = ?", (grant_id,))


def _newer_schema(path: Path, version: int) -> IntegrityError:
    return IntegrityError(
        f"{path} has schema version {version}, this nhidel knows {SCHEMA_VERSION}",
        "upgrade nhidel",
    )


def _refuse_emptied(path: Path) -> None:
    """A database file emptied by hand while its WAL index is still there (only a database
    in WAL mode, so with pages, gets one): SQLite would answer "busy" to every command for as
    long as another connection is open, hiding the loss."""
    try:
        emptied = path.stat().st_size == 0 and os.path.exists(f"{path}-shm")
    except FileNotFoundError:
        return
    if emptied:
        raise IntegrityError(
            f"the ledger {path} was emptied (its WAL index is still there)",
            "restore it from a backup, or run nhidel repair --accept-loss",
        )


def _grant(row: tuple[Any, ...]) -> Grant:
    """The Grant a row of GRANT_COLUMNS holds, or IntegrityError for a row edited by hand."""
    (
        grant_id,
        agent,
        scope,
        aud,
        issued_at,
        not_before,
        expires_at,
        max_uses,
        uses,
        reason,
        kid,
        revoked_at,
        revoke_reason,
        status_idx,
    ) = row
    # Spelled out rather than looped: verify reads a row per fresh token.
    try:
        scopes = parse_scope_text(scope)
        shaped = (
            type(issued_at) is int
            and type(not_before) is int
            and type(expires_at) is int
            and type(uses) is int
            and (max_uses is None or type(max_uses) is int)
            and (revoked_at is None or type(revoked_at) is int)
            and (status_idx is None or type(status_idx) is int)
            and type(grant_id) is str
            and type(agent) is str
            and type(kid) is str
            and (aud is None or type(aud) is str)
            and (reason is None or type(reason) is str)
            and (revoke_reason is None or type(revoke_reason) is str)
        )
    except (UsageError, TypeError, AttributeError):
        shaped = False
    if not shaped:
        raise IntegrityError(
            f"the ledger row for {grant_id} is malformed (edited by hand?)",
            "restore the ledger from a backup, or run nhidel repair --accept-loss",
        )
    return Grant(
        id=grant_id,
        agent=agent,
        scopes=scopes,
        aud=aud,
        issued_at=issued_at,
        not_before=not_before,
        expires_at=expires_at,
        max_uses=max_uses,
        reason=reason,
        kid=kid,
        uses=uses,
        revoked_at=revoked_at,
        revoke_reason=revoke_reason,
        status_idx=status_idx,
    )
