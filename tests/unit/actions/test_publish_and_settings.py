"""Status list indices, the status claim, `config`, `status publish` and `publish`."""

from __future__ import annotations

import base64
import json
import sqlite3
import stat
import warnings
import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers.support import Cli

from nhidel.actions.grants import GrantRequest, issue
from nhidel.actions.publish import Republished, republish
from nhidel.config import load_config
from nhidel.keys.keystore import open_keystore
from nhidel.ledger.store import SCHEMA_VERSION, Ledger
from nhidel.models import Grant, new_grant_id
from nhidel.paths import Paths
from nhidel.scopes import parse_scopes
from nhidel.tokens.claims import MAX_LEEWAY

URI = "https://status.example.com/nhidel/status.jwt"
SCOPE = "repo:read:acme/api"
T0 = 1_800_000_000


def _payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def independent_bits(lst: str) -> list[int]:
    """A decoder that shares nothing with nhidel: base64url, zlib, LSB-first bits."""
    raw = zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))
    return [(byte >> bit) & 1 for byte in raw for bit in range(8)]


def _grant(expires_at: int, status_idx: int | None, issued_at: int = T0) -> Grant:
    return Grant(
        id=new_grant_id(), agent="reviewer", scopes=parse_scopes([SCOPE]), aud=None,
        issued_at=issued_at, not_before=issued_at, expires_at=expires_at, max_uses=None,
        reason=None, kid="k", status_idx=status_idx,
    )  # fmt: skip


def _allocate(ledger: Ledger, *, now: int, expires_at: int) -> int:
    with ledger.transaction():
        idx = ledger.next_status_idx(reusable_before=now - MAX_LEEWAY)
        ledger.insert(_grant(expires_at, idx, issued_at=now), "0" * 64)
    return idx


# -- index allocation ---------------------------------------------------------------------


def test_indices_are_new_while_earlier_grants_could_still_be_live(paths: Paths) -> None:
    with Ledger(paths) as ledger:
        assert _allocate(ledger, now=T0, expires_at=T0 + 900) == 0
        assert _allocate(ledger, now=T0, expires_at=T0 + 900) == 1
        # Expired, but a verifier with the largest leeway still accepts it for an hour.
        late = T0 + 900 + MAX_LEEWAY - 1
        assert _allocate(ledger, now=late, expires_at=late + 900) == 2


def test_an_index_is_reused_once_its_grant_expired_over_the_largest_leeway_ago(
    paths: Paths,
) -> None:
    with Ledger(paths) as ledger:
        for _ in range(3):
            _allocate(ledger, now=T0, expires_at=T0 + 900)
        # Index 1's grant lives longer; 0 and 2 become free first, smallest first.
        with ledger.transaction():
            ledger.db.execute(
                "UPDATE grants SET expires_at = ? WHERE status_idx = 1", (T0 + 86400,)
            )
        later = T0 + 900 + MAX_LEEWAY
        assert _allocate(ledger, now=later, expires_at=later + 900) == 0
        assert _allocate(ledger, now=later, expires_at=later + 900) == 2
        assert _allocate(ledger, now=later, expires_at=later + 900) == 3


def test_a_reused_index_stays_taken_while_its_new_holder_is_live(paths: Paths) -> None:
    with Ledger(paths) as ledger:
        _allocate(ledger, now=T0, expires_at=T0 + 60)
        later = T0 + 60 + MAX_LEEWAY
        assert _allocate(ledger, now=later, expires_at=later + 60) == 0
        assert _allocate(ledger, now=later + 1, expires_at=later + 61) == 1


def test_issue_allocates_the_index_and_reuses_it_after_expiry_and_leeway(
    ready: Cli, paths: Paths
) -> None:
    keystore = open_keystore(paths, env={})
    request = GrantRequest(agent="reviewer", scopes=[SCOPE], ttl="15m")
    first, _ = issue(paths, keystore, request, now=T0)
    second, _ = issue(paths, keystore, request, now=T0 + 15 * 60 + MAX_LEEWAY - 1)
    third, _ = issue(paths, keystore, request, now=T0 + 15 * 60 + MAX_LEEWAY)
    assert (first.status_idx, second.status_idx, third.status_idx) == (0, 1, 0)
    with Ledger(paths) as ledger:
        stored = ledger.get(third.id)
    assert stored is not None and stored.status_idx == 0


