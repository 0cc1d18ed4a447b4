"""Seeded worlds for the tamper-then-write harness (tests/integration/test_tamper_then_write.py).

A world is a home built only through nhidel's own code (init, agent add, update (a narrowing) and
remove, grant, verify --consume, revoke, key rotation after a compromise, many decisions, and
where secrets may go: a secret stored and later replaced, an MCP server and two routes
registered, one of them removed later), with a
snapshot of every file (and of the OS keyring's entries) taken between the steps, and the ground
truth kept alongside: which grants are revoked, how many uses each has spent, every agent's real
ceiling and which signing keys were compromised. The harness copies a built world per case,
tampers with it, runs legitimate commands and holds the results against that truth.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from helpers.support import MemoryKeyring
from nhidel.actions.agents import CeilingChange, add_agent, remove_agent, update_agent
from nhidel.actions.grants import GrantRequest, issue, revoke
from nhidel.actions.keys import init_principal, rotate_key
from nhidel.actions.registrations import add_route, add_server, remove_route
from nhidel.actions.secrets import add_secret
from nhidel.audit.records import canonical
from nhidel.config import Config, load_config
from nhidel.errors import NhidelError
from nhidel.integrity.state import config_digest
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.keys.principal import load_trust
from nhidel.paths import Paths
from nhidel.scopes import not_covered, parse_scopes
from nhidel.timefmt import parse_duration
from nhidel.verifiers.local import Verifier

PASSPHRASE = "tamper harness passphrase"
AUD = "ci.example.com"
# In no agent's real ceiling, ever: a grant of it is beyond every ceiling.
BEYOND = "payments:refund:everything"
WIDE = "payments:*:*"  # what a widened ceiling gains (covers BEYOND)
LOCKS = frozenset({"audit.lock", "config.lock", "keystore.lock", "init.lock"})
AGENTS = {
    "reviewer": (["repo:read:acme/*", "ticket:create:queue/*"], "1h", []),
    "release-bot": (["release:publish"], "1h", [AUD]),
    "deployer": (["deploy:run:staging/*"], "2h", []),
}
# What `agent update` takes from reviewer's ceiling while a world is built (a grant of it is
# revoked then, and beyond the real ceiling from then on).
NARROWED = ("ticket:create:queue/*", "ticket:create:queue/support")
# A scope within each agent's real ceiling, as a human would grant it.
WITHIN = {
    "reviewer": "repo:read:acme/api",
    "release-bot": "release:publish",
    "deployer": "deploy:run:staging/web",
}


@dataclass
class GrantTruth:
    id: str
    token: str
    agent: str
    aud: str | None
    max_uses: int | None
    kid: str
    uses: int = 0  # allowed consumes seen (a lower bound of the real count)
    revoked: bool = False

    @property
    def exhausted(self) -> bool:
        return self.max_uses is not None and self.uses >= self.max_uses

    @property
    def dead(self) -> bool:
        return self.revoked or self.exhausted


@dataclass(frozen=True)
class Ceiling:
    allow: tuple[str, ...]
    max_ttl: int
    audiences: tuple[str, ...]


# The secret every world stores (and replaces): it goes where the registrations say.
UPSTREAM = "upstream"
UPSTREAM_VALUES = ("upstream-secret-first-value", "upstream-secret-second-value")


def registrations_meaning(config: Config) -> dict[str, Any]:
    """Where secrets may go, as the truth keeps it: the secrets' names, every MCP server and
    route whole (a route's CA included), their registration times left out."""

    def whole(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k != "created_at"}

    return {
        "secrets": sorted(config.secrets),
        "servers": {n: whole(s.to_json()) for n, s in sorted(config.servers.items())},
        "routes": {n: whole(r.sealed_json()) for n, r in sorted(config.routes.items())},
    }


@dataclass(frozen=True)
class ApprovalTruth:
    """One approval request of the world: its id, the call it holds (with its arguments), and
    what the human said: `spent` (a one-time yes, used), `denied`, or `pending`."""

    id: str
    content: str  # the call's `content` argument (see approval_call)
    said: str


@dataclass
class Truth:
    grants: dict[str, GrantTruth] = field(default_factory=dict)
    approvals: dict[str, ApprovalTruth] = field(default_factory=dict)  # by what was said
    ceilings: dict[str, Ceiling] = field(default_factory=dict)
    compromised: set[str] = field(default_factory=set)
    registrations: dict[str, Any] = field(
        default_factory=lambda: {"secrets": [], "servers": {}, "routes": {}}
    )

    def copy(self) -> Truth:
        return copy.deepcopy(self)

    def live(self) -> list[GrantTruth]:
        return [g for g in self.grants.values() if not g.dead]


@dataclass
class Snapshot:
    label: str
    files: dict[str, bytes]  # every file of the home but the lock files
    entries: dict[tuple[str, str], str]  # the OS keyring's (empty for a file keystore)
    truth: Truth


@dataclass
class World:
    seed: int
    file_keystore: bool
    rotating: bool
    compromised_rotation: bool
    env: dict[str, str]
    pristine: Path  # the built home, copied per case
    snapshots: list[Snapshot]  # oldest first; the last is the world as built
    audit_key: bytes

    @property
    def final(self) -> Snapshot:
        return self.snapshots[-1]

    @property
    def truth(self) -> Truth:
        return self.final.truth

    @property
    def name(self) -> str:
        kind = "file" if self.file_keystore else "keyring"
        extra = ("+segments" if self.rotating else "") + ("+rotated" if self.compromised_rotation
                                                          else "")  # fmt: skip
        return f"w{self.seed}/{kind}{extra}"


def world_env(file_keystore: bool, rotating: bool) -> dict[str, str]:
    env: dict[str, str] = {}
    if file_keystore:
        env.update(NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE=PASSPHRASE)
    if rotating:
        env["NHIDEL_AUDIT_SEGMENT_BYTES"] = "4096"
    return env


def checkpoint(ledger: Path) -> None:
    """Fold any WAL into ledger.db (nhidel's connections are all closed by then)."""
    if not Path(f"{ledger}-wal").exists():
        return
    db = sqlite3.connect(ledger)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def capture(home: Path) -> dict[str, bytes]:
    """Every file of the home but the locks, as bytes."""
    files = {}
    for path in sorted(home.iterdir()):
        if path.name not in LOCKS and path.is_file() and not path.is_symlink():
            files[path.name] = path.read_bytes()
    return files


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def header_of(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return decoded


def beyond_ceiling(token: str, truth: Truth) -> str | None:
    """Why a newly issued token exceeds what the ground truth allows, or None."""
    claims = claims_of(token)
    agent = claims.get("act", {}).get("sub")
    ceiling = truth.ceilings.get(agent)
    if ceiling is None:
        return f"issued to {agent!r}, which is no real agent"
    beyond = not_covered(parse_scopes(ceiling.allow), parse_scopes([claims["scope"]]))
    if beyond:
        return f"scope {beyond[0]} is beyond {agent}'s real ceiling {ceiling.allow}"
    if ceiling.audiences and claims.get("aud") not in ceiling.audiences:
        return f"audience {claims.get('aud')!r} is beyond {agent}'s real {ceiling.audiences}"
    if claims["exp"] - claims["nbf"] > ceiling.max_ttl:
        return f"a TTL of {claims['exp'] - claims['nbf']}s is over {agent}'s {ceiling.max_ttl}s"
    kid = header_of(token).get("kid")
    if kid in truth.compromised:
        return f"signed by the compromised key {kid}"
    return None


def is_sealed(record: dict[str, Any], key: bytes) -> bool:
    """Whether a record (as parsed from a line or from `audit tail --json`) carries the seal
    nhidel's writer gives it under `key`."""
    seal = record.get("seal")
    if not isinstance(seal, str):
        return False
    body = canonical({k: v for k, v in record.items() if k != "seal"})
    return hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), seal)


