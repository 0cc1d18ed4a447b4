"""The security promises: no secret leaks, verify trusts only pinned keys, tokens are standard."""

from __future__ import annotations

import base64
import json
import sqlite3
import warnings
from pathlib import Path

import pytest
import tomli_w
from helpers.support import Cli, MemoryKeyring

from nhidel.base64url import b64url_encode
from nhidel.keys.keystore import SIGNING, TRUST, open_keystore
from nhidel.keys.material import generate_private_key, public_x, thumbprint
from nhidel.paths import Paths
from nhidel.tokens.jws import mint, token_sha256


def private_key_forms(seed: bytes) -> list[bytes]:
    """Every spelling of the private key a careless program might write."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    key = Ed25519PrivateKey.from_private_bytes(seed)
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    pem_body = b"".join(pem.splitlines()[1:-1])
    return [
        seed,
        der,
        pem,
        pem_body,
        base64.b64encode(seed),
        base64.b64encode(seed).rstrip(b"="),
        b64url_encode(seed).encode(),
        base64.urlsafe_b64encode(seed),
        seed.hex().encode(),
        seed.hex().upper().encode(),
    ]


def signing_seed() -> bytes:
    """The private key, read back through whichever keystore the environment selects."""
    entry = open_keystore(Paths.from_env()).read(SIGNING)
    assert entry is not None
    return base64.b64decode(entry["private_key"])


@pytest.fixture(params=["keyring", "file"])
def keystore_kind(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    if request.param == "file":
        passphrase = tmp_path / "passphrase"
        passphrase.write_text("leak-test passphrase")
        monkeypatch.setenv("NHIDEL_KEYSTORE", "file")
        monkeypatch.setenv("NHIDEL_PASSPHRASE_FILE", str(passphrase))
    return str(request.param)


def every_file(home: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in home.rglob("*") if path.is_file()}


def test_no_private_key_or_token_leaks_into_files_or_output(
    keystore_kind: str, cli: Cli, nhidel_home: Path
) -> None:
    ready = cli
    outputs = [cli.ok("init", "--principal", "alice").stdout]
    outputs.append(
        cli.ok(
            "agent",
            "add",
            "reviewer",
            "--allow",
            "repo:read:acme/*",
            "--allow",
            "ticket:create:queue/*",
        ).stderr
    )
    tokens = []
    for scope in ("repo:read:acme/a", "repo:read:acme/b", "ticket:create:queue/x"):
        result = ready.ok("grant", "reviewer", "--scope", scope, "--reason", "leak test")
        tokens.append(result.stdout.strip())
        outputs += [result.stderr]
    for args in (
        ("list",),
        ("list", "--json", "--all"),
        ("key", "show"),
        ("key", "export"),
        ("key", "export", "--jwks"),
        ("agent", "list"),
        ("agent", "show", "reviewer"),
    ):
        result = ready.ok(*args)
        outputs += [result.stdout, result.stderr]
    for token in tokens:
        result = ready("verify", "-", "--scope", "repo:read:acme/a", "--json", input=token)
        outputs += [result.stdout, result.stderr]
    grant_id = json.loads(ready.ok("list", "--json").stdout)[0]["id"]
    outputs += [
        ready.ok("show", grant_id).stdout,
        ready.ok("revoke", grant_id).stderr,
        ready.ok("revoke", "--all", "--yes").stderr,
    ]

    forms = private_key_forms(signing_seed())
    assert len(forms[0]) == 32
    files = every_file(nhidel_home)
    assert files, "nhidel wrote no files?"
    printed = "".join(outputs).encode()
    for form in forms:
        assert form not in printed
        for path, content in files.items():
            assert form not in content, f"private key form found in {path}"
    for token in tokens:
        signature = token.rsplit(".", 1)[1].encode()
        for path, content in files.items():
            assert token.encode() not in content, f"token stored in {path}"
            assert signature not in content, f"token signature stored in {path}"


def test_files_are_private(ready: Cli, nhidel_home: Path) -> None:
    ready.ok("grant", "reviewer", "--scope", "repo:read:acme/a")
    assert nhidel_home.stat().st_mode & 0o777 == 0o700
    for path in every_file(nhidel_home):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_verify_ignores_a_key_planted_in_every_file_nhidel_keeps(
    ready: Cli, nhidel_home: Path
) -> None:
    """Someone who can write nhidel's files but not the keystore cannot get a token trusted."""
    honest = json.loads(
        ready.ok("grant", "reviewer", "--scope", "repo:read:acme/a", "--format", "json").stdout
    )
    seed = generate_private_key()
    x = public_x(seed)
    kid = thumbprint(x)
    forged_id = "g" + "a" * 26
    claims = {
        **{k: v for k, v in _claims_of(honest["token"]).items()},
        "jti": forged_id,
        "scope": "repo:*:*",
    }
    forged = mint(claims, seed, kid)

    # config.toml: add the key as if nhidel had made it.
    config_path = nhidel_home / "config.toml"
    import tomllib

    config = tomllib.loads(config_path.read_text())
    config["keys"][kid] = {"x": x, "created_at": "2026-01-01T00:00:00Z"}
    config_path.write_text(tomli_w.dumps(config))
    # The ledger: a row for the forged grant, with the right token hash.
    with sqlite3.connect(nhidel_home / "ledger.db") as db:
        row = db.execute("SELECT * FROM grants WHERE id = ?", (honest["id"],)).fetchone()
        columns = [d[0] for d in db.execute("SELECT * FROM grants").description]
        values = dict(zip(columns, row, strict=True))
        values.update(id=forged_id, kid=kid, token_sha256=token_sha256(forged), scope="repo:*:*")
        db.execute(
            f"INSERT INTO grants ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            list(values.values()),
        )
    # The lock files too (appending to the audit log is tampering that is reported as exit 5).
    for path in every_file(nhidel_home):
        if path.suffix == ".lock":
            with path.open("a") as handle:
                handle.write(json.dumps({"kid": kid, "x": x}) + "\n")

    result = ready("verify", "-", "--scope", "repo:write:acme/a", "--json", input=forged)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["reason"] == "unknown_key"
    # ...while the honest token still verifies: the denial is about the key, not a broken home.
    assert ready("verify", honest["token"], "--scope", "repo:read:acme/a").exit_code == 0