# -- the status claim ---------------------------------------------------------------------


def test_a_token_carries_the_status_claim_only_when_a_status_uri_is_configured(
    ready: Cli,
) -> None:
    before = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    assert "status" not in _payload(before)
    ready.ok("config", "set", "status-uri", URI)
    after = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    assert _payload(after)["status"] == {"status_list": {"idx": 1, "uri": URI}}
    assert ready("verify", "-", "--scope", SCOPE, input=after).exit_code == 0
    ready.ok("config", "unset", "status-uri")
    last = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    assert "status" not in _payload(last)


# -- config -------------------------------------------------------------------------------


def test_config_set_status_uri_round_trips_through_config_toml(ready: Cli, paths: Paths) -> None:
    ready.ok("config", "set", "status-uri", URI)
    assert load_config(paths).status_uri == URI
    assert f'status_uri = "{URI}"' in paths.config_file.read_text()
    shown = json.loads(ready.ok("config", "show", "--json").stdout)
    assert shown == {"principal": "alice", "issuer": "nhidel:alice", "status_uri": URI,
                     "status_dir": None}  # fmt: skip
    assert f"status-uri: {URI}" in ready.ok("config", "show").stdout
    ready.ok("agent", "add", "other", "--allow", SCOPE)  # other edits keep it
    assert load_config(paths).status_uri == URI


@pytest.mark.parametrize(
    "uri",
    ["http://status.example.com/s.jwt", "ftp://example.com/s", "https://exa mple.com/s",
     "https:///s.jwt", "https://example.com/s\n", "status.jwt", "https://example.com/s#x"],
)  # fmt: skip
def test_config_set_refuses_a_status_uri_that_is_not_https(ready: Cli, uri: str) -> None:
    result = ready("config", "set", "status-uri", uri)
    assert result.exit_code == 2 and "invalid status URI" in result.stderr


def test_plain_http_is_allowed_for_localhost(ready: Cli, paths: Paths) -> None:
    ready.ok("config", "set", "status-uri", "http://localhost:8080/status.jwt")
    assert load_config(paths).status_uri == "http://localhost:8080/status.jwt"


def test_config_set_refuses_an_unknown_setting(ready: Cli) -> None:
    assert ready("config", "set", "colour", "blue").exit_code == 2


# -- status publish -----------------------------------------------------------------------


def test_status_publish_without_a_status_uri_is_a_usage_error_with_a_hint(
    ready: Cli, tmp_path: Path
) -> None:
    result = ready("status", "publish", "--out", str(tmp_path / "status.jwt"))
    assert result.exit_code == 2
    assert "no status URI" in result.stderr and "config set status-uri" in result.stderr
    assert not (tmp_path / "status.jwt").exists()