LEDGER_COLUMNS = (
    "id", "agent", "scope", "aud", "issued_at", "not_before", "expires_at", "max_uses", "uses",
    "reason", "kid", "token_sha256", "revoked_at", "revoke_reason", "status_idx", "seal",
)  # fmt: skip
# What no seal covers: a row's use count and revocation (the sealed state holds the real ones).
UNSEALED = frozenset({"uses", "revoked_at", "revoke_reason"})


def ledger_rows(files: dict[str, bytes]) -> tuple[dict[bytes, tuple[Any, ...]], list[bytes]] | str:
    """What ledger.db (with any -wal) holds, logically: every grant row by id, and the sealed
    state. A ledger that cannot be read gives a text naming why (so damage counts as a change)."""
    if "ledger.db" not in files:
        return "<no ledger>"
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "ledger.db"
        target.write_bytes(files["ledger.db"])
        if "ledger.db-wal" in files:
            Path(f"{target}-wal").write_bytes(files["ledger.db-wal"])
        try:
            db = sqlite3.connect(target)
            db.text_factory = bytes  # (a flipped byte may leave text that is not UTF-8)
            try:
                rows = {row[0]: row for row in db.execute(
                    f"SELECT {', '.join(LEDGER_COLUMNS)} FROM grants")}  # fmt: skip
                state = [bytes(row[0]) for row in db.execute("SELECT body FROM sealed_state")]
            finally:
                db.close()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            return f"<unreadable: {exc}>"
    return rows, state


