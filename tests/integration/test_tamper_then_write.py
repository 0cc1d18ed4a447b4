"""Tamper-then-write harness (issue 10, "Tests that must exist and pass", first item).

The attacker can write every file in the nhidel home but cannot read the keystore. Each case
copies a seeded world (tests/helpers/tamper_worlds.py: built through nhidel's own code, with the
ground truth kept), tampers with one or several of its files (audit.jsonl, rotated segments,
ledger.db, config.toml and, for the encrypted-file keystore, keystore.json), then runs what a
human and a gateway would run next, through the CLI in-process or the library:

  verify every known token (without, then with --consume; sometimes on a long-running
  `Verifier` opened before the tampering), grant within an agent's real ceiling and beyond it,
  revoke a live grant (then verify it again), narrow reviewer's ceiling to one audience (which
  revokes every grant of it, none naming an audience), `audit tail -n 5`, `audit verify`, verify
  again.

and holds every result against the truth (SPEC "Security model", issue 10 item 2):
- no verify allows a revoked or exhausted grant, nor consumes past `max_uses`;
- no grant is issued (exit 0) beyond an agent's real, sealed ceiling or with a compromised key;
- `audit verify` is exit 5 after any tampering that lost or changed something in the log, the
  ledger or config.toml, unless it was a no-op, a crash-shaped torn fragment (then a warning or
  a sealed `log.recovered`), or the documented whole-state rollback (keystore, log and ledger
  together from one old copy, with the file keystore only: then the old truth holds);
- `audit tail` prints only records nhidel sealed;
- nothing crashes: every failure is an NhidelError with an exit code from SPEC.

In the keyring worlds the in-memory keyring of tests/conftest.py is the keystore, out of the
attacker's reach; in the file worlds keystore.json is a file like any other, with scrypt at its
lowest cost (and each derivation memoised: one per world).

Holes the harness found are listed in KNOWN_HOLES, each with a named strict-xfail test at the end
of this file (the attack as an attacker runs it): their cases are counted in the summary instead
of failing here. Everything runs in one process, where SQLite shares a database's wal-index
between connections, so what needs two processes (a gateway and the human's revoke) has its own
test with a child process: test_a_running_verifier_misses_a_revocation_once_ledger_shm_is_removed.
"""

# ruff: noqa: S311 - seeded random makes every case reproducible
from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click.testing
import keyring
import pytest
import tomli_w
from helpers.support import Cli, MemoryKeyring, Result
from helpers.tamper_worlds import (
    APPROVAL_TIMEOUT,
    AUD,
    BEYOND,
    NARROWED,
    WIDE,
    WITHIN,
    GrantTruth,
    Snapshot,
    Truth,
    World,
    approval_call,
    approvals_grant,
    audit_files,
    beyond_ceiling,
    build_world,
    capture,
    claims_of,
    config_meaning,
    header_of,
    is_sealed,
    ledger_dump,
    registrations_meaning,
    unsealed_only,
    write_private,
)

from nhidel.actions.agents import CeilingChange, update_agent
from nhidel.actions.audit_log import TailFilter, tail, verify_log
from nhidel.actions.grants import GrantRequest, issue, revoke
from nhidel.actions.secrets import add_secret
from nhidel.cli.app import COMMAND_MODULES, command
from nhidel.enforce.context import Enforcer
from nhidel.errors import NhidelError
from nhidel.keys import keystore
from nhidel.keys.keystore import open_keystore
from nhidel.ledger import store as ledger
from nhidel.models import new_grant_id
from nhidel.paths import Paths
from nhidel.verifiers.local import Verifier

SPEC_EXITS = frozenset(range(7))
CLI_SHARE = 0.35  # cases run through the CLI (the rest through the library)
LONG_SHARE = 0.3  # cases with a long-running Verifier opened before the tampering
# (seed, file keystore, rotating segments, key rotated after a compromise)
WORLDS = [
    (0, False, False, True), (1, False, True, True), (2, False, False, False),
    (3, False, True, False), (4, False, False, True), (5, False, True, False),
    (6, False, False, False), (7, False, True, True),
    (8, True, False, True), (9, True, True, True), (10, True, False, False),
    (11, True, True, False),
]  # fmt: skip
ENV_NAMES = ("NHIDEL_KEYSTORE", "NHIDEL_PASSPHRASE", "NHIDEL_AUDIT_SEGMENT_BYTES")
NARROW_AUD = "narrowed.example.com"  # the one audience the sequence narrows reviewer to


# == the worlds, built once =================================================================


@dataclass
class Worlds:
    home: Path  # where every case runs (the OS keyring's service name follows the path)
    outside: Path  # a directory outside the home that nothing may write into
    all: list[World]


@pytest.fixture(scope="module")
def cheap_kdf() -> Iterator[None]:
    """scrypt at the lowest cost a keystore may ask for, each derivation done once."""
    original = keystore._derive

    @functools.cache
    def derive_once(passphrase: bytes, kdf: str) -> bytes:
        return original(passphrase, json.loads(kdf))

    def derive(passphrase: bytes, kdf: dict[str, Any]) -> bytes:
        try:
            text = json.dumps(kdf, sort_keys=True)
        except (TypeError, ValueError):
            return original(passphrase, kdf)
        return derive_once(passphrase, text)

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(keystore._SCRYPT, "n", 2**14)
        patch.setattr(keystore, "_derive", derive)
        # No case runs two processes at once, so nothing waits for a lock but what tampering
        # wedged (see test_a_ledger_emptied_under_a_running_verifier_blocks_revocation_as_busy).
        patch.setattr(ledger, "BUSY_TIMEOUT_MS", 100)
        # NHIDEL_PASSPHRASE, once taken from the environment, is kept for the process: forget
        # it again when the module ends, so no later test finds a passphrase it never set.
        patch.setattr(keystore, "_passphrase_taken", keystore._passphrase_taken)
        yield


def _scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the worlds live: in memory (/dev/shm) where there is one, since every state
    change fsyncs several files, and on disk that alone would triple the harness's time."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="nhidel-tamper-", dir=shm))
        try:
            yield root
        finally:
            shutil.rmtree(root, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("tamper")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory, cheap_kdf: None) -> Iterator[Worlds]:
    for root in _scratch_root(tmp_path_factory):
        yield _build_worlds(root)


def _build_worlds(root: Path) -> Worlds:
    home = root / "home"
    fake = MemoryKeyring()
    previous = keyring.get_keyring()
    keyring.set_keyring(fake)
    built = []
    try:
        for seed, file_keystore, rotating, compromised in WORLDS:
            built.append(build_world(home, root / f"world{seed}", seed, fake,
                                     file_keystore=file_keystore, rotating=rotating,
                                     compromised_rotation=compromised))  # fmt: skip
            shutil.rmtree(home)
    finally:
        keyring.set_keyring(previous)
    outside = root / "outside"
    outside.mkdir(mode=0o700)
    return Worlds(home, outside, built)


# == one case ===============================================================================


@dataclass
class Tamper:
    """What a mutation did, and what the judge must know about it."""

    what: str
    rollback: Snapshot | None = None  # the documented whole-state rollback, to this snapshot
    fragment: bool = False  # only an unterminated fragment was appended (crash-shaped)
    beyond: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    flagged: bool = False  # an approvals row was edited: audit verify must name it


@dataclass
class Ctx:
    rng: random.Random
    world: World
    other: World
    home: Path
    truth: Truth
    outside: Path

    def path(self, name: str) -> Path:
        return self.home / name

    def write(self, name: str, data: bytes) -> None:
        """As an attacker would: in place, or a new file renamed over it."""
        target = self.path(name)
        if self.rng.random() < 0.5 and target.exists():
            with target.open("r+b") as handle:
                handle.write(data)
                handle.truncate()
        else:
            spare = self.home / f".{name}.attacker"
            write_private(spare, data)
            os.replace(spare, target)

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def lines(self, name: str = "audit.jsonl") -> list[bytes]:
        return self.path(name).read_bytes().splitlines(keepends=True)

    def segments(self) -> list[str]:
        return sorted(p.name for p in self.home.glob("audit.0*.jsonl"))

    def older(self, names: Callable[[dict[str, bytes]], Any]) -> Snapshot:
        """An older snapshot whose chosen files differ from the world's (the last if none)."""
        current = names(capture(self.home))
        differing = [s for s in self.world.snapshots[:-1] if names(s.files) != current]
        return self.rng.choice(differing or self.world.snapshots[:-1])

    def put_back(self, snapshot: Snapshot, wanted: Callable[[str], bool]) -> None:
        """Replace every file `wanted` names by the snapshot's (removing those it lacks)."""
        for path in list(self.home.iterdir()):
            if wanted(path.name) and path.name not in snapshot.files:
                path.unlink()
        for name, data in snapshot.files.items():
            if wanted(name):
                self.write(name, data)
        if wanted("ledger.db"):
            for side in ("ledger.db-wal", "ledger.db-shm"):
                self.remove(side)

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> int:
        db = sqlite3.connect(self.path("ledger.db"))
        try:
            changed = db.execute(statement, params).rowcount
            db.commit()
        finally:
            db.close()
        return changed

    def ids(self, where: str = "1") -> list[str]:
        db = sqlite3.connect(self.path("ledger.db"))
        try:
            return [row[0] for row in db.execute(f"SELECT id FROM grants WHERE {where}")]
        finally:
            db.close()

    def pick(self, choices: list[GrantTruth], fallback: str = "1") -> str:
        in_ledger = set(self.ids())
        found = [g.id for g in choices if g.id in in_ledger]
        return self.rng.choice(found or self.ids(fallback))


Mutation = Callable[[Ctx], Tamper]


# -- the audit log (the current segment) ------------------------------------------------


def _flip(rng: random.Random, data: bytes) -> tuple[bytes, int]:
    mutable = bytearray(data)
    at = rng.randrange(len(mutable))
    mutable[at] ^= rng.randrange(1, 256)
    return bytes(mutable), at


def _different(rng: random.Random, key: str, value: Any, truth: Truth) -> Any:
    if key == "grant" and truth.grants:
        return rng.choice([g for g in truth.grants if g != value] or ["g" + "a" * 26])
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice([1, -1, 1000])
    if isinstance(value, str):
        return rng.choice(["revoked", "allowed", value + "x", value[:-1]]) if value else "x"
    if value is None:
        return rng.choice(["x", 0, []])
    if isinstance(value, list):
        return [] if value else ["repo:write:acme/api"]
    return {}


