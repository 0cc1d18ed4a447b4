"""The real CLI, as separate processes, against a real Secret Service (gnome-keyring).

Each test has its own NHIDEL_HOME, hence its own keyring service name, so tests can share one
daemon. Tests that lock or empty the keyring get a daemon of their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers.keyring_service import (  # noqa: F401 - fixtures are used by name
    keyring_delete,
    keyring_env,
    keyring_get,
    lock_default_collection,
    private_secret_service,
    secret_service,
)
from helpers.processes import assert_clean_error, claims_of, isolated_env, list_all, ok, run

SCOPE = "repo:read:acme/api"


def service_name(env: dict[str, str]) -> str:
    """The keyring service nhidel uses for this home (SPEC: "nhidel:<config dir>")."""
    return f"nhidel:{Path(env['NHIDEL_HOME']).absolute()}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def rfc7638_kid(x: str) -> str:
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


def stored_signing_entry(env: dict[str, str]) -> dict[str, Any]:
    raw = keyring_get(env, service_name(env), "signing")
    assert raw is not None, "no signing entry in the Secret Service"
    entry: dict[str, Any] = json.loads(raw)
    return entry


@pytest.fixture
def env(secret_service: dict[str, str], tmp_path: Path) -> dict[str, str]:  # noqa: F811
    return keyring_env(secret_service, isolated_env(tmp_path))


@pytest.fixture
def ready(env: dict[str, str]) -> dict[str, str]:
    """A principal (alice) whose key is in the Secret Service, and one agent (reviewer)."""
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    return env


def grant(env: dict[str, str], *scopes: str) -> tuple[str, str]:
    """Mint a grant for reviewer; return (token, grant id)."""
    args = [arg for scope in scopes or (SCOPE,) for arg in ("--scope", scope)]
    token = ok(env, "grant", "reviewer", *args, "--ttl", "15m").stdout.strip()
    return token, claims_of(token)["jti"]


pytestmark = pytest.mark.keyring


def test_init_prints_kid_and_public_key_only(env: dict[str, str]) -> None:
    result = ok(env, "init", "--principal", "alice")
    first, *pem = result.stdout.splitlines()
    assert first.startswith("kid: ")
    assert pem[0] == "-----BEGIN PUBLIC KEY-----" and pem[-1] == "-----END PUBLIC KEY-----"
    assert "PRIVATE" not in result.stdout + result.stderr
    public = serialization.load_pem_public_key("\n".join(pem).encode())
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert first == f"kid: {rfc7638_kid(b64url(raw))}"


def test_init_puts_the_private_key_in_the_secret_service_and_in_no_file(
    env: dict[str, str],
) -> None:
    printed = ok(env, "init", "--principal", "alice").stdout
    entry = stored_signing_entry(env)
    seed = base64.b64decode(entry["private_key"])
    assert len(seed) == 32
    # The stored secret is the key whose public half init printed.
    public_pem = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert public_pem in printed
    assert f"kid: {entry['kid']}" in printed
    forms = [seed, seed.hex().encode(), base64.b64encode(seed).rstrip(b"="), b64url(seed).encode()]
    home = Path(env["NHIDEL_HOME"])
    files = [path for path in home.rglob("*") if path.is_file()]
    assert files, "nhidel wrote no files at all?"
    for path in files:
        content = path.read_bytes()
        assert not any(form in content for form in forms), f"private key material in {path}"


def test_init_twice_refuses_and_keeps_the_first_key(env: dict[str, str]) -> None:
    ok(env, "init", "--principal", "alice")
    before = stored_signing_entry(env)
    stderr = assert_clean_error(run(env, "init", "--principal", "alice"), 6)
    assert "already exists" in stderr
    assert stored_signing_entry(env) == before


def test_grant_prints_the_token_alone_and_one_summary_line(ready: dict[str, str]) -> None:
    result = ok(ready, "grant", "reviewer", "--scope", SCOPE, "--ttl", "15m")
    assert result.stdout.count("\n") == 1
    token = result.stdout.strip()
    assert token.count(".") == 2 and " " not in token
    claims = claims_of(token)
    assert claims["act"] == {"sub": "reviewer"} and claims["scope"] == SCOPE
    assert claims["exp"] - claims["nbf"] == 15 * 60
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"granted {claims['jti'][:10]} to reviewer")


def test_list_json_and_show_describe_the_grant(ready: dict[str, str]) -> None:
    _, grant_id = grant(ready)
    (listed,) = json.loads(ok(ready, "list", "--json").stdout)
    assert listed["id"] == grant_id
    assert listed["agent"] == "reviewer"
    assert listed["scopes"] == [SCOPE]
    assert listed["status"] == "active"
    assert listed["uses"] == 0 and listed["max_uses"] is None
    shown = json.loads(ok(ready, "show", grant_id[:10].upper(), "--json").stdout)
    assert shown == listed
    assert grant_id in ok(ready, "show", grant_id[:6]).stdout


def test_verify_allows_the_token_from_stdin_and_from_the_variable(ready: dict[str, str]) -> None:
    token, grant_id = grant(ready)
    from_stdin = run(ready, "verify", "-", "--scope", SCOPE, input=token + "\n")
    assert from_stdin.code == 0, str(from_stdin)
    assert grant_id[:10] in from_stdin.stderr
    from_variable = run({**ready, "NHIDEL_TOKEN": token}, "verify", "--scope", SCOPE, "--json")
    assert from_variable.code == 0, str(from_variable)
    decision = json.loads(from_variable.stdout)
    assert decision["allowed"] is True and decision["reason"] is None
    assert decision["grant"]["id"] == grant_id


def test_verify_of_a_scope_never_granted_exits_1_with_the_reason(ready: dict[str, str]) -> None:
    token, _ = grant(ready)
    denied = run(ready, "verify", "-", "--scope", "repo:write:acme/api", input=token)
    assert denied.code == 1, str(denied)
    assert "scope_not_granted" in denied.stderr
    as_json = run(ready, "verify", "-", "--scope", "repo:read:acme/other", "--json", input=token)
    assert as_json.code == 1, str(as_json)
    assert json.loads(as_json.stdout)["reason"] == "scope_not_granted"


def test_revoked_grant_no_longer_verifies(ready: dict[str, str]) -> None:
    token, grant_id = grant(ready)
    ok(ready, "revoke", grant_id[:8], "--reason", "test")
    denied = run(ready, "verify", "-", "--scope", SCOPE, "--json", input=token)
    assert denied.code == 1, str(denied)
    assert json.loads(denied.stdout)["reason"] == "revoked"
    assert "revoked" in denied.stderr
    assert json.loads(ok(ready, "list", "--json").stdout) == []
    (row,) = list_all(ready)
    assert row["status"] == "revoked" and row["revoke_reason"] == "test"


def test_key_show_and_export_print_public_material_only(ready: dict[str, str]) -> None:
    entry = stored_signing_entry(ready)
    seed = base64.b64decode(entry["private_key"])
    secret_forms = [entry["private_key"], b64url(seed), seed.hex()]
    shown = ok(ready, "key", "show")
    assert entry["kid"] in shown.stdout and "active" in shown.stdout
    jwks = json.loads(ok(ready, "key", "export", "--jwks").stdout)
    (jwk,) = jwks["keys"]
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["kid"] == entry["kid"]
    assert "d" not in jwk
    assert rfc7638_kid(jwk["x"]) == entry["kid"]
    pem = ok(ready, "key", "export").stdout
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    for result_text in (shown.stdout + shown.stderr, json.dumps(jwks), pem):
        assert not any(form in result_text for form in secret_forms)


def test_locked_keyring_is_exit_4_with_one_line_and_issues_nothing(
    private_secret_service: dict[str, str],  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    env = keyring_env(private_secret_service, isolated_env(tmp_path))
    ok(env, "init", "--principal", "alice")
    ok(env, "agent", "add", "reviewer", "--allow", "repo:read:acme/*")
    assert lock_default_collection(env)
    started = time.monotonic()
    stderr = assert_clean_error(run(env, "grant", "reviewer", "--scope", SCOPE, timeout=30), 4)
    # gnome-keyring answers the unlock prompt with "dismissed" when no prompter can run.
    assert time.monotonic() - started < 20
    assert "error: the OS keyring is locked" in stderr
    assert "unlock" in stderr.splitlines()[1]
    assert list_all(env) == []
    assert "locked" in assert_clean_error(run(env, "key", "show"), 4)


@pytest.mark.parametrize(
    "bus",
    [None, "unix:path=/nonexistent/nhidel-test-bus"],
    ids=["no-bus-variable", "bus-socket-missing"],
)
def test_no_os_keyring_is_exit_4_and_points_to_the_file_keystore(
    tmp_path: Path, bus: str | None
) -> None:
    env = isolated_env(tmp_path)
    if bus is not None:
        env["DBUS_SESSION_BUS_ADDRESS"] = bus
    stderr = assert_clean_error(run(env, "init", "--principal", "alice"), 4)
    assert "NHIDEL_KEYSTORE=file" in stderr.splitlines()[1]
    assert not (Path(env["NHIDEL_HOME"]) / "config.toml").exists()


def test_grant_on_a_fresh_home_is_exit_4_with_the_init_hint(env: dict[str, str]) -> None:
    stderr = assert_clean_error(run(env, "grant", "reviewer", "--scope", SCOPE), 4)
    assert "nhidel init" in stderr.splitlines()[1]


def test_grant_when_the_key_left_the_keyring_is_exit_4_with_the_init_hint(
    ready: dict[str, str],
) -> None:
    keyring_delete(ready, service_name(ready), "signing")
    stderr = assert_clean_error(run(ready, "grant", "reviewer", "--scope", SCOPE), 4)
    assert "no signing key" in stderr
    assert "nhidel init" in stderr.splitlines()[1]
    assert list_all(ready) == []
