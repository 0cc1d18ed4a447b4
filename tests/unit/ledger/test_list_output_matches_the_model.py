"""`nhidel list` at scale: rows straight to JSON text and a streamed table, same output as before.

The fast path never builds a Grant, so the property tests here compare it with
`json.dumps(grant.to_json(now))` over random grants of every status. No test here times anything.
"""

from __future__ import annotations

import errno
import io
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from helpers.support import Cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhidel.cli import grant_cmds, render
from nhidel.errors import IntegrityError
from nhidel.ledger import columns
from nhidel.ledger.columns import GRANT_COLUMNS, LIST_COLUMNS
from nhidel.ledger.rows import JsonRows, row_status
from nhidel.ledger.store import Ledger
from nhidel.models import Grant, GrantStatus
from nhidel.names import AGENT_NAME, GRANT_ID
from nhidel.paths import Paths
from nhidel.scopes import MAX_SCOPES, parse_scopes

T = 1_795_428_000


def old_json_array(items: list[Any]) -> str:
    """What `list --json` printed before the fast path (its _stream_json_array, verbatim)."""
    out = io.StringIO()
    first = True
    out.write("[")
    for item in items:
        out.write("\n  " if first else ",\n  ")
        out.write(json.dumps(item, ensure_ascii=False))
        first = False
    out.write("]\n" if first else "\n]\n")
    return out.getvalue()


def insert_grant(ledger: Ledger, grant: Grant) -> None:
    """Insert `grant` as the ledger would hold it, uses and revocation included."""
    with ledger.transaction():
        ledger.insert(grant, "0" * 64)
        ledger.db.execute(
            "UPDATE grants SET uses = ?, revoked_at = ?, revoke_reason = ? WHERE id = ?",
            (grant.uses, grant.revoked_at, grant.revoke_reason, grant.id),
        )


def fast_lines(ledger: Ledger, now: int, **query: Any) -> list[str]:
    return list(JsonRows(now).lines(ledger.grant_rows(now=now, **query)))


def slow_grants(ledger: Ledger, now: int, **query: Any) -> list[Grant]:
    """The listed grants as Grant objects, each read on its own (`Ledger.get`)."""
    found = [ledger.get(row[0]) for row in ledger.grant_rows(now=now, **query)]
    return [grant for grant in found if grant is not None]


def slow_lines(ledger: Ledger, now: int, **query: Any) -> list[str]:
    grants = slow_grants(ledger, now, **query)
    return [json.dumps(g.to_json(now), ensure_ascii=False) for g in grants]


# -- random grants, every status --------------------------------------------------------------

_NAME = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,6}", fullmatch=True)
_RESOURCE = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=12,
).map(lambda text: text.replace("*", "") or "x") | st.sampled_from(['a"b', "c\\d", "e/*", "ü/ß"])
_SCOPE = st.builds(
    lambda service, action, resource: f"{service}:{action}" + (f":{resource}" if resource else ""),
    _NAME,
    _NAME | st.just("*"),
    st.none() | _RESOURCE,
)
_TEXT = st.none() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
# Times around the fixed clock, and far from it (other days, years, before 1970).
_TIME = st.integers(T - 3 * 86400, T + 3 * 86400) | st.integers(-(10**9), 4 * 10**9)


@st.composite
def grants(draw: st.DrawFn) -> Grant:
    issued_at = draw(_TIME)
    not_before = issued_at if draw(st.booleans()) else draw(_TIME)
    max_uses = draw(st.none() | st.integers(1, 5))
    return Grant(
        id=draw(st.from_regex(GRANT_ID, fullmatch=True)),
        agent=draw(st.from_regex(AGENT_NAME, fullmatch=True)),
        scopes=parse_scopes(draw(st.lists(_SCOPE, min_size=1, max_size=4))),
        aud=draw(st.none() | st.sampled_from(["api.example.com", 'q"uote', "ü.test"])),
        issued_at=issued_at,
        not_before=not_before,
        expires_at=draw(_TIME),
        max_uses=max_uses,
        reason=draw(_TEXT),
        kid=draw(st.sampled_from(["kid", "k\\id"])),
        uses=draw(st.integers(0, 6)),
        revoked_at=draw(st.none() | _TIME),
        revoke_reason=draw(_TEXT),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(grants(), min_size=1, max_size=12, unique_by=lambda g: g.id), _TIME, st.booleans())