def _edited(rng: random.Random, line: bytes, truth: Truth) -> bytes:
    """The line with one field changed and its old seal kept (as a hand edit would)."""
    record = json.loads(line)
    seal = record.pop("seal", "0" * 64)
    key = rng.choice(sorted(record))
    new = _different(rng, key, record[key], truth)
    if new == record[key]:
        new = "edited"
    record[key] = new
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (body[:-1] + f',"seal":"{seal}"}}').encode() + b"\n"


def log_flip_byte(c: Ctx) -> Tamper:
    data, at = _flip(c.rng, c.path("audit.jsonl").read_bytes())
    c.write("audit.jsonl", data)
    return Tamper(f"flip byte {at} of audit.jsonl")


def log_edit_field(c: Ctx) -> Tamper:
    lines = c.lines()
    at = c.rng.randrange(len(lines))
    lines[at] = _edited(c.rng, lines[at], c.truth)
    c.write("audit.jsonl", b"".join(lines))
    return Tamper(f"edit a field of audit.jsonl line {at + 1}: {lines[at][:60]!r}")


def log_delete_line(c: Ctx) -> Tamper:
    lines = c.lines()
    at = c.rng.randrange(len(lines))
    del lines[at]
    c.write("audit.jsonl", b"".join(lines))
    return Tamper(f"delete line {at + 1} of {len(lines) + 1} of audit.jsonl")


def log_reorder(c: Ctx) -> Tamper:
    lines = c.lines()
    a, b = c.rng.randrange(len(lines)), c.rng.randrange(len(lines))
    if c.rng.random() < 0.5 and a != b:
        lines[a], lines[b] = lines[b], lines[a]
        what = f"swap lines {a + 1} and {b + 1}"
    else:
        lines.insert(b, lines[a])
        what = f"copy line {a + 1} to {b + 1}"
    c.write("audit.jsonl", b"".join(lines))
    return Tamper(what + " of audit.jsonl")


def log_truncate(c: Ctx) -> Tamper:
    data = c.path("audit.jsonl").read_bytes()
    lines = c.lines()
    if c.rng.random() < 0.5:
        keep = c.rng.randrange(len(lines))
        cut = len(b"".join(lines[:keep]))
    else:
        cut = c.rng.randrange(len(data))
    c.write("audit.jsonl", data[:cut])
    return Tamper(f"truncate audit.jsonl to {cut} of {len(data)} bytes")


def log_delete_file(c: Ctx) -> Tamper:
    if c.rng.random() < 0.3:
        c.write("audit.jsonl", b"")
        return Tamper("empty audit.jsonl")
    c.remove("audit.jsonl")
    return Tamper("delete audit.jsonl")


def log_older_snapshot(c: Ctx) -> Tamper:
    old = c.older(lambda files: files.get("audit.jsonl"))
    if "audit.jsonl" in old.files:
        c.write("audit.jsonl", old.files["audit.jsonl"])
    return Tamper(f"audit.jsonl from snapshot {old.label!r}")


def log_splice_other(c: Ctx) -> Tamper:
    theirs = c.other.final.files["audit.jsonl"].splitlines(keepends=True)
    lines = c.lines()
    op = c.rng.choice(["append", "replace", "insert"])
    count = c.rng.randint(1, 3)
    picked = [c.rng.choice(theirs) for _ in range(count)]
    if op == "append":
        lines += picked
    elif op == "replace":
        at = c.rng.randrange(len(lines))
        lines[at : at + 1] = picked
    else:
        lines[c.rng.randrange(len(lines) + 1) : 0] = picked
    c.write("audit.jsonl", b"".join(lines))
    return Tamper(f"{op} {count} line(s) of {c.other.name}'s log in audit.jsonl")


def _last(c: Ctx) -> dict[str, Any]:
    return json.loads(c.lines()[-1])


