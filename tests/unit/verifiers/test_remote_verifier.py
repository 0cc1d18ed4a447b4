"""Remote verification: only a published JWKS (and status list), no ledger, no keystore."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.support import Cli, MemoryKeyring

from nhidel.base64url import b64url_encode
from nhidel.keys.material import generate_private_key, public_jwk, public_x
from nhidel.verifiers.remote import RemoteVerifier

SCOPE = "repo:read:acme/api"


@pytest.fixture
def published(ready: Cli, tmp_path: Path) -> Path:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(ready.ok("key", "export", "--jwks").stdout)
    return jwks


def remote(cli: Cli, token: str, *args: str) -> tuple[int, dict[str, object]]:
    result = cli("verify", "-", "--scope", SCOPE, "--json", *args, input=token)
    return result.exit_code, dict(json.loads(result.stdout)) if result.stdout else {}


def test_a_grant_verifies_with_only_the_published_jwks(
    ready: Cli, published: Path, memory_keyring: MemoryKeyring, nhidel_home: Path
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    memory_keyring.entries.clear()  # no keystore on the remote machine
    (nhidel_home / "ledger.db").unlink()  # and no ledger
    code, verdict = remote(ready, token, "--jwks", str(published))
    assert code == 0 and verdict["allowed"] is True
    code, verdict = remote(ready, token[:-3] + "AAA", "--jwks", str(published))
    assert code == 1 and verdict["reason"] == "bad_signature"


def test_scopes_audience_and_issuer_are_checked_remotely(ready: Cli, published: Path) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE, "--aud", "api.test").stdout.strip()
    assert remote(ready, token, "--jwks", str(published))[1]["reason"] == "wrong_audience"
    ok = remote(ready, token, "--jwks", str(published), "--aud", "api.test", "--iss",
                "nhidel:alice")  # fmt: skip
    assert ok[0] == 0
    wrong = remote(ready, token, "--jwks", str(published), "--aud", "api.test", "--iss", "x")
    assert wrong[1]["reason"] == "wrong_issuer"
    result = ready("verify", "-", "--scope", "repo:write:acme/api", "--aud", "api.test",
                   "--jwks", str(published), "--json", input=token)  # fmt: skip
    assert json.loads(result.stdout)["reason"] == "scope_not_granted"


def test_a_grant_with_a_use_limit_is_denied_remotely(ready: Cli, published: Path) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE, "--uses", "3").stdout.strip()
    code, verdict = remote(ready, token, "--jwks", str(published))
    assert code == 1 and verdict["reason"] == "status_unavailable"


def test_a_status_list_without_a_status_claim_is_a_denial(
    ready: Cli, published: Path, tmp_path: Path
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    code, verdict = remote(ready, token, "--jwks", str(published), "--status-list",
                           str(tmp_path / "status.jwt"))  # fmt: skip
    assert code == 1 and verdict["reason"] == "status_unavailable"


@pytest.mark.parametrize("bad_key", [
    {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
    {"kty": "RSA", "n": "sXch", "e": "AQAB", "kid": "rsa"},
    {"kty": "OKP", "crv": "Ed25519", "x": "not-a-key", "kid": "x"},
])  # fmt: skip
def test_a_jwks_with_any_other_key_is_refused_whole(
    ready: Cli, published: Path, bad_key: dict[str, str]
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    jwks = json.loads(published.read_text())
    jwks["keys"].append(bad_key)
    published.write_text(json.dumps(jwks))
    code, verdict = remote(ready, token, "--jwks", str(published))
    assert code == 1 and verdict["reason"] == "unknown_key"


def test_a_jwks_whose_kid_is_not_the_thumbprint_is_refused(ready: Cli, published: Path) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    jwks = json.loads(published.read_text())
    real_kid = jwks["keys"][0]["kid"]
    other = public_jwk(public_x(generate_private_key()))
    jwks["keys"] = [{**other, "kid": real_kid}]  # another key posing under the real kid
    published.write_text(json.dumps(jwks))
    assert remote(ready, token, "--jwks", str(published))[1]["reason"] == "unknown_key"


def test_a_jwks_with_a_private_key_is_refused(ready: Cli, published: Path) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    jwks = json.loads(published.read_text())
    jwks["keys"][0]["d"] = b64url_encode(b"\0" * 32)
    published.write_text(json.dumps(jwks))
    assert remote(ready, token, "--jwks", str(published))[1]["reason"] == "unknown_key"


def test_an_unreachable_jwks_url_is_a_denial_not_an_error(ready: Cli) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    code, verdict = remote(ready, token, "--jwks", "http://127.0.0.1:9/jwks.json")
    assert code == 1 and verdict["reason"] == "unknown_key"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A local static host for tmp_path; yields its base URL and the paths requested."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requested
    server.shutdown()
    server.server_close()


def test_the_jwks_is_fetched_over_http_once_and_cached(
    ready: Cli, published: Path, serve: tuple[str, list[str]]
) -> None:
    base, requested = serve
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    verifier = RemoteVerifier(f"{base}/{published.name}")
    for _ in range(3):
        assert verifier.check(token, [SCOPE]).allowed
    assert requested == [f"/{published.name}"]


def test_remote_flags_need_jwks_and_exclude_consume(ready: Cli, published: Path) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    assert ready("verify", "-", "--any-scope", "--status-list", "x", input=token).exit_code == 2
    assert ready("verify", "-", "--any-scope", "--consume", "--jwks", str(published),
                 input=token).exit_code == 2  # fmt: skip


# -- with the published status list -------------------------------------------------------

URI = "https://keys.example.test/nhidel/status.jwt"


@pytest.fixture
def site(ready: Cli, tmp_path: Path) -> Path:
    ready.ok("config", "set", "status-uri", URI)
    return tmp_path / "site"


def publish(cli: Cli, site: Path, *args: str) -> None:
    cli.ok("publish", "--out", str(site), *args)


def bundle_verdict(cli: Cli, site: Path, token: str) -> tuple[int, dict[str, object]]:
    return remote(cli, token, "--jwks", str(site / "jwks.json"), "--status-list",
                  str(site / "status.jwt"))  # fmt: skip


def test_a_revoked_grant_is_denied_by_a_verifier_that_sees_only_the_bundle(
    ready: Cli, site: Path, memory_keyring: MemoryKeyring, nhidel_home: Path
) -> None:
    kept = json.loads(ready.ok("grant", "reviewer", "--scope", SCOPE, "--format",
                               "json").stdout)  # fmt: skip
    gone = json.loads(ready.ok("grant", "reviewer", "--scope", SCOPE, "--format",
                               "json").stdout)  # fmt: skip
    ready.ok("revoke", gone["id"])
    publish(ready, site)
    # The remote machine: the bundle only.
    memory_keyring.entries.clear()
    for path in nhidel_home.iterdir():
        path.unlink()
    assert bundle_verdict(ready, site, kept["token"])[0] == 0
    code, verdict = bundle_verdict(ready, site, gone["token"])
    assert code == 1 and verdict["reason"] == "revoked"


def test_a_tampered_status_list_is_status_unavailable(ready: Cli, site: Path) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    publish(ready, site)
    listed = (site / "status.jwt").read_text().strip()
    head, payload, signature = listed.split(".")
    claims = json.loads(__import__("base64").urlsafe_b64decode(payload + "=="))
    claims["status_list"]["lst"] = "eNrbuRgAAhcBXQ"  # someone else's bits
    forged = b64url_encode(json.dumps(claims).encode())
    (site / "status.jwt").write_text(f"{head}.{forged}.{signature}")
    code, verdict = bundle_verdict(ready, site, token)
    assert code == 1 and verdict["reason"] == "status_unavailable"


def test_a_status_list_signed_by_an_unknown_key_is_status_unavailable(
    ready: Cli, site: Path, tmp_path: Path
) -> None:
    from nhidel.tokens.jws import mint
    from nhidel.tokens.statuslist import encode

    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    publish(ready, site)
    seed = generate_private_key()
    now = int(__import__("time").time())
    claims = {"sub": URI, "iat": now, "exp": now + 600, "ttl": 60,
              "status_list": {"bits": 1, "lst": encode([0] * 8, 1)}}  # fmt: skip
    from nhidel.keys.material import thumbprint

    x = public_x(seed)
    (site / "status.jwt").write_text(mint(claims, seed, thumbprint(x), typ="statuslist+jwt"))
    code, verdict = bundle_verdict(ready, site, token)
    assert code == 1 and verdict["reason"] == "status_unavailable"


def test_an_expired_status_list_is_status_unavailable(
    ready: Cli, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE, "--ttl", "1h").stdout.strip()
    publish(ready, site, "--ttl", "10m", "--cache-ttl", "1m")
    clock = __import__("time").time() + 30 * 60
    verifier = RemoteVerifier(str(site / "jwks.json"), str(site / "status.jwt"),
                              clock=lambda: clock)  # fmt: skip
    decision = verifier.check(token, [SCOPE])
    assert not decision.allowed and decision.reason == "status_unavailable"


def test_a_status_list_url_that_fails_is_status_unavailable(ready: Cli, site: Path) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    publish(ready, site)
    code, verdict = remote(ready, token, "--jwks", str(site / "jwks.json"), "--status-list",
                           "http://127.0.0.1:9/status.jwt")  # fmt: skip
    assert code == 1 and verdict["reason"] == "status_unavailable"


def test_the_bundle_over_http_serves_remote_verification(
    ready: Cli, site: Path, tmp_path: Path, serve: tuple[str, list[str]]
) -> None:
    base, requested = serve
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    publish(ready, site)
    verifier = RemoteVerifier(f"{base}/site/jwks.json", f"{base}/site/status.jwt")
    assert verifier.check(token, [SCOPE]).allowed
    assert verifier.check(token, [SCOPE]).allowed
    assert sorted(requested) == ["/site/jwks.json", "/site/status.jwt"]  # each fetched once


def test_a_verifier_with_an_old_jwks_refetches_it_after_a_rotation(
    ready: Cli, site: Path, serve: tuple[str, list[str]]
) -> None:
    base, requested = serve
    before = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    publish(ready, site)
    clock = [__import__("time").time()]
    verifier = RemoteVerifier(f"{base}/site/jwks.json", f"{base}/site/status.jwt",
                              clock=lambda: clock[0])  # fmt: skip
    assert verifier.check(before, [SCOPE]).allowed
    ready.ok("key", "rotate")
    after = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    publish(ready, site)
    # Within seconds of the last fetch an unknown kid does not trigger another one...
    assert verifier.check(after, [SCOPE]).reason == "unknown_key"
    clock[0] += 15  # ...later it does, well before the cached JWKS would expire.
    assert verifier.check(after, [SCOPE]).allowed
    assert requested.count("/site/jwks.json") == 2


# -- found by review: transport, odd documents ---------------------------------------------


def test_a_jwks_over_plain_http_to_another_host_is_refused_before_fetching(ready: Cli) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    result = ready("verify", "-", "--scope", SCOPE, "--json", "--jwks",
                   "http://keys.example.invalid/jwks.json", input=token)  # fmt: skip
    assert result.exit_code == 1 and json.loads(result.stdout)["reason"] == "unknown_key"
    assert "not an https URL" in result.stderr


def test_a_redirect_may_not_downgrade_the_jwks_to_plain_http(ready: Cli) -> None:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://keys.example.invalid/jwks.json")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        decision = RemoteVerifier(url).check(token, [SCOPE])
        assert decision.reason == "unknown_key" and "not an https URL" in decision.detail
    finally:
        server.shutdown()
        server.server_close()


def test_a_garbage_http_answer_or_a_deep_jwks_is_a_denial_not_a_crash(
    ready: Cli, tmp_path: Path
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    assert RemoteVerifier(str(deep)).check(token, [SCOPE]).reason == "unknown_key"

    class Garbage(http.server.BaseHTTPRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"GARBAGE\r\n\r\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        assert RemoteVerifier(url).check(token, [SCOPE]).reason == "unknown_key"
    finally:
        server.shutdown()
        server.server_close()


def test_a_jwks_key_meant_for_another_algorithm_is_refused(ready: Cli, published: Path) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    jwks = json.loads(published.read_text())
    jwks["keys"][0]["alg"] = "RS256"
    published.write_text(json.dumps(jwks))
    assert remote(ready, token, "--jwks", str(published))[1]["reason"] == "unknown_key"


def _signed_list(ready: Cli, site: Path, **claims: object) -> None:
    """Re-sign the published list with the principal's real key and some claims changed."""
    import base64

    from nhidel.keys.keystore import open_keystore
    from nhidel.keys.principal import load_signer
    from nhidel.paths import Paths
    from nhidel.tokens.jws import mint

    payload = (site / "status.jwt").read_text().split(".")[1]
    listed = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    listed.update(claims)
    signer = load_signer(open_keystore(Paths.from_env()))
    (site / "status.jwt").write_text(mint(listed, signer.seed, signer.kid, typ="statuslist+jwt"))


def test_a_list_past_a_fractional_exp_is_expired_whatever_the_leeway(
    ready: Cli, site: Path
) -> None:
    import time

    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    publish(ready, site)
    _signed_list(ready, site, exp=time.time() - 100.5, iat=int(time.time()) - 200)
    verifier = RemoteVerifier(str(site / "jwks.json"), str(site / "status.jwt"), leeway=3600)
    assert verifier.check(token, [SCOPE]).reason == "status_unavailable"


def test_a_list_from_another_issuer_is_status_unavailable(ready: Cli, site: Path) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    publish(ready, site)
    _signed_list(ready, site, iss="nhidel:mallory")
    code, verdict = bundle_verdict(ready, site, token)
    assert code == 1 and verdict["reason"] == "status_unavailable"
