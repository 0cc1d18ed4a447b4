"""Key rotation: old grants keep verifying until they expire; --now drops the old key at once."""

from __future__ import annotations

import json
import warnings

import pytest
from helpers.support import Cli, MemoryKeyring

import nhidel.cli.common
from nhidel.keys.keystore import SIGNING, TRUST

SCOPE = "repo:read:acme/api"


def mint(cli: Cli, *args: str) -> dict[str, str]:
    result = cli.ok("grant", "reviewer", "--scope", SCOPE, "--format", "json", *args)
    return dict(json.loads(result.stdout))


def verdict(cli: Cli, token: str) -> dict[str, object]:
    result = cli("verify", "-", "--scope", SCOPE, "--json", input=token)
    return dict(json.loads(result.stdout))


def jwks_kids(cli: Cli) -> set[str]:
    return {key["kid"] for key in json.loads(cli.ok("key", "export", "--jwks").stdout)["keys"]}


def entry(keyring: MemoryKeyring, name: str) -> dict[str, object]:
    (value,) = [v for (_, n), v in keyring.entries.items() if n == name]
    return dict(json.loads(value))


def test_grants_from_before_and_after_a_rotation_both_verify(ready: Cli) -> None:
    before = mint(ready)
    new_kid = ready.ok("key", "rotate").stdout.strip()
    after = mint(ready)
    assert before["kid"] != new_kid and after["kid"] == new_kid
    assert verdict(ready, before["token"])["allowed"] is True
    assert verdict(ready, after["token"])["allowed"] is True
    assert jwks_kids(ready) == {before["kid"], new_kid}


def test_the_old_private_key_leaves_the_keystore(ready: Cli, memory_keyring: MemoryKeyring) -> None:
    old = entry(memory_keyring, SIGNING)
    new_kid = ready.ok("key", "rotate").stdout.strip()
    new = entry(memory_keyring, SIGNING)
    assert new["kid"] == new_kid and new["private_key"] != old["private_key"]
    assert all(str(old["private_key"]) not in value for value in memory_keyring.entries.values())


def test_the_old_key_leaves_the_jwks_once_its_grants_have_expired(
    ready: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = nhidel.cli.common.now()
    old = mint(ready, "--ttl", "2m")
    new_kid = ready.ok("key", "rotate").stdout.strip()
    assert jwks_kids(ready) == {old["kid"], new_kid}
    monkeypatch.setattr(nhidel.cli.common, "now", lambda: start + 5 * 60)
    assert jwks_kids(ready) == {new_kid}
    states = {k["kid"]: k["state"] for k in json.loads(ready.ok("key", "show", "--json").stdout)}
    assert states == {old["kid"]: "expired", new_kid: "active"}
    # The next rotation drops it from the keystore, and the unused key goes at once.
    newest = ready.ok("key", "rotate").stdout.strip()
    shown = {k["kid"] for k in json.loads(ready.ok("key", "show", "--json").stdout)}
    assert shown == {newest}  # new_kid signed nothing, so it leaves at once too


def test_a_key_with_no_live_grants_leaves_at_once(ready: Cli) -> None:
    old_kid = json.loads(ready.ok("key", "show", "--json").stdout)[0]["kid"]
    new_kid = ready.ok("key", "rotate").stdout.strip()
    assert jwks_kids(ready) == {new_kid}
    assert old_kid != new_kid


def test_rotate_now_stops_every_grant_the_old_key_signed(
    ready: Cli, memory_keyring: MemoryKeyring
) -> None:
    old = mint(ready)
    result = ready.ok("key", "rotate", "--now", "--yes")
    new_kid = result.stdout.strip()
    assert "1 of its grants revoked" in result.stderr
    assert old["kid"] not in entry(memory_keyring, TRUST)["keys"]  # type: ignore[operator]
    assert jwks_kids(ready) == {new_kid}
    assert verdict(ready, old["token"])["reason"] == "unknown_key"
    shown = json.loads(ready.ok("show", old["id"], "--json").stdout)
    assert shown["status"] == "revoked"
    assert verdict(ready, mint(ready)["token"])["allowed"] is True


def test_rotation_is_audited_and_the_log_still_verifies(ready: Cli) -> None:
    mint(ready)
    ready.ok("key", "rotate")
    ready.ok("key", "rotate", "--now")
    records = [
        json.loads(line)
        for line in ready.ok(
            "audit", "tail", "--json", "-n", "50", "--event", "key.rotated"
        ).stdout.splitlines()
    ]
    assert [r["compromised"] for r in records] == [False, True]
    assert ready("audit", "verify").exit_code == 0


def test_a_second_jose_library_verifies_old_and_new_grants_after_rotation(ready: Cli) -> None:
    from joserfc import jwt
    from joserfc.jwk import KeySet

    before = mint(ready)
    ready.ok("key", "rotate")
    after = mint(ready)
    keys = KeySet.import_key_set(json.loads(ready.ok("key", "export", "--jwks").stdout))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc prefers "Ed25519" to "EdDSA" (RFC 9864)
        for grant in (before, after):
            decoded = jwt.decode(grant["token"], keys, algorithms=["EdDSA"])
            assert decoded.claims["jti"] == grant["id"]