def _forged(c: Ctx, seq: int, prev: str) -> bytes:
    grant = c.rng.choice(list(c.truth.grants.values()))
    event = c.rng.choice(["grant.revoked", "grant.issued", "grant.used", "agent.added",
                          "key.rotated", "verify.allowed"])  # fmt: skip
    body = {
        "event": event,
        "seq": seq,
        "prev": prev,
        "grant": grant.id,
        "agent": grant.agent,
        "principal": "alice",
        "reason": "forged",
        "time": "2030-01-01T00:00:00.000000Z",
        "scopes": ["payments:*:*"],
        "v": 1,
        "nhidel": "0.0",
        "expires_at": 2**40,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return (text[:-1] + f',"seal":"{os.urandom(32).hex()}"}}').encode()


def log_forged_fragment(c: Ctx) -> Tamper:
    """Finding 6: an unterminated line (a forged record, a genuine one, or garbage)."""
    last = c.lines()[-1]
    head = _last(c)
    prev = hashlib.sha256(last.rstrip(b"\n")).hexdigest()
    kind = c.rng.choice(["forged next", "forged same seq", "genuine copy", "garbage", "half"])
    if kind == "forged next":
        fragment = _forged(c, head["seq"] + 1, prev)
    elif kind == "forged same seq":
        fragment = _forged(c, head["seq"], head["prev"])
    elif kind == "genuine copy":
        fragment = c.rng.choice(c.lines()).rstrip(b"\n")
    elif kind == "garbage":
        fragment = bytes(c.rng.choice(range(11, 256)) for _ in range(c.rng.randrange(1, 200)))
    else:
        fragment = _forged(c, head["seq"] + 1, prev)[: c.rng.randrange(1, 80)]
    with c.path("audit.jsonl").open("ab") as handle:
        handle.write(fragment)
    return Tamper(f"append an unterminated fragment ({kind}) to audit.jsonl", fragment=True)


def log_forged_record(c: Ctx) -> Tamper:
    lines = c.lines()
    head = _last(c)
    prev = hashlib.sha256(lines[-1].rstrip(b"\n")).hexdigest()
    kind = c.rng.choice(["append next", "replace last", "insert"])
    if kind == "append next":
        lines.append(_forged(c, head["seq"] + 1, prev) + b"\n")
    elif kind == "replace last":
        lines[-1] = _forged(c, head["seq"], head["prev"]) + b"\n"
    else:
        at = c.rng.randrange(len(lines))
        lines.insert(at, _forged(c, json.loads(lines[at])["seq"], "0" * 64) + b"\n")
    c.write("audit.jsonl", b"".join(lines))
    return Tamper(f"forge a complete record ({kind}) in audit.jsonl")


ODD_LINES = [
    b'{"seq":5,"scopes":5}', b'{"seq":"1"}', b'{"seq":true,"event":"grant.revoked"}',
    b'{"seq":1e400}', b'{"seq":99999999999999999999999999,"event":"x"}', b"[]", b"null",
    b'{"seq":-1,"time":12,"event":["x"],"agent":{"a":1},"count":3,"last_time":null}',
    b'{"seq":3,"requested":7,"outcome":[],"reason":{"x":1},"time":"9999-12-31T23:59:59Z"}',
    b'{"seq":2,"grant":12345,"count":"many","last_time":[1]}',
    b'{"seq":4,"scopes":[null,1,"\\u001b[31mred"],"time":"not a time"}',
]  # fmt: skip


def log_odd_record(c: Ctx) -> Tamper:
    """Complete lines of odd shapes (JSON of the wrong types, huge numbers, non-objects)."""
    lines = c.lines()
    odd = c.rng.choice(ODD_LINES)
    at = len(lines) if c.rng.random() < 0.6 else c.rng.randrange(len(lines))
    lines.insert(at, odd + b"\n")
    c.write("audit.jsonl", b"".join(lines))
    return Tamper(f"plant {odd.decode()} at line {at + 1} of audit.jsonl")


# -- rotated segments -------------------------------------------------------------------


def _segment(c: Ctx) -> str:
    return c.rng.choice(c.segments())


def segment_flip_byte(c: Ctx) -> Tamper:
    name = _segment(c)
    data, at = _flip(c.rng, c.path(name).read_bytes())
    c.write(name, data)
    return Tamper(f"flip byte {at} of {name}")


def segment_truncate(c: Ctx) -> Tamper:
    name = _segment(c)
    data = c.path(name).read_bytes()
    cut = c.rng.randrange(len(data))
    c.write(name, data[:cut])
    return Tamper(f"truncate {name} to {cut} of {len(data)} bytes")


def segment_delete(c: Ctx) -> Tamper:
    names = c.segments()
    doomed = names if c.rng.random() < 0.25 else [c.rng.choice(names)]
    for name in doomed:
        c.remove(name)
    return Tamper(f"delete {', '.join(doomed)}")


def segment_reorder(c: Ctx) -> Tamper:
    names = c.segments()
    if len(names) >= 2 and c.rng.random() < 0.5:
        a, b = c.rng.sample(names, 2)
        data_a, data_b = c.path(a).read_bytes(), c.path(b).read_bytes()
        c.write(a, data_b)
        c.write(b, data_a)
        return Tamper(f"swap the contents of {a} and {b}")
    name = c.rng.choice(names)
    os.replace(c.path(name), c.path(f"audit.{c.rng.randrange(1, 10**6):012d}.jsonl"))
    return Tamper(f"rename {name}")


def segment_older_snapshot(c: Ctx) -> Tamper:
    old = c.older(audit_files)
    c.put_back(old, lambda name: name.startswith("audit.") and name.endswith(".jsonl"))
    return Tamper(f"every audit segment from snapshot {old.label!r}")


def segment_splice_other(c: Ctx) -> Tamper:
    theirs = {n: d for n, d in c.other.final.files.items() if n.startswith("audit.0")}
    name = _segment(c)
    if theirs and c.rng.random() < 0.5:
        c.write(name, theirs[c.rng.choice(sorted(theirs))])
        return Tamper(f"{name} replaced by a segment of {c.other.name}")
    lines = c.lines(name)
    other_lines = c.other.final.files["audit.jsonl"].splitlines(keepends=True)
    lines[c.rng.randrange(len(lines))] = c.rng.choice(other_lines)
    c.write(name, b"".join(lines))
    return Tamper(f"a line of {name} replaced by one of {c.other.name}")


# -- the ledger -------------------------------------------------------------------------


def ledger_unrevoke(c: Ctx) -> Tamper:
    target = c.pick([g for g in c.truth.grants.values() if g.revoked], "revoked_at IS NOT NULL")
    c.sql("UPDATE grants SET revoked_at = NULL, revoke_reason = NULL WHERE id = ?", (target,))
    return Tamper(f"UPDATE grants SET revoked_at = NULL for {target}")


def ledger_reset_uses(c: Ctx) -> Tamper:
    target = c.pick([g for g in c.truth.grants.values() if g.uses], "uses > 0")
    c.sql("UPDATE grants SET uses = 0 WHERE id = ?", (target,))
    return Tamper(f"UPDATE grants SET uses = 0 for {target}")


def ledger_lift_limit(c: Ctx) -> Tamper:
    target = c.pick([g for g in c.truth.grants.values() if g.max_uses], "max_uses IS NOT NULL")
    value = c.rng.choice([None, 10**6])
    c.sql("UPDATE grants SET max_uses = ?, uses = 0 WHERE id = ?", (value, target))
    return Tamper(f"UPDATE grants SET max_uses = {value}, uses = 0 for {target}")


def ledger_edit_column(c: Ctx) -> Tamper:
    """A sealed column changed: expiry, scope, audience, agent, kid or token hash."""
    target = c.pick(list(c.truth.grants.values()))
    column, value = c.rng.choice([
        ("expires_at", "expires_at + 86400"), ("not_before", "not_before - 3600"),
        ("scope", f"'{WIDE}'"), ("scope", "'repo:read:acme/* payments:refund:everything'"),
        ("aud", "NULL"), ("agent", "'release-bot'"), ("agent", "'intruder'"),
        ("kid", "'another-kid'"), ("token_sha256", f"'{'0' * 64}'"), ("seal", "NULL"),
        ("status_idx", "status_idx + 1"), ("reason", "'edited'"),
    ])  # fmt: skip
    c.sql(f"UPDATE grants SET {column} = {value} WHERE id = ?", (target,))
    return Tamper(f"UPDATE grants SET {column} = {value} for {target}")


def ledger_delete_row(c: Ctx) -> Tamper:
    target = c.pick(list(c.truth.grants.values()))
    c.sql("DELETE FROM grants WHERE id = ?", (target,))
    return Tamper(f"DELETE the row of {target}")


def ledger_insert_copy(c: Ctx) -> Tamper:
    source = c.pick(list(c.truth.grants.values()))
    fresh = new_grant_id()
    c.sql("INSERT INTO grants SELECT ?, agent, scope, aud, issued_at, not_before, expires_at, "
          "max_uses, uses, reason, kid, token_sha256, NULL, NULL, status_idx, seal "
          "FROM grants WHERE id = ?", (fresh, source))  # fmt: skip
    return Tamper(f"INSERT a copy of {source} as {fresh}, not revoked")


def _sealed_state(c: Ctx) -> bytes:
    db = sqlite3.connect(c.path("ledger.db"))
    try:
        row = db.execute("SELECT body FROM sealed_state WHERE id = 1").fetchone()
    finally:
        db.close()
    return bytes(row[0]) if row else b""


def ledger_edit_sealed_state(c: Ctx) -> Tamper:
    body = _sealed_state(c)
    if c.rng.random() < 0.4:
        edited, at = _flip(c.rng, body)
        what = f"flip byte {at} of the sealed state"
    else:
        document = json.loads(body)
        seal = document.pop("seal")
        change = c.rng.choice(["revoked", "used", "kids", "seq", "config"])
        if change == "revoked" and document["revoked"]:
            document["revoked"].pop(c.rng.choice(sorted(document["revoked"])))
        elif change == "used" and document["used"]:
            document["used"][c.rng.choice(sorted(document["used"]))][0] = 0
        elif change == "kids":
            document["kids"] = sorted(document["kids"] + sorted(c.truth.compromised or {"x"}))
        elif change == "seq":
            document["seq"] += 1000
        else:
            document["config"] = "0" * 64
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        edited = (text[:-1] + f',"seal":"{seal}"}}').encode()
        what = f"edit the sealed state's {change}, keeping its seal"
    c.sql("UPDATE sealed_state SET body = ? WHERE id = 1", (edited,))
    return Tamper(what)


def ledger_drop_sealed_state(c: Ctx) -> Tamper:
    c.sql("DELETE FROM sealed_state")
    return Tamper("DELETE FROM sealed_state")


def ledger_older_sealed_state(c: Ctx) -> Tamper:
    old = c.older(ledger_dump)
    scratch = c.home / ".old-ledger.db"
    scratch.write_bytes(old.files["ledger.db"])
    db = sqlite3.connect(scratch)
    try:
        row = db.execute("SELECT body FROM sealed_state WHERE id = 1").fetchone()
    finally:
        db.close()
    for name in (scratch.name, f"{scratch.name}-wal", f"{scratch.name}-shm"):
        (c.home / name).unlink(missing_ok=True)
    c.sql("UPDATE sealed_state SET body = ? WHERE id = 1", (bytes(row[0]),))
    return Tamper(f"the sealed state from snapshot {old.label!r}, the rows as they are")


def ledger_older_snapshot(c: Ctx) -> Tamper:
    old = c.older(ledger_dump)
    c.put_back(old, lambda name: name.startswith("ledger.db"))
    return Tamper(f"ledger.db from snapshot {old.label!r}")


def ledger_flip_byte(c: Ctx) -> Tamper:
    data = bytearray(c.path("ledger.db").read_bytes())
    used = [at for at, byte in enumerate(data) if byte]  # mostly where rows are
    at = c.rng.choice(used) if c.rng.random() < 0.8 else c.rng.randrange(len(data))
    data[at] ^= c.rng.randrange(1, 256)
    c.write("ledger.db", bytes(data))
    return Tamper(f"flip byte {at} of ledger.db")


def ledger_truncate(c: Ctx) -> Tamper:
    data = c.path("ledger.db").read_bytes()
    cut = c.rng.choice([0, 100, 4096, c.rng.randrange(len(data))])
    c.write("ledger.db", data[:cut])
    return Tamper(f"truncate ledger.db to {cut} of {len(data)} bytes")


def ledger_delete_file(c: Ctx) -> Tamper:
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        c.remove(name)
    return Tamper("delete ledger.db")


def ledger_splice_other(c: Ctx) -> Tamper:
    op = c.rng.choice(["row", "state", "file"])
    theirs = c.other.final.files["ledger.db"]
    if op == "file":
        c.put_back(Snapshot("other", {"ledger.db": theirs}, {}, Truth()),
                   lambda name: name.startswith("ledger.db"))  # fmt: skip
        return Tamper(f"ledger.db of {c.other.name}")
    scratch = c.home / ".other-ledger.db"
    scratch.write_bytes(theirs)
    db = sqlite3.connect(c.path("ledger.db"))
    try:
        db.execute("ATTACH DATABASE ? AS other", (str(scratch),))
        if op == "row":
            db.execute("INSERT OR REPLACE INTO grants SELECT * FROM other.grants "
                       "ORDER BY random() LIMIT 2")  # fmt: skip
        else:
            db.execute("UPDATE sealed_state SET body = (SELECT body FROM other.sealed_state)")
        db.commit()
        db.execute("DETACH DATABASE other")
    finally:
        db.close()
    scratch.unlink()
    return Tamper(f"splice {op} from {c.other.name}'s ledger")


def ledger_forge_revocation(c: Ctx) -> Tamper:
    """Restrictive edits: a live grant made to look revoked or used up."""
    target = c.pick(c.truth.live())
    if c.rng.random() < 0.5:
        c.sql("UPDATE grants SET revoked_at = issued_at, revoke_reason = 'forged' WHERE id = ?",
              (target,))  # fmt: skip
        return Tamper(f"forge a revocation of {target} in its row")
    c.sql("UPDATE grants SET uses = uses + 100 WHERE id = ?", (target,))
    return Tamper(f"add 100 uses to the row of {target}")


# -- config.toml ------------------------------------------------------------------------


def _config(c: Ctx) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(c.path("config.toml").read_text())


def _save(c: Ctx, document: dict[str, Any]) -> None:
    c.write("config.toml", tomli_w.dumps(document).encode())


def config_widen_allow(c: Ctx) -> Tamper:
    document = _config(c)
    agent = c.rng.choice(sorted(document["agents"]))
    extra = c.rng.choice([WIDE, WIDE, "*:*"])
    document["agents"][agent]["allow"].append(extra)
    _save(c, document)
    return Tamper(
        f"config.toml: {agent} may also {extra}",
        beyond=[(agent, BEYOND, AUD if agent == "release-bot" else None, None)],
    )


def config_add_agent(c: Ctx) -> Tamper:
    document = _config(c)
    document["agents"]["intruder"] = {
        "allow": [WIDE],
        "max_ttl": "100h",
        "default_ttl": "1h",
        "aud": [],
        "created_at": "2025-01-01T00:00:00Z",
    }
    _save(c, document)
    return Tamper(
        "config.toml: a new agent, intruder, may do payments:*:*",
        beyond=[("intruder", BEYOND, None, None)],
    )


def config_widen_ttl_aud(c: Ctx) -> Tamper:
    document = _config(c)
    agent = c.rng.choice(sorted(document["agents"]))
    entry = document["agents"][agent]
    entry["max_ttl"] = "100h"
    entry["aud"] = [*entry.get("aud", []), "evil.example.com"]
    _save(c, document)
    aud = AUD if entry["aud"][:-1] else None
    return Tamper(f"config.toml: {agent}'s max TTL 100h and audience evil.example.com",
                  beyond=[(agent, WITHIN[agent], aud, "10h"),
                          (agent, WITHIN[agent], "evil.example.com", None)])  # fmt: skip


def config_remove_agent(c: Ctx) -> Tamper:
    document = _config(c)
    agent = c.rng.choice(sorted(document["agents"]))
    del document["agents"][agent]
    _save(c, document)
    return Tamper(f"config.toml: agent {agent} removed by hand")


# What an older config.toml may give back: the scope `agent update` took from reviewer's ceiling.
LOST = ("reviewer", NARROWED[1], None, None)


def config_older_snapshot(c: Ctx) -> Tamper:
    old = c.older(config_meaning)
    c.write("config.toml", old.files.get("config.toml", b""))
    return Tamper(
        f"config.toml from snapshot {old.label!r}",
        beyond=[("deployer", WITHIN["deployer"], None, None), LOST],
    )


def config_corrupt(c: Ctx) -> Tamper:
    op = c.rng.choice(["flip", "truncate", "delete"])
    data = c.path("config.toml").read_bytes()
    if op == "flip":
        data, at = _flip(c.rng, data)
        c.write("config.toml", data)
        return Tamper(f"flip byte {at} of config.toml")
    if op == "truncate":
        cut = c.rng.randrange(len(data))
        c.write("config.toml", data[:cut])
        return Tamper(f"truncate config.toml to {cut} bytes")
    c.remove("config.toml")
    return Tamper("delete config.toml")


def config_splice_other(c: Ctx) -> Tamper:
    c.write("config.toml", c.other.final.files["config.toml"])
    return Tamper(f"config.toml of {c.other.name}")


def config_redirect_route(c: Ctx) -> Tamper:
    """Where the broker would send the secret: the route's URL, header, format or CA."""
    document = _config(c)
    route = document["routes"]["api"]
    change = c.rng.choice(["url", "header", "format", "ca", "secret"])
    if change == "url":
        route["url"] = c.rng.choice(["https://127.0.0.1:9999/steal", "https://evil.example.com"])
    elif change == "header":
        route["header"] = "X-Leaked"
    elif change == "format":
        route["format"] = "{secret}"
    elif change == "ca":
        route["ca_pem"] = "-----BEGIN CERTIFICATE-----\nMIIBforged\n-----END CERTIFICATE-----\n"
    else:
        document.setdefault("secrets", {})["stolen"] = {"created_at": "2026-01-01T00:00:00Z"}
        route["secret"] = "stolen"
    _save(c, document)
    return Tamper(f"config.toml: route api's {change} changed")


def config_swap_server(c: Ctx) -> Tamper:
    """What the gateway would start, with the secret in which variable."""
    document = _config(c)
    server = document["mcp"]["files"]
    change = c.rng.choice(["command", "args", "env", "secret map", "resource args", "roots",
                           "agents"])  # fmt: skip
    if change == "command":
        server["command"] = ["/usr/bin/env"]
    elif change == "args":
        server["command"] = [server["command"][0], "-c", "env"]
    elif change == "env":
        server.setdefault("env", {})["LD_PRELOAD"] = "/tmp/evil.so"
    elif change == "secret map":
        server["secrets"] = {"PRINTED_EVERYWHERE": "upstream"}
    elif change == "resource args":
        server["resource_args"] = {}
    elif change == "roots":
        server["roots"] = ["/"]
    else:
        server["agents"] = ["intruder"]
    _save(c, document)
    return Tamper(f"config.toml: MCP server files's {change} changed")


def config_add_registration(c: Ctx) -> Tamper:
    """A registration no human made, sending the secret somewhere new."""
    document = _config(c)
    when = "2026-01-01T00:00:00Z"
    if c.rng.random() < 0.5:
        document.setdefault("mcp", {})["evil"] = {
            "command": ["/usr/bin/env"], "secrets": {"T": "upstream"}, "created_at": when,
        }  # fmt: skip
        what = "an MCP server evil"
    else:
        document.setdefault("routes", {})["evil"] = {
            "url": "https://evil.example.com", "secret": "upstream", "created_at": when,
        }  # fmt: skip
        what = "a route evil"
    _save(c, document)
    return Tamper(f"config.toml: {what} that gets the upstream secret")


def config_status_dir(c: Ctx) -> Tamper:
    """Not sealed by design; but revoke then publishes: never outside the home."""
    document = _config(c)
    document["status_uri"] = "https://status.example.com/nhidel/status.jwt"
    document["status_dir"] = str(c.outside)
    _save(c, document)
    return Tamper(f"config.toml: status_dir {c.outside}")


# -- keystore.json (file keystore worlds) -----------------------------------------------


def keystore_older_snapshot(c: Ctx) -> Tamper:
    old = c.older(lambda files: files.get("keystore.json"))
    c.write("keystore.json", old.files["keystore.json"])
    return Tamper(f"keystore.json from snapshot {old.label!r}")


def keystore_corrupt(c: Ctx) -> Tamper:
    op = c.rng.choice(["flip", "truncate", "delete", "splice"])
    data = c.path("keystore.json").read_bytes()
    if op == "flip":
        data, at = _flip(c.rng, data)
        c.write("keystore.json", data)
        return Tamper(f"flip byte {at} of keystore.json")
    if op == "truncate":
        cut = c.rng.randrange(len(data))
        c.write("keystore.json", data[:cut])
        return Tamper(f"truncate keystore.json to {cut} bytes")
    if op == "delete":
        c.remove("keystore.json")
        return Tamper("delete keystore.json")
    # An older "sealed" (or "check") member in the current document.
    old = json.loads(c.rng.choice(c.world.snapshots[:-1]).files["keystore.json"])
    document = json.loads(data)
    member = c.rng.choice(["sealed", "check"])
    document[member] = old[member]
    c.write("keystore.json", json.dumps(document).encode())
    return Tamper(f"keystore.json with an older {member!r}")


def keystore_splice_other(c: Ctx) -> Tamper:
    c.write("keystore.json", c.other.final.files["keystore.json"])
    return Tamper(f"keystore.json of {c.other.name} (same passphrase)")


# -- several files from one older snapshot ----------------------------------------------


def _together(names: Callable[[str], bool], label: str, *, whole: bool = False) -> Mutation:
    def mutate(c: Ctx) -> Tamper:
        old = c.older(lambda files: {n: d for n, d in files.items() if names(n)})
        c.put_back(old, names)
        return Tamper(f"{label} from snapshot {old.label!r}", rollback=old if whole else None,
                      beyond=[("deployer", WITHIN["deployer"], None, None), LOST])  # fmt: skip

    return mutate


def _is_log(name: str) -> bool:
    return name.startswith("audit.") and name.endswith(".jsonl")


def _is_ledger(name: str) -> bool:
    return name.startswith("ledger.db")


def _is_keystore(name: str) -> bool:
    return name == "keystore.json"


def _is_config(name: str) -> bool:
    return name == "config.toml"


older_log_and_ledger = _together(lambda n: _is_log(n) or _is_ledger(n), "log and ledger")
older_ledger_and_config = _together(lambda n: _is_ledger(n) or _is_config(n), "ledger, config")
older_all_but_keystore = _together(lambda n: not _is_keystore(n), "every file but the keystore")
older_keystore_and_ledger = _together(lambda n: _is_keystore(n) or _is_ledger(n),
                                      "keystore and ledger")  # fmt: skip
older_keystore_and_log = _together(lambda n: _is_keystore(n) or _is_log(n), "keystore and log")
older_keystore_ledger_config = _together(
    lambda n: _is_keystore(n) or _is_ledger(n) or _is_config(n), "keystore, ledger and config"
)
older_whole_state = _together(lambda n: True, "every file (whole-state rollback)", whole=True)


# -- the approvals store ----------------------------------------------------------------


def _approval_row(c: Ctx, approval_id: str) -> dict[str, Any]:
    db = sqlite3.connect(c.path("ledger.db"))
    db.row_factory = sqlite3.Row
    try:
        return dict(db.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone())
    finally:
        db.close()


def approvals_edit_row(c: Ctx) -> Tamper:
    """A row of the approvals table edited as the agent would, to win a yes or hide a no."""
    found = c.truth.approvals
    spent, denied, pending = (found[s].id for s in ("spent", "denied", "pending"))
    source = _approval_row(c, spent)
    change = c.rng.choice(["status", "flip answer", "copy seal", "summary", "body", "window",
                           "answer unsealed"])  # fmt: skip
    target = c.rng.choice([denied, pending])
    if change == "status":
        c.sql("UPDATE approvals SET status = 'granted' WHERE id = ?", (target,))
    elif change == "flip answer":
        row = _approval_row(c, denied)
        c.sql("UPDATE approvals SET status = 'granted', answer = ? WHERE id = ?",
              (row["answer"].replace('"denied"', '"granted"'), denied))  # fmt: skip
        target = denied
    elif change == "copy seal":
        c.sql("UPDATE approvals SET status = 'granted', answer = ?, answer_seal = ? WHERE id = ?",
              (source["answer"], source["answer_seal"], target))  # fmt: skip
    elif change == "summary":
        c.sql("UPDATE approvals SET summary = 'files write_file: harmless' WHERE id = ?",
              (target,))  # fmt: skip
    elif change == "body":
        row = _approval_row(c, target)
        c.sql("UPDATE approvals SET body = ? WHERE id = ?",
              (row["body"].replace("/srv/release.txt", "/srv/other.txt"), target))  # fmt: skip
    elif change == "window":
        widened = source["answer"].replace('"window":null', '"window":{"until":9999999999}')
        c.sql("UPDATE approvals SET answer = ?, window_until = 9999999999 WHERE id = ?",
              (widened, spent))  # fmt: skip
        target = spent
    else:
        c.sql("UPDATE approvals SET status = 'granted', answer = replace(?, ?, ?), "
              "answer_seal = NULL WHERE id = ?",
              (source["answer"], spent, target, target))  # fmt: skip
    return Tamper(f"approvals: {change} of {target}", flagged=True)


def approvals_delete_row(c: Ctx) -> Tamper:
    """A no or a waiting request deleted: nothing may go that the human did not let go (audit
    verify does not see a deleted approvals row: no record is held against the table)."""
    target = c.truth.approvals[c.rng.choice(["denied", "pending", "spent"])].id
    c.sql("DELETE FROM approvals WHERE id = ?", (target,))
    return Tamper(f"approvals: DELETE {target}")


def approvals_older_ledger(c: Ctx) -> Tamper:
    """ledger.db put back from before the one-time yes was spent (or only its sealed state)."""
    approved = next(s for s in c.world.snapshots if s.label == "approved")
    if c.rng.random() < 0.5:
        c.put_back(approved, lambda name: name.startswith("ledger.db"))
        return Tamper("approvals: ledger.db from before the yes was spent", flagged=True)
    scratch = c.home / ".old-ledger.db"
    scratch.write_bytes(approved.files["ledger.db"])
    db = sqlite3.connect(scratch)
    try:
        body = db.execute("SELECT body FROM sealed_state WHERE id = 1").fetchone()[0]
    finally:
        db.close()
    scratch.unlink()
    c.sql("UPDATE sealed_state SET body = ? WHERE id = 1", (body,))
    return Tamper("approvals: the sealed state from before the yes was spent", flagged=True)


@dataclass(frozen=True)
class Kind:
    mutate: Mutation
    group: str  # the file it tampers with
    cases: int
    needs: str = ""  # "file": file keystore worlds; "segments": worlds with rotated segments
    cli_share: float = CLI_SHARE
    long_share: float = LONG_SHARE


KINDS: dict[str, Kind] = {
    "log_flip_byte": Kind(log_flip_byte, "audit.jsonl", 50),
    "log_edit_field": Kind(log_edit_field, "audit.jsonl", 50),
    "log_delete_line": Kind(log_delete_line, "audit.jsonl", 45),
    "log_reorder": Kind(log_reorder, "audit.jsonl", 45),
    "log_truncate": Kind(log_truncate, "audit.jsonl", 50),
    "log_delete_file": Kind(log_delete_file, "audit.jsonl", 30),
    "log_older_snapshot": Kind(log_older_snapshot, "audit.jsonl", 50),
    "log_splice_other": Kind(log_splice_other, "audit.jsonl", 45),
    "log_forged_fragment": Kind(log_forged_fragment, "audit.jsonl", 50),
    "log_forged_record": Kind(log_forged_record, "audit.jsonl", 45),
    "log_odd_record": Kind(log_odd_record, "audit.jsonl", 45, cli_share=0.7),
    "segment_flip_byte": Kind(segment_flip_byte, "segments", 45, "segments"),
    "segment_truncate": Kind(segment_truncate, "segments", 40, "segments"),
    "segment_delete": Kind(segment_delete, "segments", 40, "segments"),
    "segment_reorder": Kind(segment_reorder, "segments", 40, "segments"),
    "segment_older_snapshot": Kind(segment_older_snapshot, "segments", 40, "segments"),
    "segment_splice_other": Kind(segment_splice_other, "segments", 40, "segments"),
    "ledger_unrevoke": Kind(ledger_unrevoke, "ledger.db", 55),
    "ledger_reset_uses": Kind(ledger_reset_uses, "ledger.db", 50),
    "ledger_lift_limit": Kind(ledger_lift_limit, "ledger.db", 50),
    "ledger_edit_column": Kind(ledger_edit_column, "ledger.db", 60),
    "ledger_delete_row": Kind(ledger_delete_row, "ledger.db", 45),
    "ledger_insert_copy": Kind(ledger_insert_copy, "ledger.db", 40),
    "ledger_edit_sealed_state": Kind(ledger_edit_sealed_state, "ledger.db", 50),
    "ledger_drop_sealed_state": Kind(ledger_drop_sealed_state, "ledger.db", 25),
    "ledger_older_sealed_state": Kind(ledger_older_sealed_state, "ledger.db", 45),
    "ledger_older_snapshot": Kind(ledger_older_snapshot, "ledger.db", 55),
    "ledger_flip_byte": Kind(ledger_flip_byte, "ledger.db", 50),
    "ledger_truncate": Kind(ledger_truncate, "ledger.db", 35, long_share=0.6),
    "ledger_delete_file": Kind(ledger_delete_file, "ledger.db", 25),
    "ledger_splice_other": Kind(ledger_splice_other, "ledger.db", 45),
    "ledger_forge_revocation": Kind(ledger_forge_revocation, "ledger.db", 30),
    "config_widen_allow": Kind(config_widen_allow, "config.toml", 50),
    "config_add_agent": Kind(config_add_agent, "config.toml", 40),
    "config_widen_ttl_aud": Kind(config_widen_ttl_aud, "config.toml", 40),
    "config_remove_agent": Kind(config_remove_agent, "config.toml", 30),
    "config_older_snapshot": Kind(config_older_snapshot, "config.toml", 45),
    "config_corrupt": Kind(config_corrupt, "config.toml", 40),
    "config_splice_other": Kind(config_splice_other, "config.toml", 30),
    "config_status_dir": Kind(config_status_dir, "config.toml", 25),
    "config_redirect_route": Kind(config_redirect_route, "config.toml", 45),
    "config_swap_server": Kind(config_swap_server, "config.toml", 50),
    "config_add_registration": Kind(config_add_registration, "config.toml", 30),
    "keystore_older_snapshot": Kind(keystore_older_snapshot, "keystore.json", 50, "file"),
    "keystore_corrupt": Kind(keystore_corrupt, "keystore.json", 40, "file"),
    "keystore_splice_other": Kind(keystore_splice_other, "keystore.json", 25, "file"),
    "older_log_and_ledger": Kind(older_log_and_ledger, "several", 50),
    "older_ledger_and_config": Kind(older_ledger_and_config, "several", 40),
    "older_all_but_keystore": Kind(older_all_but_keystore, "several", 50),
    "older_keystore_and_ledger": Kind(older_keystore_and_ledger, "several", 45, "file"),
    "older_keystore_and_log": Kind(older_keystore_and_log, "several", 40, "file"),
    "older_keystore_ledger_config": Kind(older_keystore_ledger_config, "several", 40, "file"),
    "older_whole_state": Kind(older_whole_state, "several", 40, "file"),
    "approvals_edit_row": Kind(approvals_edit_row, "approvals", 60),
    "approvals_delete_row": Kind(approvals_delete_row, "approvals", 20),
    "approvals_older_ledger": Kind(approvals_older_ledger, "approvals", 30),
}


# == the legitimate commands, and the judge ================================================


@dataclass
class Outcome:
    kind: str
    world: str
    mode: str
    what: str
    noop: bool
    audit_exit: int | None = None
    violations: list[str] = field(default_factory=list)
    changed: frozenset[str] = frozenset()  # of log, ledger, config, keystore (by meaning)
    unsealed_only: bool = False  # the ledger changed only in columns no seal covers
    long_running: bool = False
    doctor_exit: int | None = None  # `doctor` over the tampered home (cli cases)
    known: Counter[str] = field(default_factory=Counter)  # KNOWN_HOLES seen, by name


class Case:
    def __init__(self, worlds: Worlds, world: World, rng: random.Random, cli: Cli) -> None:
        self.worlds = worlds
        self.world = world
        self.rng = rng
        self.cli_runner = cli
        self.home = worlds.home
        self.paths = Paths(self.home, self.home)
        self.truth = world.truth.copy()
        self.mode = "cli" if rng.random() < CLI_SHARE else "lib"
        self.long: Verifier | None = None
        self.long_enforcer: Enforcer | None = None  # a gateway or broker running all along
        self.enforce_exits: list[int] = []
        self.violations: list[str] = []
        self.keys = {world.audit_key}
        self.within_exit = 0
        self.narrow_exit: int | None = None  # `agent update reviewer --aud ...`, when it ran
        self.planted: list[dict[str, Any]] = []  # the complete lines as the attacker left them

    def violate(self, text: str) -> None:
        self.violations.append(text)

    # -- running things, and catching crashes -------------------------------------------

    def cli(self, *args: str, input: str | None = None) -> tuple[int, str]:
        result = self.cli_runner(*args, input=input)
        text = result.stdout + result.stderr
        if result.exit_code not in SPEC_EXITS or "this is a bug" in text or "Traceback" in text:
            self.violate(f"crash: nhidel {' '.join(args)} -> {result.exit_code}: "
                         f"{result.stderr.strip()[:300]}")  # fmt: skip
        return result.exit_code, result.stdout

    def lib(self, label: str, call: Callable[[], Any]) -> tuple[int, Any]:
        try:
            return 0, call()
        except NhidelError as exc:
            return int(exc.exit_status), None
        except Exception as exc:  # noqa: BLE001 - every failure must be an NhidelError
            self.violate(f"crash: {label} raised {type(exc).__name__}: {exc}")
            return 1, None

    def store(self) -> keystore.KeyStore:
        return open_keystore(self.paths)

    # -- verify -------------------------------------------------------------------------

    def open_long(self) -> None:
        code, verifier = self.lib("Verifier()", lambda: Verifier(self.paths, self.store()))
        if verifier is None:
            return
        self.long = verifier
        for grant in self.truth.grants.values():
            self.lib("warm-up check", lambda g=grant: verifier.check(g.token, any_scope=True,
                                                                     aud=g.aud))  # fmt: skip
        if verifier.decisions is not None:
            self.lib("flush", verifier.decisions.flush)
        _, enforcer = self.lib("Enforcer()", lambda: Enforcer(self.paths, self.store()))
        if enforcer is not None:
            self.long_enforcer = enforcer
            self.lib("warm-up Enforcer.config()", enforcer.config)

    def close_long(self) -> None:
        if self.long is not None:
            self.lib("Verifier.close()", self.long.close)
            self.long = None
        if self.long_enforcer is not None:
            self.lib("Enforcer.close()", self.long_enforcer.close)
            self.long_enforcer = None

    # -- the enforcement point, and where secrets may go --------------------------------

    def enforce(self, label: str) -> None:
        """What a gateway or broker asks before it acts: the registrations it may act on are
        exactly the sealed ones, or it refuses (integrity)."""
        enforcer = self.long_enforcer
        if enforcer is None:
            _, enforcer = self.lib("Enforcer()", lambda: Enforcer(self.paths, self.store()))
            if enforcer is None:
                self.enforce_exits.append(5)
                return
        try:
            code, config = self.lib(label, enforcer.config)
            self.enforce_exits.append(code)
            if config is not None and registrations_meaning(config) != self.truth.registrations:
                self.violate(f"{label}: acted on registrations that are not the sealed ones: "
                             f"{registrations_meaning(config)}")  # fmt: skip
        finally:
            if enforcer is not self.long_enforcer:
                self.lib("Enforcer.close()", enforcer.close)

    def add_secret(self) -> int:
        """A legitimate registration write after the tampering: it must refuse rather than
        seal an edited configuration."""
        name = f"extra{self.rng.randrange(10_000)}"
        value = "an-extra-secret-value"
        if self.mode == "cli":
            code, _ = self.cli("secret", "add", name, input=value + "\n")
        else:
            code, _ = self.lib("add_secret", lambda: add_secret(
                self.paths, name, value, now=int(time.time()), keystore=self.store()))  # fmt: skip
        if code == 0:
            secrets = self.truth.registrations["secrets"]
            self.truth.registrations["secrets"] = sorted({*secrets, name})
        return code

    def judge_verify(self, grant: GrantTruth, allowed: bool, consume: bool, label: str) -> None:
        if not allowed:
            return
        if grant.revoked:
            self.violate(f"{label}: allowed the revoked grant {grant.id}")
        elif not consume and grant.exhausted:
            self.violate(f"{label}: allowed the exhausted grant {grant.id} "
                         f"({grant.uses}/{grant.max_uses} uses)")  # fmt: skip
        if consume:
            grant.uses += 1
            if grant.max_uses is not None and grant.uses > grant.max_uses:
                self.violate(f"{label}: use {grant.uses} of {grant.id}, max_uses "
                             f"{grant.max_uses}")  # fmt: skip

    def verify(self, grants: list[GrantTruth], *, consume: bool, label: str) -> None:
        if self.mode == "cli":
            self._verify_cli(grants, consume=consume, label=label)
        else:
            self._verify_lib(grants, consume=consume, label=label)

    def _verify_lib(self, grants: list[GrantTruth], *, consume: bool, label: str) -> None:
        verifier = self.long
        if verifier is None:
            _, verifier = self.lib("Verifier()", lambda: Verifier(self.paths, self.store()))
            if verifier is None:
                return
        try:
            for grant in grants:
                _, decision = self.lib(label, lambda g=grant: verifier.check(
                    g.token, any_scope=True, aud=g.aud, consume=consume))  # fmt: skip
                self.judge_verify(grant, bool(decision and decision.allowed), consume, label)
        finally:
            if verifier is not self.long:
                self.lib("Verifier.close()", verifier.close)

    def _verify_cli(self, grants: list[GrantTruth], *, consume: bool, label: str) -> None:
        by_aud: dict[str | None, list[GrantTruth]] = defaultdict(list)
        for grant in grants:
            by_aud[grant.aud].append(grant)
        for aud, group in by_aud.items():
            args = ["verify", "--batch", "--any-scope"] + (["--aud", aud] if aud else [])
            args += ["--consume"] if consume else []
            if len(group) == 1 and self.rng.random() < 0.5:
                args = [a for a in args if a != "--batch"] + ["-", "--json"]
            _, out = self.cli(*args, input="".join(g.token + "\n" for g in group))
            if "--batch" in args:
                verdicts = [json.loads(line) for line in out.splitlines() if line.strip()]
            else:
                verdicts = [json.loads(out)] if out.strip() else []
            for grant, verdict in zip(group, verdicts, strict=False):
                self.judge_verify(grant, verdict.get("allowed") is True, consume, label)

    # -- grant, revoke ------------------------------------------------------------------

    def grant(self, agent: str, scope: str, aud: str | None, ttl: str | None, label: str) -> int:
        if self.mode == "cli":
            args = ["grant", agent, "--scope", scope]
            args += (["--aud", aud] if aud else []) + (["--ttl", ttl] if ttl else [])
            code, out = self.cli(*args)
            token = out.strip() if code == 0 else None
        else:
            request = GrantRequest(agent, [scope], ttl=ttl, aud=aud)
            code, issued = self.lib(label, lambda: issue(self.paths, self.store(), request,
                                                         now=int(time.time())))  # fmt: skip
            token = issued[1] if issued else None
        if token is None:
            return code
        why = beyond_ceiling(token, self.truth)
        if why is not None:
            self.violate(f"{label}: issued grant {agent} {scope} aud={aud} ttl={ttl}: {why}")
        claims = claims_of(token)
        self.truth.grants[claims["jti"]] = GrantTruth(
            claims["jti"], token, agent, claims.get("aud"), claims.get("max_uses"),
            header_of(token)["kid"],
        )  # fmt: skip
        return code

    def narrow(self) -> int:
        """Narrow reviewer's ceiling to one audience: every grant of it is revoked (none names an
        audience), so none may verify again."""
        if self.mode == "cli":
            code, _ = self.cli("agent", "update", "reviewer", "--aud", NARROW_AUD, "--yes")
        else:
            change = CeilingChange(audiences=[NARROW_AUD])
            code, _ = self.lib("agent update", lambda: update_agent(
                self.paths, "reviewer", change, now=int(time.time()),
                keystore=self.store()))  # fmt: skip
        if code == 0:
            ceiling = self.truth.ceilings["reviewer"]
            self.truth.ceilings["reviewer"] = replace(ceiling, audiences=(NARROW_AUD,))
            for grant in self.truth.grants.values():
                grant.revoked = grant.revoked or grant.agent == "reviewer"
        return code

    def revoke(self, grant: GrantTruth) -> int:
        if self.mode == "cli":
            code, _ = self.cli("revoke", grant.id, "--reason", "tamper harness")
        else:
            code, _ = self.lib("revoke", lambda: revoke(
                self.paths, ids=[grant.id], reason="tamper harness", now=int(time.time()),
                keystore=self.store()))  # fmt: skip
        if code == 0:
            grant.revoked = True
        return code

    # -- audit --------------------------------------------------------------------------

    def tail(self, plain: bool) -> int:
        if self.mode == "cli":
            if plain:
                self.cli("audit", "tail", "-n", "5")
            code, out = self.cli("audit", "tail", "-n", "5", "--json")
            shown = [json.loads(line) for line in out.splitlines()]
        else:
            code, shown = self.lib("tail", lambda: list(tail(self.paths, 5, TailFilter())))
            shown = shown or []
        for record in shown:
            if any(is_sealed(record, key) for key in self.keys):
                continue
            if record in self.planted:
                self.violate(f"audit tail printed a planted line as a record: {record}")
            else:
                self.violate(f"audit tail printed a record nhidel never sealed: {record}")
        return code

    def audit_verify(self) -> tuple[int, list[str]]:
        if self.mode == "cli":
            code, out = self.cli("audit", "verify", "--json")
            try:
                warnings = list(json.loads(out).get("warnings", []))
            except ValueError:
                warnings = []
            return code, warnings
        code, report = self.lib("verify_log", lambda: verify_log(self.paths, self.store()))
        if report is None:
            return code, []
        return (0 if report.ok else 5), list(report.warnings)


def new_records(before: dict[str, bytes], after: dict[str, bytes]) -> list[dict[str, Any]]:
    """Records in `after`'s log lines that were not lines of `before`'s."""
    old = {line for data in audit_files(before).values() for line in data.splitlines()}
    found = []
    for data in audit_files(after).values():
        for line in data.splitlines():
            if line not in old:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    found.append(record)
    return found


def complete_lines(files: dict[str, bytes]) -> list[dict[str, Any]]:
    found = []
    for data in audit_files(files).values():
        for line in data.split(b"\n")[:-1]:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def doctor_reads_only(case: Case, noop: bool) -> int:
    """`doctor` over the tampered home, before any command writes: a report (never a crash:
    `case.cli` checks that), never a write, and no problem reported when nothing changed."""
    seen = _no_volatile(capture(case.home))
    code, out = case.cli("doctor", "--json")
    if _no_volatile(capture(case.home)) != seen:
        case.violate("doctor wrote to the home")
    try:
        report = json.loads(out)
    except ValueError:
        case.violate(f"doctor --json printed no report (exit {code})")
        return code
    if noop and code != 0:
        problems = [c for c in report.get("checks", []) if c.get("ok") is False]
        case.violate(f"doctor found problems in an untouched home: {problems}")
    return code


def _no_volatile(files: dict[str, bytes]) -> dict[str, bytes]:
    return {n: d for n, d in files.items() if n != "ledger.db-shm" and not n.startswith(".")}


def run_case(worlds: Worlds, kind: str, number: int, cli: Cli) -> Outcome:
    spec = KINDS[kind]
    eligible = [w for w in worlds.all if _eligible(w, spec)]
    world = eligible[number % len(eligible)]
    peers = [w for w in worlds.all if w.file_keystore == world.file_keystore and w is not world
             and (w.rotating or spec.needs != "segments")]  # fmt: skip
    rng = random.Random(f"tamper-{kind}-{number}")
    other = rng.choice(peers)
    restore(worlds, world)
    case = Case(worlds, world, rng, cli)
    case.mode = "cli" if rng.random() < spec.cli_share else "lib"
    case.keys.add(other.audit_key)
    if rng.random() < spec.long_share:
        case.open_long()
    before = capture(worlds.home)
    ctx = Ctx(rng, world, other, worlds.home, case.truth, worlds.outside)
    tamper = spec.mutate(ctx)
    after = capture(worlds.home)
    case.planted = complete_lines(after)
    noop = _no_volatile(before) == _no_volatile(after)
    doctor_exit = doctor_reads_only(case, noop) if case.mode == "cli" else None
    outcome = Outcome(kind, world.name, case.mode, tamper.what, noop,
                      long_running=case.long is not None, doctor_exit=doctor_exit)  # fmt: skip
    if tamper.rollback is not None:
        # The documented limit: the old state comes back whole; the old truth must hold, and
        # no grant issued after it can verify (its row is gone).
        old = tamper.rollback.truth.copy()
        for grant_id, grant in case.truth.grants.items():
            if grant_id not in old.grants:
                old.grants[grant_id] = replace(grant, uses=0, revoked=True)
        old.compromised = set()
        case.truth = old
    try:
        sequence(case, tamper, kind)
        outcome.audit_exit, warnings = case.audit_verify()
        if case.long is not None:
            case.mode = "lib"  # the long-running verifier, whatever ran the commands
        case.verify(list(case.truth.grants.values()), consume=False, label="verify at the end")
    finally:
        case.close_long()
    judge(case, outcome, tamper, before, after, warnings)
    if tamper.flagged and outcome.audit_exit == 0:
        case.violate("audit verify was clean after an approvals row was edited")
    if any(worlds.outside.iterdir()):
        case.violate(f"wrote outside the home: {sorted(p.name for p in worlds.outside.iterdir())}")
        for path in worlds.outside.iterdir():
            path.unlink()
    for violation in case.violations:
        hole = known_hole(outcome, violation, world)
        if hole is None:
            outcome.violations.append(violation)
        else:
            outcome.known[hole] += 1
    return outcome


def sequence(case: Case, tamper: Tamper, kind: str) -> None:
    """What a gateway and a human run next."""
    grants = list(case.truth.grants.values())
    case.enforce("the enforcement point after the tampering")
    case.verify(grants, consume=False, label="verify")
    case.verify(grants, consume=True, label="verify --consume")
    agent = case.rng.choice(sorted(case.truth.ceilings) or ["reviewer"])
    aud = AUD if agent == "release-bot" else None
    within = case.grant(agent, WITHIN[agent], aud, None, "grant within the ceiling")
    case.within_exit = within
    case.grant("reviewer", BEYOND, None, None, "grant beyond the ceiling")
    for extra in tamper.beyond:
        case.grant(*extra, label="grant beyond the real ceiling")
    live = case.truth.live()
    if live:
        target = case.rng.choice(live)
        if case.revoke(target) == 0:
            case.verify([target], consume=case.rng.random() < 0.5, label="verify after revoke")
    if "reviewer" in case.truth.ceilings:
        case.narrow_exit = case.narrow()
    if case.narrow_exit == 0:
        narrowed = [g for g in case.truth.grants.values() if g.agent == "reviewer"]
        case.verify(narrowed, consume=False, label="verify after agent update")
    case.add_secret()
    case.enforce("the enforcement point after a secret was added")
    if kind in KINDS and KINDS[kind].group == "approvals" or kind == "none":
        approvals_sequence(case)
    case.tail(plain=kind not in KINDS or KINDS[kind].group in ("audit.jsonl", "segments"))


def approvals_sequence(case: Case) -> None:
    """What an enforcement point and the human do next with approvals: no call goes on without
    a genuine unspent yes (the spent one and the denied one never again; the waiting one only
    once the human says yes here, and then once), and no forged answer is shown as given."""
    from nhidel.actions.approvals import GO, Choice, Desk, answer, listed
    from nhidel.audit import AuditKeys
    from nhidel.ledger.store import Ledger

    truth = case.truth.approvals
    if not truth:
        return  # a whole-state rollback to before the world had approvals
    grant = approvals_grant(case.world.truth)
    now = int(time.time())

    def ask(label: str, content: str) -> str | None:
        def consider() -> str:
            with Ledger(case.paths) as ledger:
                desk = Desk(case.paths, AuditKeys.of(case.store()), ledger, clock=time.time,
                            timeout=APPROVAL_TIMEOUT)  # fmt: skip
                call, arguments = approval_call(grant, content)
                return str(desk.consider(call, via="mcp", mark="files:write_file:*",
                                         arguments=arguments).outcome)  # fmt: skip

        return case.lib(label, consider)[1]

    for said in ("spent", "denied"):
        if said in truth and truth[said].said in ("spent", "denied") and ask(
                f"the {said} call", said) == GO:  # fmt: skip
            case.violate(f"approvals: the {said} call went on")
    if "spent" in truth and truth["spent"].said == "granted" and ask("the yes", "spent") == GO:
        truth["spent"] = replace(truth["spent"], said="spent")  # (a rollback's truth: once)
    if "pending" in truth and ask("the waiting call", "pending") == GO:
        case.violate("approvals: the waiting call went on without a yes")
    _, shown = case.lib("listed", lambda: listed(case.paths, case.store(), now=now, every=True))
    for item in shown or []:
        real = next((t for t in truth.values() if t.id == item.id), None)
        said = None if real is None else {"spent": "granted"}.get(real.said, real.said)
        if item.status in ("granted", "denied") and item.status != said:
            case.violate(f"approvals: {item.id} shown {item.status}, the human said {said}")
    if "pending" in truth:
        code, _ = case.lib("approve", lambda: answer(case.paths, case.store(), truth["pending"].id,
                                                     Choice(True), now=now))  # fmt: skip
        went = [ask("the approved call", "pending") == GO for _ in range(2)]
        if went[1] or (went[0] and code != 0):
            case.violate(f"approvals: the approved call went {went} (approve exit {code})")


def judge(
    case: Case, outcome: Outcome, tamper: Tamper, before: dict[str, bytes],
    after: dict[str, bytes], warnings: list[str],
) -> None:  # fmt: skip
    """`audit verify` must not be clean after a change it should see."""
    code = outcome.audit_exit
    if outcome.noop:
        if code != 0 or warnings:
            case.violate(f"a no-op left audit verify at exit {code}, warnings {warnings}")
        if case.within_exit != 0:
            case.violate(f"a no-op, yet a grant within the ceiling exited {case.within_exit}")
        if any(case.enforce_exits):
            case.violate(f"a no-op, yet the enforcement point refused: {case.enforce_exits}")
        return
    log_changed = audit_files(before) != audit_files(after)
    ledger_changed = (before.get("ledger.db"), before.get("ledger.db-wal")) != (
        after.get("ledger.db"), after.get("ledger.db-wal")) and ledger_dump(
        before) != ledger_dump(after)  # fmt: skip
    config_changed = before.get("config.toml") != after.get("config.toml") and config_meaning(
        before) != config_meaning(after)  # fmt: skip
    keystore_changed = before.get("keystore.json") != after.get("keystore.json")
    outcome.changed = frozenset(name for name, flag in (
        ("log", log_changed), ("ledger", ledger_changed), ("config", config_changed),
        ("keystore", keystore_changed)) if flag)  # fmt: skip
    outcome.what += "".join(f" [{name}]" for name in sorted(outcome.changed))
    outcome.unsealed_only = ledger_changed and unsealed_only(before, after)
    if tamper.rollback is not None:
        return
    final = capture(case.home)
    written = [r for r in new_records(after, final)
               if any(is_sealed(r, key) for key in case.keys)]  # fmt: skip
    if tamper.fragment and not (ledger_changed or config_changed):
        recovered = any(r.get("event") == "log.recovered" for r in written)
        if code == 0 and not warnings and not recovered:
            case.violate("an appended fragment left no warning and no sealed log.recovered")
        return
    if not (log_changed or ledger_changed or config_changed):
        return
    if (log_changed or config_changed) and outcome.doctor_exit == 0:
        case.violate("doctor found no problem after the log or config.toml was tampered with")
    if code == 0:
        case.violate("audit verify was clean (exit 0) after the tampering")
    elif code != 5 and not (keystore_changed and code == 4):
        case.violate(f"audit verify exited {code}, not 5")


# == holes found (each has its own strict-xfail test below) ==================================
#
# A violation that matches one of these is counted in the summary, not failed on here: the named
# test fails until the hole is closed, and then `test_summary` asks for the entry to be removed
# (it must still be seen), so a fix cannot leave a blind spot behind.


def _audit_clean(outcome: Outcome, text: str) -> bool:
    return text.startswith("audit verify was clean")


KNOWN_HOLES: dict[str, Callable[[Outcome, str, World], bool]] = {
}  # fmt: skip


def known_hole(outcome: Outcome, violation: str, world: World) -> str | None:
    for name, matches in KNOWN_HOLES.items():
        if matches(outcome, violation, world):
            return name
    return None


def _eligible(world: World, spec: Kind) -> bool:
    if spec.needs == "file":
        return world.file_keystore
    if spec.needs == "segments":
        return world.rotating
    return True


_current_world: dict[str, World] = {}


def restore(worlds: Worlds, world: World) -> None:
    if worlds.home.exists():
        shutil.rmtree(worlds.home)
    shutil.copytree(world.pristine, worlds.home, symlinks=True)
    fake = keyring.get_keyring()
    assert isinstance(fake, MemoryKeyring)
    fake.entries.clear()
    fake.entries.update(world.final.entries)
    if _current_world.get("world") is not world:
        for name in ENV_NAMES:
            if name in world.env:
                os.environ[name] = world.env[name]
            else:
                os.environ.pop(name, None)
        _current_world["world"] = world


class FastCli(Cli):
    """support.Cli with each command module's click command built once (Typer rebuilds it on
    every call, evaluating every annotation again: most of an in-process run's time)."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = click.testing.CliRunner()
        self.commands: dict[str, Any] = {}

    def __call__(self, *args: str, input: str | None = None,
                 env: dict[str, str] | None = None) -> Result:  # fmt: skip
        module = COMMAND_MODULES[args[0]]
        if module not in self.commands:
            self.commands[module] = command(list(args))
        result = self.runner.invoke(self.commands[module], list(args), input=input, env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def fast_cli() -> FastCli:
    return FastCli()


# == the tests ==============================================================================

# The summary below is built from every kind's outcomes: under pytest-xdist the whole module
# runs on one worker (tests/run.sh passes --dist loadgroup), or it would see only some of them.
pytestmark = pytest.mark.xdist_group("tamper_then_write")
SUMMARY: dict[str, list[Outcome]] = {}
STARTED = time.monotonic()


@pytest.fixture
def harness_env(worlds: Worlds, monkeypatch: pytest.MonkeyPatch) -> Iterator[Worlds]:
    monkeypatch.setenv("NHIDEL_HOME", str(worlds.home))
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    _current_world.clear()
    yield worlds
    _current_world.clear()
    for name in ENV_NAMES:  # set by restore(); monkeypatch then puts back what was there
        os.environ.pop(name, None)


@pytest.mark.parametrize("kind", list(KINDS))
def test_no_tampering_then_writing_moves_trust_backwards(
    harness_env: Worlds, fast_cli: FastCli, kind: str
) -> None:
    outcomes = [
        run_case(harness_env, kind, number, fast_cli) for number in range(KINDS[kind].cases)
    ]
    SUMMARY[kind] = outcomes
    failures = [f"#{n} {o.world} {o.mode}: {o.what}: {v}"
                for n, o in enumerate(outcomes) for v in o.violations]  # fmt: skip
    assert failures == [], f"{len(failures)} violation(s):\n" + "\n".join(failures[:25])


def test_untouched_worlds_pass_every_step(harness_env: Worlds, fast_cli: FastCli) -> None:
    """The harness is not vacuous: on an untouched world every command succeeds."""
    for world in harness_env.all:
        for mode in ("cli", "lib"):
            restore(harness_env, world)
            case = Case(harness_env, world, random.Random(world.seed), fast_cli)
            case.mode = mode
            before = capture(harness_env.home)
            sequence(case, Tamper("nothing"), "none")
            code, warnings = case.audit_verify()
            outcome = Outcome("none", world.name, mode, "nothing", True, code)
            judge(case, outcome, Tamper("nothing"), before, before, warnings)
            assert case.violations == [], case.violations
            assert case.within_exit == 0 and case.narrow_exit == 0


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    if len(SUMMARY) != len(KINDS):
        pytest.skip("the summary needs every kind of the harness in this run")
    by_group: Counter[str] = Counter()
    holes: Counter[str] = Counter()
    cases_with: Counter[str] = Counter()
    lines = []
    for kind, outcomes in SUMMARY.items():
        by_group[KINDS[kind].group] += len(outcomes)
        exits = Counter(o.audit_exit for o in outcomes)
        noops = sum(o.noop for o in outcomes)
        modes = Counter(o.mode for o in outcomes)
        lines.append(f"  {kind:30} {len(outcomes):3} cases ({modes['cli']} cli)  audit verify "
                     f"exits {dict(sorted(exits.items(), key=str))}"
                     + (f"  no-ops {noops}" if noops else ""))  # fmt: skip
        for outcome in outcomes:
            holes.update(outcome.known)
            cases_with.update(outcome.known.keys())
    total = sum(by_group.values())
    with capsys.disabled():
        print(f"\ntamper-then-write: {total} cases in {time.monotonic() - STARTED:.1f} s")
        print("  by file: " + ", ".join(f"{g} {n}" for g, n in sorted(by_group.items())))
        print("\n".join(lines))
        print("  known holes (cases, violations), each with its strict-xfail test:")
        for name in KNOWN_HOLES:
            print(f"    {cases_with[name]:4} {holes[name]:5}  {name}")
    assert total >= 2000
    unseen = [name for name in KNOWN_HOLES if not holes[name]]
    assert unseen == [], f"no case hit {unseen}: fixed? drop them from KNOWN_HOLES"


# == the holes found, one named test each (strict xfail: each fails until its hole is closed) ==


def _append_line(path: Path, line: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(line)


def _edit_config(paths: Paths, change: Callable[[dict[str, Any]], None]) -> None:
    import tomllib

    document = tomllib.loads(paths.config_file.read_text())
    change(document)
    paths.config_file.write_bytes(tomli_w.dumps(document).encode())


def _token_and_id(cli: Cli, *args: str) -> tuple[str, str]:
    token = cli.ok("grant", *args).stdout.strip()
    return token, claims_of(token)["jti"]


@pytest.fixture
def file_keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The encrypted-file keystore (at scrypt's lowest cost), its passphrase in a file."""
    secret = tmp_path / "passphrase"
    write_private(secret, b"tamper holes passphrase")
    monkeypatch.setenv("NHIDEL_KEYSTORE", "file")
    monkeypatch.setenv("NHIDEL_PASSPHRASE_FILE", str(secret))
    monkeypatch.setitem(keystore._SCRYPT, "n", 2**14)


def _put_back(paths: Paths, saved: dict[str, bytes]) -> None:
    for name in ("ledger.db-wal", "ledger.db-shm"):
        (paths.state_dir / name).unlink(missing_ok=True)
    for name, data in saved.items():
        (paths.state_dir / name).write_bytes(data)


def test_audit_verify_is_clean_over_an_edited_config_toml(ready: Cli, paths: Paths) -> None:
    _edit_config(paths, lambda doc: doc["agents"]["reviewer"]["allow"].append(WIDE))
    assert ready("grant", "reviewer", "--scope", BEYOND).exit_code == 5
    assert ready("audit", "verify").exit_code == 5


def _rolled_back_keystore_and_ledger(
    cli: Cli, paths: Paths, then: Callable[[], None], *, names: tuple[str, ...] = ()
) -> str:
    """init, agent, a grant; save keystore.json and ledger.db (and `names`); `then`; put them
    back, the log left as it is. Returns the first grant's token."""
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "reviewer", "--allow", "repo:read:acme/*")
    token, _ = _token_and_id(cli, "reviewer", "--scope", "repo:read:acme/api")
    saved = {n: (paths.state_dir / n).read_bytes()
             for n in ("keystore.json", "ledger.db", *names)}  # fmt: skip
    then()
    _put_back(paths, saved)
    return token


