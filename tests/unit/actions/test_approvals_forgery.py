"""Forging approvals as an agent that can write nhidel's files but not read the keystore.

Each test edits the approvals table (or puts back an older ledger) by hand, as such an agent
would, then asks both sides what they make of it: the enforcement point's desk
(nhidel.actions.approvals.Desk) never lets the call go on a forged yes, the human's side
(`listed`, `find`, `answer`) shows the row as forged and refuses to answer it, and
`audit verify` names the edit.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from nhidel.actions.agents import add_agent
from nhidel.actions.approvals import GO, Choice, Desk, answer, find, listed
from nhidel.actions.audit_log import verify_log
from nhidel.actions.grants import GrantRequest, issue
from nhidel.actions.keys import init_principal
from nhidel.audit import AuditKeys
from nhidel.errors import IntegrityError, NhidelError
from nhidel.integrity.approvals import Call, canonical_sha256
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.ledger.store import Ledger
from nhidel.paths import Paths

MARK = "fs:write_file:*"
_HASH = canonical_sha256({"path": "/srv/pay.txt", "content": "pay 10"})


@dataclass
class Home:
    paths: Paths
    store: KeyStore
    desk: Desk
    grant: str
    now: int

    def call(self, content: str, path: str = "/srv/pay.txt", agent: str = "bot") -> Call:
        arguments = {"path": path, "content": content}
        return Call(agent, self.grant, "fs", "write_file", (path,), canonical_sha256(arguments))

    def ask(self, content: str, path: str = "/srv/pay.txt") -> Any:
        """What the desk says of the call (a new request is opened when none covers it)."""
        call = self.call(content, path)
        return self.desk.consider(call, via="mcp", mark=MARK,
                                  arguments={"path": path, "content": content})  # fmt: skip

    def opened(self, content: str, path: str = "/srv/pay.txt") -> str:
        verdict = self.ask(content, path)
        assert verdict.outcome == "pending"
        return str(verdict.request.id)

    def answer(self, approval_id: str, choice: Choice) -> None:
        answer(self.paths, self.store, approval_id, choice, now=self.now)

    def row(self, approval_id: str) -> dict[str, Any]:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            return dict(db.execute("SELECT * FROM approvals WHERE id = ?",
                                   (approval_id,)).fetchone())  # fmt: skip

    def edit(self, statement: str, params: tuple[Any, ...]) -> None:
        """As the agent would: straight into ledger.db."""
        with self._db() as db:
            assert db.execute(statement, params).rowcount == 1
            db.commit()

    def status(self, approval_id: str) -> str:
        shown = {item.id: item.status for item in listed(self.paths, self.store, now=self.now,
                                                          every=True)}  # fmt: skip
        return shown[approval_id]

    def audit_ok(self) -> bool:
        return verify_log(self.paths, self.store).ok

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.paths.ledger_file)


@pytest.fixture
def home(paths: Paths) -> Iterator[Home]:
    now = int(time.time())
    store = open_keystore(paths)
    init_principal(paths, store, principal="alice", issuer=None, now=now)
    add_agent(paths, "bot", allow=["fs:*:*"], max_ttl="1h", default_ttl=None, audiences=[],
              approve=[MARK], now=now, keystore=store)  # fmt: skip
    grant, _ = issue(paths, store, GrantRequest("bot", ["fs:*:*"], ttl="30m"), now=now)
    with Ledger(paths) as ledger:
        desk = Desk(paths, AuditKeys.of(store), ledger, clock=lambda: now, timeout=600)
        yield Home(paths, store, desk, grant.id, now)


def refused_to_answer(home: Home, approval_id: str) -> int:
    with pytest.raises(NhidelError) as caught:
        home.answer(approval_id, Choice(True))
    return caught.value.exit_status


def test_an_untouched_yes_goes_once_and_audit_verify_is_clean(home: Home) -> None:
    # The baseline the forgeries below are held against.
    ident = home.opened("pay 10")
    home.answer(ident, Choice(True))
    assert home.ask("pay 10").outcome == GO
    assert home.ask("pay 10").outcome == "pending"  # spent: a new request
    assert home.status(ident) == "granted"
    assert home.audit_ok()


def test_a_status_flipped_to_granted_by_hand_is_no_yes(home: Home) -> None:
    ident = home.opened("pay 10")
    home.edit("UPDATE approvals SET status = 'granted' WHERE id = ?", (ident,))
    assert home.ask("pay 10").outcome != GO
    assert home.status(ident) == "forged"
    assert refused_to_answer(home, ident) == 5
    assert not home.audit_ok()


def test_an_answer_edited_from_denied_to_granted_is_no_yes(home: Home) -> None:
    ident = home.opened("pay 10")
    home.answer(ident, Choice(False, reason="no"))
    row = home.row(ident)
    home.edit("UPDATE approvals SET status = 'granted', answer = ? WHERE id = ?",
              (row["answer"].replace('"denied"', '"granted"'), ident))  # fmt: skip
    assert home.ask("pay 10").outcome != GO
    assert home.status(ident) == "forged"
    assert not home.audit_ok()


def test_a_seal_copied_from_an_approved_request_is_no_yes(home: Home) -> None:
    approved = home.opened("pay 10")
    home.answer(approved, Choice(True))
    waiting = home.opened("pay 99")
    source = home.row(approved)
    home.edit("UPDATE approvals SET status = 'granted', answer = ?, answer_seal = ? WHERE id = ?",
              (source["answer"], source["answer_seal"], waiting))  # fmt: skip
    assert home.ask("pay 99").outcome != GO
    assert home.status(waiting) == "forged"
    assert refused_to_answer(home, waiting) == 5
    assert not home.audit_ok()


def test_a_genuine_answer_to_another_request_with_the_same_arguments_is_no_yes(
    home: Home,
) -> None:
    first = home.opened("pay 10", "/srv/a.txt")
    home.answer(first, Choice(True))
    # The same arguments, held again on another request (the first yes is spent on it).
    assert home.ask("pay 10", "/srv/a.txt").outcome == GO
    second = home.opened("pay 10", "/srv/a.txt")
    source = home.row(first)
    home.edit("UPDATE approvals SET status = 'granted', answer = ?, answer_seal = ? WHERE id = ?",
              (source["answer"], source["answer_seal"], second))  # fmt: skip
    assert home.ask("pay 10", "/srv/a.txt").outcome != GO
    assert home.status(second) == "forged"
    assert not home.audit_ok()


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        ("until", lambda a: a.replace('"until":', '"until":9', 1)),
        (
            "any args",
            lambda a: a.replace(f'"args_sha256":"{_HASH}","grant"', '"args_sha256":null,"grant"'),
        ),
        ("resources", lambda a: a.replace('"resources":["/srv/pay.txt"]', '"resources":["/"]')),
    ],
)
def test_a_widened_window_is_no_yes(home: Home, what: str, edit: Any) -> None:
    ident = home.opened("pay 10")
    home.answer(ident, Choice(True, window=600))
    row = home.row(ident)
    widened = edit(row["answer"])
    assert widened != row["answer"], what
    home.edit("UPDATE approvals SET answer = ? WHERE id = ?", (widened, ident))
    assert home.ask("pay 10").outcome != GO  # not even the call the window did cover
    assert home.ask("pay 11").outcome != GO
    assert home.ask("pay 10", "/srv/other.txt").outcome != GO
    assert home.status(ident) == "forged"
    assert not home.audit_ok()


def test_a_window_end_edited_in_its_column_is_named(home: Home) -> None:
    ident = home.opened("pay 10")
    home.answer(ident, Choice(True, window=600))
    home.edit("UPDATE approvals SET window_until = window_until + 86400 WHERE id = ?", (ident,))
    assert home.status(ident) == "forged"
    assert not home.audit_ok()


def test_a_spent_yes_put_back_with_an_older_ledger_is_not_spent_again(home: Home) -> None:
    ident = home.opened("pay 10")
    home.answer(ident, Choice(True))
    copy = home.paths.ledger_file.with_name("ledger-copy.db")
    with home._db() as db, sqlite3.connect(copy) as saved:
        db.backup(saved)  # the agent's copy, taken before the spend
    assert home.ask("pay 10").outcome == GO
    home.desk.ledger.close()
    for side in ("ledger.db-wal", "ledger.db-shm"):
        home.paths.ledger_file.with_name(side).unlink(missing_ok=True)
    copy.replace(home.paths.ledger_file)
    with Ledger(home.paths) as ledger:
        home.desk.ledger = ledger
        with pytest.raises(IntegrityError):
            home.ask("pay 10")
    assert not home.audit_ok()


def test_a_spent_yes_put_back_with_an_older_sealed_state_is_not_spent_again(home: Home) -> None:
    ident = home.opened("pay 10")
    home.answer(ident, Choice(True))
    with home._db() as db:
        before = db.execute("SELECT body FROM sealed_state").fetchone()[0]
    assert home.ask("pay 10").outcome == GO
    home.edit("UPDATE sealed_state SET body = ?", (before,))
    with pytest.raises(IntegrityError):
        home.ask("pay 10")
    assert not home.audit_ok()


def test_a_forged_summary_is_shown_forged_and_not_answered(home: Home) -> None:
    ident = home.opened("rm -rf /")
    row = home.row(ident)
    home.edit("UPDATE approvals SET body = ?, summary = ? WHERE id = ?",
              (row["body"].replace("rm -rf /", "harmless"), "fs write_file: harmless",
               ident))  # fmt: skip
    item = find(home.paths, home.store, ident, now=home.now)
    assert item.status == "forged" and item.request is None
    assert refused_to_answer(home, ident) == 5
    assert not home.audit_ok()


def test_a_summary_column_edited_alone_is_shown_forged(home: Home) -> None:
    ident = home.opened("rm -rf /")
    home.edit("UPDATE approvals SET summary = 'fs write_file: harmless' WHERE id = ?", (ident,))
    assert home.status(ident) == "forged"
    assert refused_to_answer(home, ident) == 5
    assert not home.audit_ok()


def _insert(home: Home, ident: str, status: str, answer: str | None) -> None:
    home.edit(
        "INSERT INTO approvals (id, kind, agent, summary, created_at, lapses_at, status, body,"
        " seal, answer, answer_seal, window_until) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (ident, "call", "bot", "fs write_file: x", home.now, home.now + 600, status,
         '{"agent":"bot"}', "0" * 64, answer, None, None),
    )  # fmt: skip


def test_a_request_inserted_without_a_seal_is_not_pending_nor_approvable(home: Home) -> None:
    ident = "a" + "b" * 16
    _insert(home, ident, "pending", None)
    assert home.status(ident) == "forged"
    assert refused_to_answer(home, ident) == 5
    assert not home.audit_ok()


def test_an_answer_inserted_without_a_seal_is_no_yes(home: Home) -> None:
    ident = home.opened("pay 10")
    row = home.row(ident)
    forged = json.dumps({
        "answered_at": home.now, "args_sha256": json.loads(row["body"])["args_sha256"],
        "decision": "granted", "extra": None, "reason": None, "request": ident, "window": None,
    }, sort_keys=True, separators=(",", ":"))  # fmt: skip
    home.edit("UPDATE approvals SET status = 'granted', answer = ? WHERE id = ?", (forged, ident))
    assert home.ask("pay 10").outcome != GO
    assert home.status(ident) == "forged"
    assert not home.audit_ok()


def test_approvals_json_says_forged_for_an_edited_row(home: Home, cli: Any) -> None:
    ident = home.opened("pay 10")
    home.edit("UPDATE approvals SET status = 'denied' WHERE id = ?", (ident,))
    shown = json.loads(cli.ok("approvals", "--json", "--all").stdout)
    assert [item["status"] for item in shown if item["id"] == ident] == ["forged"]
    assert cli("approve", ident).exit_code == 5