def test_fast_json_is_byte_for_byte_what_to_json_gives(
    drawn: list[Grant], now: int, include_all: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp, Ledger(Paths(Path(tmp), Path(tmp))) as ledger:
        for grant in drawn:
            insert_grant(ledger, grant)
        fast = fast_lines(ledger, now, include_all=include_all)
        assert fast == slow_lines(ledger, now, include_all=include_all)
        agent = drawn[0].agent
        assert fast_lines(ledger, now, include_all=include_all, agent=agent) == slow_lines(
            ledger, now, include_all=include_all, agent=agent
        )
        # The status the table shows is Grant.status too.
        rows = list(ledger.grant_rows(now=now, include_all=True))
        by_id = {g.id: g for g in drawn}
        assert [row_status(row, now) for row in rows] == [
            by_id[row[0]].status(now).value for row in rows
        ]
        # The live-grant condition in SQL admits exactly the grants Grant.status calls live.
        live = {row[0] for row in ledger.grant_rows(now=now)}
        assert live == {
            g.id for g in drawn if g.status(now) in (GrantStatus.ACTIVE, GrantStatus.PENDING)
        }


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=1100), st.sampled_from([10, 1 << 22]))
def test_the_array_is_what_the_old_writer_printed_spooled_or_not(
    texts: list[str], spool_limit: int
) -> None:
    lines = [json.dumps(text, ensure_ascii=False) for text in texts]
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(grant_cmds, "_SPOOL_IN_MEMORY", spool_limit)
        patch.setattr("sys.stdout", out)
        grant_cmds._stream_json_array(iter(lines), spool_dir=Path(tmp))
        assert list(Path(tmp).iterdir()) == []  # no spool file left behind
    assert out.getvalue() == old_json_array(texts)


# -- every status, through the command --------------------------------------------------------


def grant_with(grant_id: str, **fields: Any) -> Grant:
    base: dict[str, Any] = {
        "id": grant_id, "agent": "reviewer", "scopes": parse_scopes(["repo:read:acme/api"]),
        "aud": None, "issued_at": T - 60, "not_before": T - 60, "expires_at": T + 3600,
        "max_uses": None, "reason": None, "kid": "kid",
    }  # fmt: skip
    base.update(fields)
    return Grant(**base)


STATUSES = {
    "gactive" + "a" * 20: {"aud": "api.example.com", "reason": 'say "hi"\n\x1b[2J ü'},
    "gpending" + "a" * 19: {"not_before": T + 60, "max_uses": 3},
    "gexpired" + "a" * 19: {"expires_at": T - 1},
    "grevoked" + "a" * 19: {"revoked_at": T - 5, "revoke_reason": "leaked"},
    "gexhausted" + "a" * 17: {"max_uses": 2, "uses": 2},
}