def test_an_older_keystore_and_ledger_are_finished_as_if_a_crash_left_them(
    file_keystore: None, cli: Cli, paths: Paths
) -> None:
    def later() -> None:
        token, grant_id = _token_and_id(cli, "reviewer", "--scope", "repo:read:acme/web")
        cli.ok("verify", token, "--any-scope")
        cli.ok("revoke", grant_id)

    token = _rolled_back_keystore_and_ledger(cli, paths, later)
    cli("verify", token, "--any-scope")  # the next command "finishes" the older commands
    assert cli("audit", "verify").exit_code == 5


def test_an_older_keystore_and_ledger_bring_back_a_compromised_signing_key(
    file_keystore: None, cli: Cli, paths: Paths
) -> None:
    token = _rolled_back_keystore_and_ledger(
        cli,
        paths,
        lambda: cli.ok("key", "rotate", "--now", "--yes") and None,
        names=("config.toml",),
    )
    compromised = header_of(token)["kid"]
    result = cli("grant", "reviewer", "--scope", "repo:read:acme/api")
    issued = result.stdout.strip() if result.exit_code == 0 else None
    assert issued is None or header_of(issued)["kid"] != compromised, (
        f"a grant signed by the compromised key {compromised}"
    )


def test_audit_tail_crashes_on_a_planted_line_of_the_wrong_shape(ready: Cli, paths: Paths) -> None:
    _append_line(paths.audit_file, b'{"seq":3,"requested":7}\n')
    result = ready("audit", "tail", "-n", "5")
    assert "this is a bug" not in result.stderr, result.stderr


