"""Issue 10, finding 9 ("contract slips"): each one as a user, a script or an attacker meets it.

Undecodable input to verify is `malformed`; a token that cannot be written out is revoked and
named; an absurd `audit tail -n` is a usage error; a corrupt ledger row is exit 5 for `show`
too; a token has one base64url spelling only; a config.toml that is no file is named.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import claims_of, isolated_env, list_all, ok
from helpers.support import Cli

from nhidel.audit.records import token_fingerprint
from nhidel.tokens.jws import TokenDecoder, TokenRejected, token_sha256
from nhidel.verifiers.remote import RemoteVerifier

SCOPE = "repo:read:acme/api"
MALFORMED = {"allowed": False, "reason": "malformed", "grant": None}


def verdict_of(stdout: str | bytes) -> dict[str, object]:
    """`verify --json`'s verdict, its `detail` (a sentence for people) set aside."""
    verdict: dict[str, object] = json.loads(stdout)
    assert isinstance(verdict.pop("detail"), str), verdict
    return verdict


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A home with a principal and an agent, for nhidel run as separate processes."""
    secret = tmp_path / "passphrase"
    secret.touch(mode=0o600)
    secret.write_text("correct horse battery staple\n")
    environ = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(secret))
    ok(environ, "init", "--principal", "alice")
    ok(environ, "agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    return environ


def run_bytes(
    env: dict[str, str], *args: str | bytes, stdin: bytes = b"", **extra: bytes
) -> subprocess.CompletedProcess[bytes]:
    """nhidel with arguments, variables and stdin that need not be UTF-8."""
    environ = {k.encode(): v.encode() for k, v in env.items()}
    environ.update({k.encode(): v for k, v in extra.items()})
    argv = [a if isinstance(a, bytes) else a.encode() for a in args]
    return subprocess.run(
        [sys.executable.encode(), b"-m", b"nhidel", *argv], input=stdin, capture_output=True,
        env=environ, cwd=env["HOME"], timeout=60, check=False,
    )  # fmt: skip


def assert_one_error(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    assert len(lines) == 2 and lines[0].startswith("error: "), stderr
    assert lines[1].startswith("hint: "), stderr
    return lines


# 1. Undecodable input to verify ---------------------------------------------------------------


def test_invalid_utf8_on_verify_stdin_is_malformed(env: dict[str, str]) -> None:
    token = ok(env, "grant", "reviewer", "--scope", SCOPE).stdout.strip().encode()
    assert run_bytes(env, "verify", "-", "--scope", SCOPE, stdin=token).returncode == 0
    for garbage in (b"\xff\xfe", token + b"\n\xff\xfe", token + b"\xc3(", b"\xed\xb3\xbf"):
        done = run_bytes(env, "verify", "-", "--scope", SCOPE, "--json", stdin=garbage)
        assert done.returncode == 1, done.stderr
        assert verdict_of(done.stdout) == MALFORMED
        assert done.stderr.decode().startswith("denied: malformed"), done.stderr


def test_an_undecodable_token_argument_or_variable_is_malformed(env: dict[str, str]) -> None:
    by_argument = run_bytes(env, "verify", b"ab\xffcd", "--any-scope", "--json")
    by_variable = run_bytes(env, "verify", "--any-scope", "--json", NHIDEL_TOKEN=b"ab\xff.c.d")
    for done in (by_argument, by_variable):
        assert done.returncode == 1, done.stderr
        assert verdict_of(done.stdout) == MALFORMED
        assert b"unexpected" not in done.stderr


def test_batch_gives_each_undecodable_line_one_malformed_verdict(env: dict[str, str]) -> None:
    token = ok(env, "grant", "reviewer", "--scope", SCOPE).stdout.strip().encode()
    lines = [token, b"\xff\xfe", token + b"\xff", b"\xc3(", b"\xed\xb3\xbf", token]
    done = run_bytes(env, "verify", "--batch", "--scope", SCOPE, stdin=b"\n".join(lines) + b"\n")
    assert done.returncode == 1, done.stderr
    verdicts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(v["allowed"], v["reason"]) for v in verdicts] == [
        (True, None), *[(False, "malformed")] * 4, (True, None),
    ]  # fmt: skip


# 2. The Python API on a str holding lone surrogates --------------------------------------------


def test_the_python_api_denies_a_surrogate_token_as_malformed(ready: Cli, tmp_path: Path) -> None:
    import nhidel

    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(ready.ok("key", "export", "--jwks").stdout)
    surrogates = ["\udcff", "ab\udcffcd", token + "\udcff", token[:-1] + "\udcff"]
    with nhidel.Verifier() as verifier:
        for text in surrogates:
            for consume in (False, True):
                decision = verifier.check(text, [SCOPE], consume=consume)
                assert (decision.allowed, decision.reason) == (False, nhidel.Reason.MALFORMED)
        assert verifier.check(token, [SCOPE]).allowed
    remote = RemoteVerifier(str(jwks))
    for text in surrogates:
        assert nhidel.verify(text, [SCOPE]).reason == nhidel.Reason.MALFORMED
        assert remote.check(text, [SCOPE]).reason == nhidel.Reason.MALFORMED
    # What hashes a token takes any str; a valid one hashes as it always did.
    assert token_sha256(token) == hashlib.sha256(token.encode()).hexdigest()
    assert len(token_fingerprint(b"k" * 32, "\udcff")) == 32
    assert token_fingerprint(b"k" * 32, "abc") != token_fingerprint(b"k" * 32, "ab\udcff")


# 3. A token that cannot be written out ---------------------------------------------------------


def grant_into(env: dict[str, str], sink: str, output: str) -> subprocess.CompletedProcess[str]:
    """`nhidel grant` whose stdout is closed, full, or a pipe nobody reads."""
    args = [sys.executable, "-m", "nhidel", "grant", "reviewer", "--scope", SCOPE,
            "--format", output]  # fmt: skip
    common: dict[str, Any] = {"env": env, "cwd": env["HOME"], "stderr": subprocess.PIPE,
                              "stdin": subprocess.DEVNULL, "text": True, "timeout": 60}  # fmt: skip
    if sink == "closed":  # the shell's `>&-`: fd 1 is not open at all
        return subprocess.run(["bash", "-c", 'exec "$@" >&-', "bash", *args], **common,
                              check=False)  # fmt: skip
    if sink == "full":
        with open("/dev/full", "w") as full:
            return subprocess.run(args, stdout=full, **common, check=False)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the token is written
    try:
        return subprocess.run(args, stdout=write_end, **common, check=False)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("output", ["token", "json", "env", "export"])
@pytest.mark.parametrize("sink", ["closed", "full", "broken-pipe"])
def test_a_token_that_cannot_be_written_out_is_revoked_and_named(
    env: dict[str, str], sink: str, output: str
) -> None:
    done = grant_into(env, sink, output)
    assert done.returncode == 1, done.stderr
    error, _hint = assert_one_error(done.stderr)
    (listed,) = list_all(env)
    assert listed["status"] == "revoked" and listed["revoke_reason"] == "undelivered", listed
    assert listed["id"] in error and "revoked" in error, error
    assert json.loads(ok(env, "list", "--json").stdout) == []  # no live grant left behind


def test_a_token_written_out_is_not_revoked(env: dict[str, str]) -> None:
    token = ok(env, "grant", "reviewer", "--scope", SCOPE).stdout.strip()
    (listed,) = list_all(env)
    assert listed["id"] == claims_of(token)["jti"] and listed["status"] == "active"


# 4. audit tail -n out of range -----------------------------------------------------------------


@pytest.mark.parametrize("count", ["99999999999999999999999", "1000000001", "-1"])
def test_audit_tail_with_a_count_out_of_range_is_a_usage_error(ready: Cli, count: str) -> None:
    result = ready("audit", "tail", "-n", count)
    assert result.exit_code == 2 and result.stdout == ""
    assert_one_error(result.stderr)
    assert ready("audit", "tail", "-n", "1000000000").exit_code == 0


# 5. show on a corrupt ledger row ---------------------------------------------------------------


@pytest.mark.parametrize("corruption", [
    "issued_at = 'x'", "expires_at = 1.5", "not_before = 99999999999999999", "revoked_at = 'z'",
    "uses = 'x'", "max_uses = 'q'", "agent = X'61'", "reason = X'ff'", "scope = X'00ff'",
])  # fmt: skip
def test_show_on_a_corrupt_ledger_row_is_exit_5_naming_the_grant(
    ready: Cli, nhidel_home: Path, corruption: str
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", "repo:read:acme/api").stdout.strip()
    grant_id = claims_of(token)["jti"]
    with sqlite3.connect(nhidel_home / "ledger.db") as db:
        db.execute(f"UPDATE grants SET {corruption}")
    db.close()
    for args in (["show", grant_id], ["show", grant_id, "--json"], ["show", grant_id[:6]]):
        result = ready(*args)
        assert result.exit_code == 5 and result.stdout == "", (args, result.stderr)
        error, _hint = assert_one_error(result.stderr)
        assert args[1] in error, error
    assert ready("list", "--all", "--json").exit_code == 5  # as list says


@pytest.mark.parametrize("corruption", [
    "issued_at = 'x'",
    "revoked_at = 'z'",
    "uses = 'x'",
])  # fmt: skip
def test_verify_on_a_corrupt_ledger_row_is_exit_5_not_a_crash(
    ready: Cli, nhidel_home: Path, corruption: str
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    with sqlite3.connect(nhidel_home / "ledger.db") as db:
        db.execute(f"UPDATE grants SET {corruption}")
    db.close()
    for extra in ([], ["--json"]):
        result = ready("verify", "-", "--scope", SCOPE, *extra, input=token)
        assert result.exit_code == 5, result.stderr
        # An `error:` line from the CLI, or the verifier's own `denied: integrity` verdict.
        assert claims_of(token)["jti"] in result.stderr.splitlines()[0], result.stderr
        assert "unexpected" not in result.stderr and "Traceback" not in result.stderr


# 6. One base64url spelling per token -----------------------------------------------------------


def respellings(token: str) -> list[str]:
    """The token with one segment's last character changed in its unused low bits only: the
    same bytes to a lenient decoder, a different text."""
    segments = token.split(".")
    found = []
    for index, segment in enumerate(segments):
        unused = {2: 4, 3: 2}.get(len(segment) % 4)
        if unused is None:
            continue
        last = B64URL.index(segment[-1])
        assert last % (1 << unused) == 0  # nhidel writes canonical base64url
        changed = segment[:-1] + B64URL[last | 1]
        padded = "=" * (-len(segment) % 4)
        assert base64.urlsafe_b64decode(changed + padded) == base64.urlsafe_b64decode(
            segment + padded
        )
        found.append(".".join([*segments[:index], changed, *segments[index + 1 :]]))
    return found


def test_a_non_canonical_base64url_spelling_is_malformed_locally_and_remotely(
    ready: Cli, tmp_path: Path
) -> None:
    from nhidel.keys.principal import load_trust

    jwks = tmp_path / "jwks.json"
    jwks.write_text(ready.ok("key", "export", "--jwks").stdout)
    token = ready.ok("grant", "reviewer", "--scope", SCOPE).stdout.strip()
    respelled = respellings(token)
    assert len(token.split(".")[2]) == 86 and respelled[-1].split(".")[2] != token.split(".")[2]
    for where in ([], ["--jwks", str(jwks)]):
        genuine = ready("verify", "-", "--scope", SCOPE, "--json", *where, input=token)
        assert genuine.exit_code == 0, genuine.stderr
        for text in respelled:
            result = ready("verify", "-", "--scope", SCOPE, "--json", *where, input=text)
            assert result.exit_code == 1 and verdict_of(result.stdout) == MALFORMED, where
    # The same through the library: the local decoder and the remote verifier.
    from nhidel.keys.keystore import open_keystore
    from nhidel.keys.material import verifying_key
    from nhidel.paths import Paths

    trust = load_trust(open_keystore(Paths.from_env()))
    decoder = TokenDecoder({kid: verifying_key(info["x"]) for kid, info in trust.keys.items()})
    assert decoder.decode(token)["jti"] == claims_of(token)["jti"]
    remote = RemoteVerifier(str(jwks))
    assert remote.check(token, [SCOPE]).allowed
    for text in respelled:
        with pytest.raises(TokenRejected) as rejected:
            decoder.decode(text)
        assert rejected.value.reason == "malformed"
        assert remote.check(text, [SCOPE]).reason == "malformed"


# 7. A config.toml that is no file --------------------------------------------------------------


def test_a_config_toml_that_is_a_directory_is_named(ready: Cli, nhidel_home: Path) -> None:
    config = nhidel_home / "config.toml"
    config.rename(nhidel_home / "config.toml.bak")
    config.mkdir(mode=0o700)
    for args in (["agent", "list"], ["grant", "reviewer", "--scope", SCOPE]):
        result = ready(*args)
        assert result.exit_code == 5 and result.stdout == "", result.stderr
        error, _hint = assert_one_error(result.stderr)
        assert str(config) in error and "directory" in error, error


# 8. verify's exit status for an integrity denial -----------------------------------------------


def test_an_integrity_denial_is_exit_5_and_any_other_exit_1(
    ready: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib
    from collections.abc import Iterator

    from nhidel.cli import verify_cmds
    from nhidel.tokens.decision import Decision, Reason

    reason = Reason.INTEGRITY

    @contextlib.contextmanager
    def checker(*_args: Any, **_kwargs: Any) -> Iterator[Any]:
        yield lambda _text: Decision(False, reason, "the ledger row was edited")

    monkeypatch.setattr(verify_cmds, "_checker", checker)
    result = ready("verify", "--any-scope", "x.y.z")
    assert result.exit_code == 5
    assert result.stderr == "denied: integrity: the ledger row was edited\n"
    reason = Reason.REVOKED
    assert ready("verify", "--any-scope", "x.y.z").exit_code == 1
