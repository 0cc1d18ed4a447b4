"""The grant ledger: id prefixes, revocation, atomic use counting, corruption, privacy."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.support import Cli

from nhidel.actions.agents import add_agent
from nhidel.actions.grants import GrantRequest, issue, revoke
from nhidel.actions.keys import init_principal
from nhidel.errors import ExitStatus, IntegrityError, NotFoundError, UsageError
from nhidel.keys.keystore import open_keystore
from nhidel.ledger.store import Ledger
from nhidel.models import Grant
from nhidel.paths import Paths
from nhidel.scopes import parse_scopes
from nhidel.tokens.jws import token_sha256

T = 1_795_428_000


def make_grant(
    grant_id: str,
    *,
    agent: str = "reviewer",
    max_uses: int | None = None,
    expires_at: int = T + 3600,
) -> Grant:
    return Grant(
        id=grant_id,
        agent=agent,
        scopes=parse_scopes(["repo:read:acme/api"]),
        aud=None,
        issued_at=T,
        not_before=T,
        expires_at=expires_at,
        max_uses=max_uses,
        reason=None,
        kid="kid",
    )


def gid(body: str) -> str:
    """A well-formed grant id: `g` then `body` padded to 26 base32 characters."""
    return "g" + body.ljust(26, "a")


@pytest.fixture
def ledger(paths: Paths) -> Iterator[Ledger]:
    with Ledger(paths) as opened:
        yield opened


def insert(ledger: Ledger, *grants: Grant) -> None:
    with ledger.transaction():
        for grant in grants:
            ledger.insert(grant, token_sha256(grant.id))


# -- prefix resolution ---------------------------------------------------------------------


def test_a_unique_four_character_prefix_resolves(ledger: Ledger) -> None:
    insert(ledger, make_grant(gid("bcd")), make_grant(gid("xyz")))
    assert [g.id for g in ledger.resolve(["gbcd"])] == [gid("bcd")]
    assert [g.id for g in ledger.resolve(["gxyz"])] == [gid("xyz")]


def test_prefix_resolution_is_case_insensitive(ledger: Ledger) -> None:
    insert(ledger, make_grant(gid("bcd")), make_grant(gid("xyz")))
    assert [g.id for g in ledger.resolve(["GBCD"])] == [gid("bcd")]
    assert [g.id for g in ledger.resolve(["gXyZ"])] == [gid("xyz")]


def test_full_id_resolves(ledger: Ledger) -> None:
    insert(ledger, make_grant(gid("bcd")), make_grant(gid("bcdz")))
    assert [g.id for g in ledger.resolve([gid("bcd")])] == [gid("bcd")]


@pytest.mark.parametrize("prefix", ["g", "gb", "gbc", "GBC", " gbc "])
def test_prefix_shorter_than_four_characters_is_a_usage_error(ledger: Ledger, prefix: str) -> None:
    insert(ledger, make_grant(gid("bcd")))
    with pytest.raises(UsageError) as caught:
        ledger.resolve([prefix])
    assert caught.value.exit_status == ExitStatus.USAGE


def test_ambiguous_prefix_lists_the_candidates_and_raises_not_found(ledger: Ledger) -> None:
    first, second = make_grant(gid("bcdq")), make_grant(gid("bcdr"), agent="deployer")
    insert(ledger, first, second, make_grant(gid("xyz")))
    with pytest.raises(NotFoundError) as caught:
        ledger.resolve(["gbcd"])
    message = caught.value.message
    assert "ambiguous" in message
    assert first.id[:10] in message and second.id[:10] in message
    assert "deployer" in message
    assert gid("xyz")[:10] not in message
    assert caught.value.exit_status == ExitStatus.NOT_FOUND


@pytest.mark.parametrize("prefix", ["gzzzz", "g234567", "abcd", "g-bc", "gbcd" + "a" * 30])
def test_unknown_prefix_raises_not_found(ledger: Ledger, prefix: str) -> None:
    insert(ledger, make_grant(gid("bcd")))
    with pytest.raises(NotFoundError):
        ledger.resolve([prefix])


def test_resolve_fails_as_a_whole_when_any_prefix_is_unknown(ledger: Ledger) -> None:
    insert(ledger, make_grant(gid("bcd")))
    with pytest.raises(NotFoundError, match="gzzzz"):
        ledger.resolve(["gbcd", "gzzzz"])


# -- revocation ----------------------------------------------------------------------------


def test_revoke_is_idempotent_and_keeps_the_first_revocation(ledger: Ledger) -> None:
    grant = make_grant(gid("bcd"))
    insert(ledger, grant)
    with ledger.transaction():
        assert ledger.revoke([grant.id], now=T + 1, reason="first") == [grant.id]
    with ledger.transaction():
        assert ledger.revoke([grant.id], now=T + 2, reason="second") == []
    stored = ledger.get(grant.id)
    assert stored is not None
    assert (stored.revoked_at, stored.revoke_reason) == (T + 1, "first")


def test_revoking_a_revoked_grant_through_grants_revoke_is_not_an_error(paths: Paths) -> None:
    keystore = open_keystore(paths, env={})
    init_principal(paths, keystore, principal="alice", issuer=None, now=T)
    add_agent(
        paths,
        "reviewer",
        allow=["repo:read:acme/*"],
        max_ttl="1h",
        default_ttl=None,
        audiences=[],
        now=T,
    )
    grant, _ = issue(paths, keystore, GrantRequest("reviewer", ["repo:read:acme/api"]), now=T)
    first = revoke(paths, ids=[grant.id[:6]], reason=None, now=T)
    second = revoke(paths, ids=[grant.id[:6]], reason=None, now=T)
    assert (first.revoked, first.already) == ([grant.id], [])
    assert (second.revoked, second.already) == ([], [grant.id])


# -- corruption ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"this is not a database\n" * 200, bytes(range(256)) * 16, b"\xff" * 100, b"SQLite format"],
)
def test_a_ledger_file_of_garbage_bytes_is_an_integrity_error(paths: Paths, garbage: bytes) -> None:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.ledger_file.write_bytes(garbage)
    with pytest.raises(IntegrityError) as caught:
        Ledger(paths).close()
    assert caught.value.exit_status == ExitStatus.INTEGRITY == 5
    assert str(paths.ledger_file) in caught.value.message


def test_a_corrupt_ledger_makes_the_cli_exit_5_with_one_line(ready: Cli, paths: Paths) -> None:
    paths.ledger_file.write_bytes(b"garbage" * 1000)
    for suffix in ("-wal", "-shm"):
        Path(f"{paths.ledger_file}{suffix}").unlink(missing_ok=True)
    result = ready("list")
    assert result.exit_code == 5
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


# -- privacy -------------------------------------------------------------------------------


def ledger_files(paths: Paths) -> list[Path]:
    candidates = [
        paths.ledger_file,
        Path(f"{paths.ledger_file}-wal"),
        Path(f"{paths.ledger_file}-shm"),
    ]
    return [p for p in candidates if p.exists()]


def test_ledger_files_are_0600_even_under_a_permissive_umask(paths: Paths) -> None:
    previous = os.umask(0o022)
    try:
        with Ledger(paths) as opened:
            insert(opened, make_grant(gid("bcd")))
            files = ledger_files(paths)
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    finally:
        os.umask(previous)
    assert len(files) == 3, "expected the database and its -wal and -shm files"
    assert modes == {p.name: 0o600 for p in files}


def test_the_token_itself_is_never_stored_only_its_hash(paths: Paths) -> None:
    keystore = open_keystore(paths, env={})
    init_principal(paths, keystore, principal="alice", issuer=None, now=T)
    add_agent(
        paths,
        "reviewer",
        allow=["repo:read:acme/*"],
        max_ttl="1h",
        default_ttl=None,
        audiences=[],
        now=T,
    )
    grant, token = issue(paths, keystore, GrantRequest("reviewer", ["repo:read:acme/api"]), now=T)
    with Ledger(paths) as opened:
        found = opened.lookup(grant.id)
        contents = b"".join(p.read_bytes() for p in ledger_files(paths))
    assert found is not None and found[1] == token_sha256(token)
    assert grant.id.encode() in contents  # the bytes searched do hold the grant's row
    for secret in (token, *token.split(".")):
        assert secret.encode() not in contents