def _published_site(ready: Cli, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """Three grants, the middle one revoked, then `publish --out DIR`."""
    ready.ok("config", "set", "status-uri", URI)
    tokens = [ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip() for _ in range(3)]
    ids = [_payload(token)["jti"] for token in tokens]
    revoked = ready.ok("revoke", ids[1])
    assert "nhidel status publish --out" in revoked.stderr
    site = tmp_path / "site"
    ready.ok("publish", "--out", str(site), "--cache-ttl", "2m")
    return site, tokens, ids


def test_publish_writes_a_jwks_and_status_list_a_second_jose_library_verifies(
    ready: Cli, tmp_path: Path
) -> None:
    from joserfc import jwt
    from joserfc.jwk import KeySet

    site, tokens, _ = _published_site(ready, tmp_path)
    jwks = json.loads((site / "jwks.json").read_text())
    assert jwks == json.loads(ready.ok("key", "export", "--jwks").stdout)
    status_token = (site / "status.jwt").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc prefers "Ed25519" to "EdDSA" (RFC 9864)
        decoded = jwt.decode(status_token, KeySet.import_key_set(jwks), algorithms=["EdDSA"])
    assert decoded.header["typ"] == "statuslist+jwt"
    assert decoded.header["alg"] == "EdDSA" and decoded.header["kid"] == jwks["keys"][0]["kid"]
    claims = decoded.claims
    assert claims["sub"] == URI and claims["ttl"] == 120
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["status_list"]["bits"] == 1
    indices = [_payload(token)["status"]["status_list"]["idx"] for token in tokens]
    bits = independent_bits(claims["status_list"]["lst"])
    assert [bits[i] for i in indices] == [0, 1, 0]


def test_published_files_are_world_readable_and_the_directory_is_left_open(
    ready: Cli, tmp_path: Path
) -> None:
    site, _, _ = _published_site(ready, tmp_path)
    assert stat.S_IMODE(site.stat().st_mode) == 0o755
    for name in ("jwks.json", "status.jwt"):
        assert stat.S_IMODE((site / name).stat().st_mode) == 0o644
    assert sorted(p.name for p in site.iterdir()) == ["jwks.json", "status.jwt"]


def test_status_publish_writes_one_file_and_records_status_published(
    ready: Cli, tmp_path: Path
) -> None:
    ready.ok("config", "set", "status-uri", URI)
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    ready.ok("revoke", _payload(token)["jti"])
    out = tmp_path / "s.jwt"
    ready.ok("status", "publish", "--out", str(out), "--ttl", "30m")
    claims = _payload(out.read_text())
    assert claims["exp"] - claims["iat"] == 1800 and claims["ttl"] == 300
    assert independent_bits(claims["status_list"]["lst"])[0] == 1
    records = [
        json.loads(line)
        for line in ready.ok("audit", "tail", "--json", "--event", "status.published").stdout
        .splitlines()
    ]  # fmt: skip
    assert len(records) == 1 and records[0]["uri"] == URI and records[0]["revoked"] == 1
    assert ready("audit", "verify").exit_code == 0


def test_status_publish_refuses_a_cache_ttl_longer_than_the_ttl(ready: Cli, tmp_path: Path) -> None:
    ready.ok("config", "set", "status-uri", URI)
    result = ready("status", "publish", "--out", str(tmp_path / "s.jwt"), "--ttl", "5m",
                   "--cache-ttl", "10m")  # fmt: skip
    assert result.exit_code == 2 and "--cache-ttl" in result.stderr


def test_status_publish_into_a_missing_directory_says_so(ready: Cli, tmp_path: Path) -> None:
    ready.ok("config", "set", "status-uri", URI)
    result = ready("status", "publish", "--out", str(tmp_path / "nowhere" / "s.jwt"))
    assert result.exit_code == 2 and "not a directory" in result.stderr
    result = ready("status", "publish", "--out", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in result.stderr


def test_a_revoked_grant_long_expired_no_longer_marks_its_reused_index(
    ready: Cli, paths: Paths
) -> None:
    from nhidel.actions.publish import status_list_token
    from nhidel.keys.principal import load_signer

    ready.ok("config", "set", "status-uri", URI)
    keystore = open_keystore(paths, env={})
    request = GrantRequest(agent="reviewer", scopes=[SCOPE], ttl="15m")
    old, _ = issue(paths, keystore, request, now=T0)
    with Ledger(paths) as ledger, ledger.transaction():
        ledger.revoke([old.id], now=T0 + 1, reason=None)
    signer = load_signer(keystore)
    while_live = status_list_token(paths, signer, now=T0 + 15 * 60 + MAX_LEEWAY - 1)
    assert independent_bits(_payload(while_live.token)["status_list"]["lst"])[0] == 1
    later = T0 + 15 * 60 + MAX_LEEWAY
    new, _ = issue(paths, keystore, request, now=later)
    assert new.status_idx == old.status_idx == 0
    after = status_list_token(paths, signer, now=later)
    assert independent_bits(_payload(after.token)["status_list"]["lst"])[0] == 0
    assert after.size == 1


# -- the ledger schema --------------------------------------------------------------------

_V1_SCHEMA = """
CREATE TABLE grants (
    id TEXT PRIMARY KEY, agent TEXT NOT NULL, scope TEXT NOT NULL, aud TEXT,
    issued_at INTEGER NOT NULL, not_before INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    max_uses INTEGER, uses INTEGER NOT NULL DEFAULT 0, reason TEXT, kid TEXT NOT NULL,
    token_sha256 TEXT NOT NULL, revoked_at INTEGER, revoke_reason TEXT
);
CREATE INDEX grants_by_expiry ON grants (expires_at);
CREATE INDEX grants_by_agent ON grants (agent, expires_at);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta VALUES ('revocation_epoch', 0);
PRAGMA user_version = 1;
"""


def test_a_version_1_ledger_is_migrated_and_keeps_its_grants(paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    with sqlite3.connect(paths.ledger_file) as db:
        db.executescript(_V1_SCHEMA)
        db.execute(
            "INSERT INTO grants (id, agent, scope, issued_at, not_before, expires_at, kid, "
            "token_sha256) VALUES ('gold', 'reviewer', ?, ?, ?, ?, 'k', ?)",
            (SCOPE, T0, T0, T0 + 900, "0" * 64),
        )
    db.close()
    with Ledger(paths) as ledger:
        old = ledger.get("gold")
        assert old is not None and old.status_idx is None and old.expires_at == T0 + 900
        assert _allocate(ledger, now=T0, expires_at=T0 + 900) == 0
        version = ledger.db.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == 5
    with Ledger(paths) as again:  # opening a migrated ledger changes nothing
        assert again.get("gold") is not None


def test_a_ledger_from_a_newer_nhidel_is_refused(paths: Paths) -> None:
    from nhidel.errors import IntegrityError

    with Ledger(paths) as ledger:
        ledger.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(IntegrityError, match="schema version"):
        Ledger(paths)


# -- publishing by itself -----------------------------------------------------------------


def test_with_a_status_dir_revoke_publishes_the_list_itself(
    ready: Cli, tmp_path: Path, paths: Paths
) -> None:
    site = tmp_path / "www"
    ready.ok("config", "set", "status-uri", URI)
    ready.ok("config", "set", "status-dir", str(site))
    assert load_config(paths).status_dir == str(site)
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    assert not site.exists()
    result = ready.ok("revoke", _payload(token)["jti"])
    assert f"published jwks.json and status.jwt to {site}" in result.stderr
    assert "publish --out" not in result.stderr
    claims = _payload((site / "status.jwt").read_text())
    assert independent_bits(claims["status_list"]["lst"])[0] == 1
    assert json.loads((site / "jwks.json").read_text())["keys"]


def test_key_rotate_republishes_the_new_jwks_into_the_status_dir(
    ready: Cli, tmp_path: Path
) -> None:
    site = tmp_path / "www"
    ready.ok("config", "set", "status-uri", URI)
    ready.ok("config", "set", "status-dir", str(site))
    new_kid = ready.ok("key", "rotate").stdout.strip()
    assert new_kid in {key["kid"] for key in json.loads((site / "jwks.json").read_text())["keys"]}
    assert json.loads(base64.urlsafe_b64decode((site / "status.jwt").read_text().split(".")[0]
                                               + "=="))["kid"] == new_kid  # fmt: skip


def test_a_failed_republish_says_the_revocation_stands_and_how_to_mend_it(
    ready: Cli, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    ready.ok("config", "set", "status-uri", URI)
    ready.ok("config", "set", "status-dir", str(blocker / "www"))
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    result = ready("revoke", _payload(token)["jti"])
    assert result.exit_code == 1
    assert "done, but the status list could not be published" in result.stderr
    assert f"nhidel publish --out {blocker / 'www'}" in result.stderr
    shown = json.loads(ready.ok("show", _payload(token)["jti"], "--json").stdout)
    assert shown["status"] == "revoked"


def test_a_relative_status_dir_is_stored_absolute(
    ready: Cli, paths: Paths, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    ready.ok("config", "set", "status-dir", "site")
    assert load_config(paths).status_dir == str(tmp_path / "site")
    ready.ok("config", "unset", "status-dir")
    assert load_config(paths).status_dir is None


def test_republish_decides_from_the_sealed_settings_alone(
    ready: Cli, paths: Paths, tmp_path: Path
) -> None:
    keystore = open_keystore(paths)
    assert republish(paths, keystore, now=T0) == Republished()  # no status URI: nothing to do
    ready.ok("config", "set", "status-uri", URI)
    assert republish(paths, keystore, now=T0) == Republished(by_hand=True)
    site = tmp_path / "www"
    ready.ok("config", "set", "status-dir", str(site))
    assert republish(paths, keystore, now=T0) == Republished(site)
    assert sorted(p.name for p in site.iterdir()) == ["jwks.json", "status.jwt"]