def ledger_dump(files: dict[str, bytes]) -> str:
    found = ledger_rows(files)
    if isinstance(found, str):
        return found
    rows, state = found
    return "\n".join([repr(rows[key]) for key in sorted(rows)] + ["--"] + list(map(repr, state)))


def unsealed_only(before: dict[str, bytes], after: dict[str, bytes]) -> bool:
    """Whether the ledgers differ only in columns no seal covers."""
    old, new = ledger_rows(before), ledger_rows(after)
    if isinstance(old, str) or isinstance(new, str) or old[1] != new[1] or old[0].keys() != new[
            0].keys():  # fmt: skip
        return False
    return all(
        name in UNSEALED
        for key in old[0]
        for name, a, b in zip(LEDGER_COLUMNS, old[0][key], new[0][key], strict=True)
        if a != b
    )


def config_meaning(files: dict[str, bytes]) -> str:
    """What config.toml says of what is sealed (principal, issuer, keys, agents)."""
    if "config.toml" not in files:
        return "<no config>"
    with tempfile.TemporaryDirectory() as scratch:
        write_private(Path(scratch) / "config.toml", files["config.toml"])
        try:
            return config_digest(load_config(Paths(Path(scratch), Path(scratch))))
        except NhidelError as exc:
            return f"<unreadable: {exc.message}>"


def audit_files(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if name.startswith("audit.")}