def test_the_pinned_trust_entry_is_what_verify_reads(
    ready: Cli, memory_keyring: MemoryKeyring
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", "repo:read:acme/a").stdout.strip()
    (service, _), entry = next((k, v) for k, v in memory_keyring.entries.items() if k[1] == TRUST)
    trust = json.loads(entry)
    trust["keys"] = {}
    memory_keyring.entries[(service, TRUST)] = json.dumps(trust)
    result = ready("verify", token, "--any-scope", "--json")
    # Trusting no key, verify allows nothing; that the pins and the sealed state disagree is
    # an integrity failure of its own.
    assert result.exit_code == 5 and json.loads(result.stdout)["reason"] == "integrity"


def _claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_pyjwt_verifies_tokens_and_rejects_a_wrong_key(ready: Cli) -> None:
    """nhidel builds its JWS by hand; PyJWT, a third implementation, must agree with it."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    token = ready.ok(
        "grant",
        "reviewer",
        "--scope",
        "repo:read:acme/api",
        "--uses",
        "2",
        "--reason",
        'caf\u00e9 "quoted"',
    ).stdout.strip()
    jwks = json.loads(ready.ok("key", "export", "--jwks").stdout)
    key = jwt.PyJWK.from_dict(jwks["keys"][0])
    assert jwt.get_unverified_header(token) == {
        "alg": "EdDSA",
        "kid": jwks["keys"][0]["kid"],
        "typ": "nhidel+jwt",
    }
    claims = jwt.decode(token, key, algorithms=["EdDSA"], options={"verify_aud": False})
    assert claims["act"] == {"sub": "reviewer"} and claims["max_uses"] == 2
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other, algorithms=["EdDSA"])


def test_a_second_jose_library_verifies_tokens_with_the_exported_jwks(ready: Cli) -> None:
    """joserfc shares no code with nhidel's verifier: the token is a standard EdDSA JWT."""
    from joserfc import jwt
    from joserfc.jwk import KeySet

    token = ready.ok(
        "grant", "reviewer", "--scope", "repo:read:acme/api", "--aud", "api.acme.test"
    ).stdout.strip()
    jwks = json.loads(ready.ok("key", "export", "--jwks").stdout)
    assert all(set(key) >= {"kty", "crv", "x", "kid"} and "d" not in key for key in jwks["keys"])
    with warnings.catch_warnings():
        # joserfc warns that RFC 9864 prefers "Ed25519" to "EdDSA"; SPEC.md fixes EdDSA.
        warnings.simplefilter("ignore")
        decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["EdDSA"])
    assert decoded.header["typ"] == "nhidel+jwt"
    assert decoded.header["kid"] == jwks["keys"][0]["kid"]
    claims = decoded.claims
    assert claims["sub"] == "alice" and claims["iss"] == "nhidel:alice"
    assert claims["act"] == {"sub": "reviewer"}
    assert claims["scope"] == "repo:read:acme/api" and claims["aud"] == "api.acme.test"
    assert claims["exp"] - claims["nbf"] == 15 * 60
    assert claims["jti"].startswith("g") and len(claims["jti"]) == 27

    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with warnings.catch_warnings(), pytest.raises(Exception):  # noqa: B017
        warnings.simplefilter("ignore")
        jwt.decode(tampered, KeySet.import_key_set(jwks), algorithms=["EdDSA"])