@pytest.fixture
def every_status(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setattr("nhidel.cli.common.now", lambda: T)
    with Ledger(paths) as ledger:
        for grant_id, fields in STATUSES.items():
            insert_grant(ledger, grant_with(grant_id, **fields))
    return paths


def test_list_all_json_shows_every_status_as_to_json_does(every_status: Paths, cli: Cli) -> None:
    printed = cli.ok("list", "--all", "--json").stdout
    with Ledger(every_status) as ledger:
        expected = [g.to_json(T) for g in slow_grants(ledger, T, include_all=True)]
    assert printed == old_json_array(expected)
    assert {g["status"] for g in json.loads(printed)} == {s.value for s in GrantStatus}
    default = json.loads(cli.ok("list", "--json").stdout)
    assert [g["status"] for g in default] == ["active", "pending"]
    unknown = cli("list", "--agent", "nobody", "--json")  # no agent, and no grant of one
    assert (unknown.exit_code, unknown.stdout) == (3, "")


def test_the_table_lists_every_status_and_escapes_the_text(
    every_status: Paths, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # wide enough that no cell folds
    with Ledger(every_status) as ledger, ledger.transaction():
        ledger.db.execute("UPDATE grants SET agent = 'ev\x1bil[red]' WHERE id LIKE 'gexp%'")
    table = cli.ok("list", "--all").stdout
    lines = table.splitlines()
    assert lines[0].split() == ["ID", "AGENT", "SCOPES", "EXPIRES", "USES", "STATUS"]
    status = lines[0].index("STATUS")
    assert [line[status:] for line in lines[1:]] == [
        "expired", "active", "exhausted", "pending, starts in 1m", "revoked"
    ]  # fmt: skip
    assert "\x1b" not in table and "ev\\x1bil[red]" in table
    assert "0/3" in table and "2/2" in table


def test_an_empty_listing_says_so_on_stderr(cli: Cli, paths: Paths) -> None:
    Ledger(paths).close()
    result = cli("list")
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr == "no active grants (see --all)\n"
    assert cli.ok("list", "--json").stdout == "[]\n"


# -- a corrupt row ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "table_too"),
    [
        ("scope", "NOT A SCOPE", True),
        ("expires_at", "soon", True),
        ("uses", 1.5, True),
        ("agent", b"\x00", False),  # a blob: the table shows it escaped, JSON cannot hold it
    ],
)
@pytest.mark.parametrize("spool_limit", [100, 1 << 22])
def test_a_corrupt_row_fails_with_exit_5_and_prints_no_partial_array(
    cli: Cli,
    paths: Paths,
    monkeypatch: pytest.MonkeyPatch,
    column: str,
    value: object,
    table_too: bool,
    spool_limit: int,
) -> None:
    monkeypatch.setattr("nhidel.cli.common.now", lambda: T)
    monkeypatch.setattr(grant_cmds, "_SPOOL_IN_MEMORY", spool_limit)
    with Ledger(paths) as ledger:
        for n in range(600):  # good rows first: more than one chunk, more than the spool
            insert_grant(ledger, grant_with(f"g{n:05d}" + "b" * 21))
        insert_grant(ledger, grant_with("gzzzz" + "c" * 22, expires_at=T + 7200))
        with ledger.transaction():
            ledger.db.execute(f"UPDATE grants SET {column} = ? WHERE id LIKE 'gzzzz%'", (value,))
    result = cli("list", "--json")
    assert result.exit_code == 5
    assert result.stdout == ""
    assert result.stderr.startswith("error: the ledger row for gzzzz")
    assert "Traceback" not in result.stderr
    assert list(paths.state_dir.glob("tmp*")) == []
    assert cli("list").exit_code == (5 if table_too else 0)


def test_the_fast_path_raises_integrity_error_where_a_grant_could_not_be_built() -> None:
    row = ("gabcd", "a", "x:y", None, T, T, T + 9, None, 0, None, "k", None, None)
    assert JsonRows(T).line(row).startswith('{"id": "gabcd"')
    too_many = " ".join(f"x:y{n}" for n in range(MAX_SCOPES + 1))
    for index, bad in [(2, "Bad Scope"), (2, too_many), (4, "x"), (6, 10**20), (8, "1")]:
        broken = row[:index] + (bad,) + row[index + 1 :]
        with pytest.raises(IntegrityError, match="gabcd"):
            JsonRows(T).line(broken)


# -- the table streams ------------------------------------------------------------------------


def synthetic_rows(count: int, consumed: list[int], *, scope: str = "repo:read:acme/api") -> Any:
    for n in range(count):
        consumed[0] = n + 1
        yield (f"g{n:026d}", "agent", scope, None, T, T, T + 60 + n, None, 0, None, "k", None, None)


class WatchedStdout(io.StringIO):
    """Records how many rows had been read when the first text was written."""

    def __init__(self, consumed: list[int]) -> None:
        super().__init__()
        self.consumed = consumed
        self.rows_read_at_first_write: int | None = None

    def write(self, text: str) -> int:
        if self.rows_read_at_first_write is None and text:
            self.rows_read_at_first_write = self.consumed[0]
        return super().write(text)


def test_the_table_prints_its_first_screen_before_reading_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumed = [0]
    out = WatchedStdout(consumed)
    monkeypatch.setattr("sys.stdout", out)
    shown = render.grants_table(synthetic_rows(10_000, consumed), T)
    assert shown == 10_000
    assert out.rows_read_at_first_write is not None
    assert out.rows_read_at_first_write <= render.FIRST_SCREEN_ROWS + 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 10_001 and lines[1].startswith("g000000000  agent")


def test_long_agents_and_scopes_fold_within_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    long_scope = "repo:read:" + "x" * 70 + " ticket:create:queue/a ticket:create:queue/b"
    rows = [
        ("g" + "a" * 26, "z" * 30, long_scope, None, T, T, T + 60, 5, 1, None, "k", None, None),
        ("g" + "b" * 26, "short", "a:b", None, T, T, T + 90, None, 0, None, "k", None, None),
    ]
    assert render.grants_table(rows, T) == 2
    printed = out.getvalue()
    lines = printed.splitlines()
    assert max(len(line) for line in lines) == 60
    assert printed.count("z") == 30 and not any("z" * 21 in line for line in lines)
    start, end = lines[0].index("SCOPES"), lines[0].index("EXPIRES") - 2
    folded = [line[start:end].strip() for line in lines[1:-1]]
    assert "".join(folded) == long_scope.replace(" ", "")
    assert max(len(part) for part in folded) == end - start
    assert lines[1].split()[-4:] == ["in", "1m", "1/5", "active"]
    assert lines[-1].split() == ["gbbbbbbbbb", "short", "a:b", "in", "1m", "30s", "0", "active"]


def test_styling_is_only_for_a_terminal_without_no_color_set_to_any_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    assert render.styled(Tty()) and not render.styled(io.StringIO())
    for value in ("1", ""):  # set, even empty, is enough
        monkeypatch.setenv("NO_COLOR", value)
        assert not render.styled(Tty())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not render.styled(Tty())


# -- the ledger: indexes and migration ------------------------------------------------------------


def plans(ledger: Ledger, **query: Any) -> list[str]:
    executed: list[str] = []
    ledger.db.set_trace_callback(executed.append)
    list(ledger.grant_rows(now=T, **query))
    ledger.db.set_trace_callback(None)
    (sql,) = [s for s in executed if s.startswith("SELECT")]
    return [row[3] for row in ledger.db.execute(f"EXPLAIN QUERY PLAN {sql}")]


def test_listing_reads_an_index_in_order_and_sorts_at_most_ties(paths: Paths) -> None:
    with Ledger(paths) as ledger:
        assert plans(ledger) == ["SEARCH grants USING INDEX grants_live (expires_at>?)"]
        # Every grant in expiry order: only grants that expire in the same second are sorted
        # (by id), so the listing still streams.
        assert plans(ledger, include_all=True) == [
            "SCAN grants USING INDEX grants_by_expiry",
            "USE TEMP B-TREE FOR RIGHT PART OF ORDER BY",
        ]
        assert plans(ledger, agent="reviewer")[0].startswith(
            "SEARCH grants USING INDEX grants_by_agent (agent=? AND expires_at>?)"
        )


def schema(path: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        found = {
            (name, " ".join((sql or "").split()).replace(" )", ")"))
            for name, sql in db.execute("SELECT name, sql FROM sqlite_master")
        }
    db.close()
    return found


def test_a_version_2_ledger_gets_the_listing_indexes_and_keeps_its_grants(paths: Paths) -> None:
    with Ledger(paths) as ledger:
        insert_grant(ledger, grant_with("g" + "q" * 26))
    fresh = schema(paths.ledger_file)
    with sqlite3.connect(paths.ledger_file) as db:
        db.execute("DROP INDEX grants_live")
        db.execute("DROP INDEX grants_by_issue")
        db.execute("ALTER TABLE grants DROP COLUMN seal")
        db.execute("DROP TABLE sealed_state")
        db.execute("DROP TABLE approvals")
        db.execute("PRAGMA user_version = 2")
    db.close()
    with Ledger(paths) as ledger:
        assert [r[0] for r in ledger.grant_rows(now=T)] == ["g" + "q" * 26]
        assert ledger.db.execute("PRAGMA user_version").fetchone()[0] == 5
    assert schema(paths.ledger_file) == fresh


def test_list_columns_are_what_to_json_needs(paths: Paths) -> None:
    grant = grant_with("g" + "w" * 26, aud="a.test", reason="r", max_uses=4, uses=1)
    with Ledger(paths) as ledger:
        insert_grant(ledger, grant)
        (row,) = ledger.grant_rows(now=T)
    listed = dict(zip(LIST_COLUMNS, row, strict=True))
    assert listed == {
        name: grant.scope_claim if name == "scope" else getattr(grant, name)
        for name in LIST_COLUMNS
    }
    assert json.loads(JsonRows(T).line(row)) == grant.to_json(T)


def test_each_column_position_names_its_column() -> None:
    for position, name in enumerate(GRANT_COLUMNS):
        assert getattr(columns, name.upper()) == position
    assert LIST_COLUMNS == GRANT_COLUMNS[: len(LIST_COLUMNS)]


def test_listing_imports_neither_rich_nor_pydantic(every_status: Paths) -> None:
    probe = (
        "import sys\n"
        "from nhidel.cli import main\n"
        "for args in (['list', '--all'], ['list', '--json']):\n"
        "    assert main(args) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'pydantic')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]"
    assert "gpendingaa" in done.stdout


def test_a_spool_that_cannot_be_written_is_a_clean_storage_error(
    every_status: Paths, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(grant_cmds, "_SPOOL_IN_MEMORY", 10)
    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    result = cli("list", "--all", "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error: could not hold the listing in a temp file")
    assert "No space left on device" in result.stderr