# == building a world ======================================================================


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Builder:
    """Runs one world's steps through nhidel's own functions, keeping the truth."""

    def __init__(self, home: Path, seed: int, fake: MemoryKeyring, env: dict[str, str]) -> None:
        import random

        self.home = home
        self.paths = Paths(home, home)
        self.rng = random.Random(f"tamper-world-{seed}")  # noqa: S311 - reproducible worlds
        self.fake = fake
        self.env = env
        self.now = int(time.time())
        self.truth = Truth()
        self.snapshots: list[Snapshot] = []

    def keystore(self) -> KeyStore:
        return open_keystore(self.paths, env=self.env)

    def snapshot(self, label: str) -> None:
        checkpoint(self.paths.ledger_file)
        files = capture(self.home)
        assert "ledger.db-wal" not in files, label
        self.snapshots.append(Snapshot(label, files, dict(self.fake.entries), self.truth.copy()))

    def add(self, name: str) -> None:
        allow, max_ttl, auds = AGENTS[name]
        add_agent(self.paths, name, allow=allow, max_ttl=max_ttl, default_ttl=None,
                  audiences=auds, now=self.now, keystore=self.keystore())  # fmt: skip
        self.truth.ceilings[name] = Ceiling(tuple(allow), parse_duration(max_ttl), tuple(auds))

    def narrow(self, name: str, entry: str) -> None:
        """`agent update NAME --disallow ENTRY`: the entry leaves the ceiling, with the live
        grants it no longer covers."""
        update = update_agent(self.paths, name, CeilingChange(disallow=[entry]), now=self.now,
                              keystore=self.keystore())  # fmt: skip
        allow = tuple(str(scope) for scope in update.after.allow)
        self.truth.ceilings[name] = replace(self.truth.ceilings[name], allow=allow)
        for grant in update.revoked:
            self.truth.grants[grant.id].revoked = True

    def grant(self, agent: str, scope: str | None = None) -> GrantTruth:
        uses = self.rng.choice([None, None, 1, 2, 3])
        aud = AUD if agent == "release-bot" else None
        request = GrantRequest(agent, [scope or WITHIN[agent]], ttl="45m", aud=aud, uses=uses,
                               reason=f"seeded {len(self.truth.grants)}")  # fmt: skip
        grant, token = issue(self.paths, self.keystore(), request, now=self.now)
        truth = GrantTruth(grant.id, token, agent, aud, uses, grant.kid)
        self.truth.grants[grant.id] = truth
        return truth

    def consume(self, grants: list[GrantTruth], *, exhaust: bool) -> None:
        with Verifier(self.paths, self.keystore()) as verifier:
            for grant in grants:
                rounds = grant.max_uses if exhaust and grant.max_uses else 1
                for _ in range(rounds):
                    decision = verifier.check(grant.token, any_scope=True, aud=grant.aud,
                                              consume=True)  # fmt: skip
                    assert decision.allowed == (not grant.dead), (grant, decision)
                    if decision.allowed:
                        grant.uses += 1

    def revoke(self, grants: list[GrantTruth]) -> None:
        result = revoke(self.paths, ids=[g.id for g in grants], reason="seeded revoke",
                        now=self.now, keystore=self.keystore())  # fmt: skip
        for grant_id in result.revoked + result.already:
            self.truth.grants[grant_id].revoked = True

    def register(self) -> None:
        """A secret, an MCP server that gets it in a variable, and two routes that send it."""
        add_secret(self.paths, UPSTREAM, UPSTREAM_VALUES[0], now=self.now,
                   keystore=self.keystore())  # fmt: skip
        add_server(self.paths, "files", [shutil.which("echo") or "/bin/echo", "serving"],
                   secrets=[f"{UPSTREAM}=API_TOKEN"], resource_args=["read_file=path"],
                   roots=["/srv/files"], env=["MODE=ro"], now=self.now,
                   keystore=self.keystore())  # fmt: skip
        for name, url in (("api", "https://127.0.0.1:8443/v1"), ("legacy", "https://127.0.0.1:9")):
            add_route(self.paths, name, url, secret=UPSTREAM, now=self.now,
                      keystore=self.keystore())  # fmt: skip
        self.truth.registrations = registrations_meaning(load_config(self.paths))

    def reregister(self) -> None:
        """The secret's value replaced and the legacy route removed: an older config.toml
        brings the route back."""
        add_secret(self.paths, UPSTREAM, UPSTREAM_VALUES[1], replace=True, now=self.now,
                   keystore=self.keystore())  # fmt: skip
        remove_route(self.paths, "legacy", now=self.now, keystore=self.keystore())
        self.truth.registrations = registrations_meaning(load_config(self.paths))

    def decisions(self, count: int) -> None:
        """Plain verifies (group-committed decision records), varied so they do not coalesce."""
        grants = list(self.truth.grants.values())
        with Verifier(self.paths, self.keystore()) as verifier:
            for number in range(count):
                grant = self.rng.choice(grants)
                verifier.check(grant.token, [f"repo:read:acme/r{number}"], aud=grant.aud)
                if number % 7 == 6:
                    assert verifier.decisions is not None
                    verifier.decisions.flush()


APPROVAL_TIMEOUT = 4 * 3600  # the world's pending request stays pending through the harness


def approval_call(grant: str, content: str) -> tuple[Any, dict[str, Any]]:
    """The release-bot call an approval is about, and its arguments."""
    from nhidel.integrity.approvals import Call, canonical_sha256

    arguments = {"path": "/srv/release.txt", "content": content}
    return Call("release-bot", grant, "files", "write_file", ("/srv/release.txt",),
                canonical_sha256(arguments)), arguments  # fmt: skip


def approvals_grant(truth: Truth) -> str:
    """The grant every approval of the world is held under (release-bot's first)."""
    return next(g.id for g in truth.grants.values() if g.agent == "release-bot")