def test_audit_tail_shows_a_planted_line_as_a_record(ready: Cli, paths: Paths) -> None:
    last = paths.audit_file.read_bytes().splitlines()[-1]
    forged = {
        "event": "grant.revoked",
        "seq": json.loads(last)["seq"] + 1,
        "grant": "g" + "a" * 26,
        "prev": hashlib.sha256(last).hexdigest(),
        "reason": "forged",
        "seal": "0" * 64,
    }
    _append_line(paths.audit_file, json.dumps(forged).encode() + b"\n")
    shown = ready("audit", "tail", "-n", "5", "--json").stdout
    assert "forged" not in shown


def test_an_unsealed_status_dir_makes_revoke_write_outside_the_home(
    ready: Cli, paths: Paths, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _, grant_id = _token_and_id(ready, "reviewer", "--scope", "repo:read:acme/api")

    def point_elsewhere(doc: dict[str, Any]) -> None:
        doc["status_uri"] = "https://status.example.com/nhidel/status.jwt"
        doc["status_dir"] = str(elsewhere)

    _edit_config(paths, point_elsewhere)
    ready("revoke", grant_id)
    assert sorted(p.name for p in elsewhere.iterdir()) == []


def test_a_ledger_emptied_under_a_running_verifier_is_integrity_not_busy(
    ready: Cli, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger, "BUSY_TIMEOUT_MS", 200)
    token, grant_id = _token_and_id(ready, "reviewer", "--scope", "repo:read:acme/api")
    with Verifier(paths, open_keystore(paths)) as gateway:
        assert gateway.check(token, any_scope=True).allowed
        with paths.ledger_file.open("r+b") as handle:
            handle.truncate(0)
        revoked = ready("revoke", grant_id)
        assert revoked.exit_code == 5, revoked.stderr  # named as tampering, not "busy"
        assert not gateway.check(token, any_scope=True).allowed


def test_audit_verify_is_clean_over_a_revocation_forged_into_a_row(
    ready: Cli, paths: Paths
) -> None:
    _, grant_id = _token_and_id(ready, "reviewer", "--scope", "repo:read:acme/api")
    db = sqlite3.connect(paths.ledger_file)
    try:
        db.execute("UPDATE grants SET revoked_at = issued_at, revoke_reason = 'revoked by alice'"
                   " WHERE id = ?", (grant_id,))  # fmt: skip
        db.commit()
    finally:
        db.close()
    assert ready("audit", "verify").exit_code == 5


def _flip_schema_byte(path: Path) -> None:
    """One byte of the grants table's CREATE text in sqlite_master made invalid UTF-8 (SQLite
    then quotes it in its error, which Python cannot decode)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"CREATE TABLE grants") + len(b"CREATE ")
    data[at] = 0xBC
    path.write_bytes(bytes(data))


def test_a_byte_flipped_in_the_ledger_schema_is_a_crash_not_integrity(
    ready: Cli, paths: Paths
) -> None:
    _flip_schema_byte(paths.ledger_file)
    result = ready("audit", "verify")
    assert (result.exit_code, "this is a bug" in result.stderr) == (5, False), result.stderr


def test_a_running_verifier_sees_a_revocation_after_ledger_shm_is_removed(
    file_keystore: None, cli: Cli, paths: Paths, tmp_path: Path
) -> None:
    from helpers.processes import isolated_env, run

    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "reviewer", "--allow", "repo:read:acme/*")
    token, grant_id = _token_and_id(cli, "reviewer", "--scope", "repo:read:acme/api")
    env = isolated_env(tmp_path, NHIDEL_HOME=str(paths.state_dir), NHIDEL_KEYSTORE="file",
                       NHIDEL_PASSPHRASE_FILE=os.environ["NHIDEL_PASSPHRASE_FILE"])  # fmt: skip
    with Verifier(paths, open_keystore(paths)) as gateway:
        assert gateway.check(token, any_scope=True).allowed
        Path(f"{paths.ledger_file}-shm").unlink()  # the attacker
        revoked = run(env, "revoke", grant_id)  # the human, in another process
        assert revoked.code == 0, str(revoked)
        assert run(env, "verify", token, "--any-scope").code == 1  # a fresh verifier denies
        assert not gateway.check(token, any_scope=True).allowed  # and so does the running one