def build_approvals(b: Builder) -> None:
    """A one-time yes given and spent (a snapshot between the two), a no, a request waiting."""
    from nhidel.actions.approvals import GO, Choice, Desk, answer
    from nhidel.audit import AuditKeys
    from nhidel.ledger.store import Ledger

    grant = approvals_grant(b.truth)
    with Ledger(b.paths) as ledger:
        desk = Desk(b.paths, AuditKeys.of(b.keystore()), ledger, clock=lambda: b.now,
                    timeout=APPROVAL_TIMEOUT)  # fmt: skip

        def ask(content: str) -> Any:
            call, arguments = approval_call(grant, content)
            return desk.consider(call, via="mcp", mark="files:write_file:*", arguments=arguments)

        ids = {said: ask(said).request.id for said in ("spent", "denied", "pending")}
        answer(b.paths, b.keystore(), ids["denied"], Choice(False, reason="no"), now=b.now)
        answer(b.paths, b.keystore(), ids["spent"], Choice(True), now=b.now)
        b.truth.approvals = {
            "spent": ApprovalTruth(ids["spent"], "spent", "granted"),
            "denied": ApprovalTruth(ids["denied"], "denied", "denied"),
            "pending": ApprovalTruth(ids["pending"], "pending", "pending"),
        }
    b.snapshot("approved")
    with Ledger(b.paths) as ledger:
        desk.ledger = ledger
        assert ask("spent").outcome == GO
    b.truth.approvals["spent"] = ApprovalTruth(ids["spent"], "spent", "spent")


def build_world(
    home: Path, store: Path, seed: int, fake: MemoryKeyring, *, file_keystore: bool,
    rotating: bool, compromised_rotation: bool,
) -> World:  # fmt: skip
    """Build world `seed` at `home` (which must not exist), then copy it to `store`."""
    env = world_env(file_keystore, rotating)
    fake.entries.clear()
    with environment(env):
        b = Builder(home, seed, fake, env)
        init_principal(b.paths, b.keystore(), principal=f"alice{seed}", issuer=None, now=b.now)
        b.snapshot("init")
        b.add("reviewer")
        b.add("release-bot")
        b.register()
        b.snapshot("agents")
        first = [b.grant(b.rng.choice(["reviewer", "release-bot"])) for _ in range(5)]
        b.snapshot("issued")
        limited = [g for g in first if g.max_uses]
        b.consume(limited[:1], exhaust=True)
        b.consume(limited[1:] + first[:2], exhaust=False)
        b.snapshot("used")
        b.revoke(b.rng.sample(first, 2))
        b.decisions(12)
        b.snapshot("revoked")
        b.add("deployer")
        b.grant("deployer")
        b.snapshot("deployer")
        lost = b.grant("reviewer", NARROWED[1])
        b.narrow("reviewer", NARROWED[0])
        assert b.truth.grants[lost.id].revoked
        b.reregister()
        b.snapshot("narrowed")
        if compromised_rotation:
            rotation = rotate_key(b.paths, b.keystore(), now=b.now, compromised=True)
            b.truth.compromised.add(rotation.old_kid)
            for grant_id in rotation.revoked:
                b.truth.grants[grant_id].revoked = True
            b.snapshot("rotated")
        second = [b.grant(agent) for agent in ("reviewer", "release-bot", "deployer", "reviewer")]
        b.consume([g for g in second if g.max_uses][:1], exhaust=True)
        b.consume(second[1:3], exhaust=False)
        b.snapshot("second")
        build_approvals(b)
        if seed % 3 == 0:
            removal = remove_agent(b.paths, "deployer", now=b.now, keystore=b.keystore())
            del b.truth.ceilings["deployer"]
            for grant_id in removal.revoked:
                b.truth.grants[grant_id].revoked = True
            b.snapshot("removed")
        b.revoke([b.rng.choice([g for g in second if not g.dead] or second)])
        b.decisions(30 if rotating else 10)
        check_world(b)
        b.snapshot("final")
        audit_key = load_trust(b.keystore()).audit_key
    shutil.copytree(home, store, symlinks=True)
    return World(seed, file_keystore, rotating, compromised_rotation, env, store, b.snapshots,
                 audit_key)  # fmt: skip


def check_world(b: Builder) -> None:
    """The truth kept while building is what nhidel itself says, and the log is clean."""
    from nhidel.actions.audit_log import verify_log

    with Verifier(b.paths, b.keystore()) as verifier:
        for grant in b.truth.grants.values():
            decision = verifier.check(grant.token, any_scope=True, aud=grant.aud)
            assert decision.allowed == (not grant.dead), (grant, decision)
    assert registrations_meaning(load_config(b.paths)) == b.truth.registrations
    report = verify_log(b.paths, b.keystore())
    assert report.ok and not report.warnings, (report.problem, report.warnings)
    assert any(g.dead for g in b.truth.grants.values())
    assert any(not g.dead for g in b.truth.grants.values())
