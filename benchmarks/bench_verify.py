"""Verify throughput: `Verifier.check` and `nhidel verify --batch`, against raw Ed25519.

    python3 benchmarks/bench_verify.py [--tokens 6000] [--rounds 3] [--json OUT]

Rows (checks per second, median of the rounds; the machine is shared and noisy):
- raw_ed25519_per_s: `Ed25519PublicKey.verify(sig, msg)` (cryptography, OpenSSL) over the tokens'
  own signatures, in a loop: the floor the goals are stated against
- raw_sodium_per_s: libsodium's `crypto_sign_open` (PyNaCl) over the same, as nhidel calls it
- library_fresh_per_s: `Verifier.check` on distinct tokens, each seen once by a new Verifier
- library_repeated_per_s: `Verifier.check` on one token again and again (the gateway case)
- remote_fresh_per_s / remote_repeated_per_s: the same with `RemoteVerifier` (the fixture's JWKS,
  served from memory; no status list)
- batch_fresh_per_s: `nhidel verify --batch` as a child process: its CPU time for all the lines
  less its CPU time for one line (start-up and the keystore's KDF)
- batch_repeated_per_s: the same with one token, a run of `--repeats` lines taken off a run of
  twice as many (start-up and the KDF, whose cost varies, cancel out)

Every rate is per CPU second of the process doing the work (its background group-commit thread
included), so other load on the machine slows the wall clock but not the figures.
Every check writes its decision to the audit log through the group commit, as in production.
The keystore is the encrypted file keystore (`NHIDEL_KEYSTORE=file`) in a temp `NHIDEL_HOME`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nhidel.actions.agents import add_agent
from nhidel.actions.keys import init_principal
from nhidel.base64url import b64url_decode
from nhidel.integrity.state import row_seal
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.keys.principal import load_signer
from nhidel.ledger.store import Ledger
from nhidel.models import Grant, new_grant_id
from nhidel.paths import Paths
from nhidel.scopes import parse_scopes
from nhidel.tokens.jws import mint, token_sha256
from nhidel.verifiers.local import Verifier
from nhidel.verifiers.remote import RemoteVerifier

SCOPE = "repo:read:acme/api"
PASSPHRASE = "bench-passphrase"  # noqa: S105 - a throwaway keystore in a temp dir


class Fixture:
    """A temp nhidel home with a principal, one agent and `count` live grants in the ledger."""

    def __init__(self, home: Path, count: int) -> None:
        self.env = {"NHIDEL_HOME": str(home), "NHIDEL_KEYSTORE": "file",
                    "NHIDEL_PASSPHRASE": PASSPHRASE}  # fmt: skip
        self.paths = Paths(home, home)
        self.keystore: KeyStore = open_keystore(self.paths, env=self.env)
        now = int(time.time())
        init_principal(self.paths, self.keystore, principal="alice", issuer=None, now=now)
        add_agent(self.paths, "bot", allow=["repo:read:acme/*"], max_ttl="1h",
                  default_ttl=None, audiences=[], now=now, keystore=self.keystore)  # fmt: skip
        self.tokens = self._grants(count, now)

    def _grants(self, count: int, now: int) -> list[str]:
        # Minted and inserted in bulk, with the claims `nhidel grant` gives (issuing them one by
        # one would fsync the audit log per grant and take minutes).
        signer = load_signer(self.keystore)
        tokens = []
        with Ledger(self.paths) as ledger, ledger.transaction():
            for _ in range(count):
                grant = Grant(id=new_grant_id(), agent="bot", scopes=parse_scopes([SCOPE]),
                              aud=None, issued_at=now, not_before=now, expires_at=now + 3600,
                              max_uses=None, reason=None, kid=signer.kid)  # fmt: skip
                claims = {"iss": signer.issuer, "sub": signer.principal, "act": {"sub": "bot"},
                          "scope": SCOPE, "iat": now, "nbf": now, "exp": now + 3600,
                          "jti": grant.id}  # fmt: skip
                token = mint(claims, signer.seed, signer.kid)
                digest = token_sha256(token)
                ledger.insert(grant, digest, row_seal(signer.audit_key, grant, digest))
                tokens.append(token)
        return tokens

    def verifier(self) -> Verifier:
        return Verifier(self.paths, self.keystore)


def timed(rounds: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(rounds))


def signed_pairs(fixture: Fixture) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The signer's raw public key, and each token's (signature, signing input)."""
    with fixture.verifier() as verifier:
        key = next(iter(verifier.keys.values()))
    pairs = []
    for token in fixture.tokens:
        head, payload, signature = token.split(".")
        pairs.append((b64url_decode(signature), f"{head}.{payload}".encode("ascii")))
    return key, pairs


def raw_ed25519(fixture: Fixture) -> float:
    """`cryptography` (OpenSSL): the floor the goals are stated against."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw, pairs = signed_pairs(fixture)
    key = Ed25519PublicKey.from_public_bytes(raw)
    start = time.process_time()
    for signature, message in pairs:
        key.verify(signature, message)
    return len(pairs) / (time.process_time() - start)


def raw_sodium(fixture: Fixture) -> float:
    """PyNaCl (libsodium), as nhidel's verifiers call it: what the primitive alone costs."""
    from nacl.bindings import crypto_sign_open

    key, pairs = signed_pairs(fixture)
    start = time.process_time()
    for signature, message in pairs:
        crypto_sign_open(signature + message, key)
    return len(pairs) / (time.process_time() - start)


def library_fresh(fixture: Fixture) -> float:
    with fixture.verifier() as verifier:
        check = verifier.check
        start = time.process_time()
        for token in fixture.tokens:
            if not check(token, (SCOPE,)).allowed:
                raise AssertionError("a benchmark token was denied")
        verifier.close()  # the last group commit is part of the cost
        return len(fixture.tokens) / (time.process_time() - start)


def library_repeated(fixture: Fixture, checks: int) -> float:
    token = fixture.tokens[0]
    with fixture.verifier() as verifier:
        check = verifier.check
        start = time.process_time()
        for _ in range(checks):
            if not check(token, (SCOPE,)).allowed:
                raise AssertionError("the benchmark token was denied")
        verifier.close()
        return checks / (time.process_time() - start)


def remote_verifier(fixture: Fixture) -> RemoteVerifier:
    """A RemoteVerifier trusting the fixture's published JWKS (served from memory)."""
    from nhidel.actions.publish import jwks_json

    jwks = jwks_json(fixture.paths, fixture.keystore, now=int(time.time())).encode()
    return RemoteVerifier("jwks.json", fetcher=lambda _: jwks)


def remote_fresh(fixture: Fixture) -> float:
    verifier = remote_verifier(fixture)
    check = verifier.check
    start = time.process_time()
    for token in fixture.tokens:
        if not check(token, (SCOPE,)).allowed:
            raise AssertionError("a benchmark token was denied")
    return len(fixture.tokens) / (time.process_time() - start)


def remote_repeated(fixture: Fixture, checks: int) -> float:
    token = fixture.tokens[0]
    verifier = remote_verifier(fixture)
    check = verifier.check
    start = time.process_time()
    for _ in range(checks):
        if not check(token, (SCOPE,)).allowed:
            raise AssertionError("the benchmark token was denied")
    return checks / (time.process_time() - start)


def batch_cpu(fixture: Fixture, lines: Sequence[str]) -> float:
    """CPU seconds (user + system) of one `nhidel verify --batch` run over `lines`."""
    env = {**os.environ, **fixture.env}
    command = [sys.executable, "-m", "nhidel", "verify", "--batch",
               "--scope", SCOPE]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    data = "".join(line + "\n" for line in lines).encode()
    stdin = process.stdin

    def feed() -> None:
        stdin.write(data)
        stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    count = 0
    last = b""
    for line in process.stdout:
        count += 1
        last = line
    writer.join()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or count != len(lines):
        raise AssertionError(f"verify --batch exited {process.returncode} after {count}: {last!r}")
    return usage.ru_utime + usage.ru_stime


def batch(fixture: Fixture, lines: Sequence[str]) -> float:
    """Verdicts per CPU second of `nhidel verify --batch`, start-up (a one-line run) taken off."""
    start_up = batch_cpu(fixture, lines[:1])
    return (len(lines) - 1) / (batch_cpu(fixture, lines) - start_up)


def batch_repeated(fixture: Fixture, token: str, count: int) -> float:
    """Verdicts per CPU second of `nhidel verify --batch` on one token: a run of `count` lines
    taken off a run of twice as many, so start-up, and the scrypt KDF whose cost varies by
    ±10 ms from run to run, cancel out instead of weighing on a half-second figure."""
    once = batch_cpu(fixture, [token] * count)
    return count / (batch_cpu(fixture, [token] * (2 * count)) - once)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6000, help="distinct fresh tokens")
    parser.add_argument("--repeats", type=int, default=200_000, help="checks of one token")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        fixture = Fixture(Path(home), args.tokens)
        results: dict[str, Any] = {}
        results["raw_ed25519_per_s"] = timed(args.rounds, lambda: raw_ed25519(fixture))
        results["raw_sodium_per_s"] = timed(args.rounds, lambda: raw_sodium(fixture))
        results["library_fresh_per_s"] = timed(args.rounds, lambda: library_fresh(fixture))
        results["library_repeated_per_s"] = timed(
            args.rounds, lambda: library_repeated(fixture, args.repeats)
        )
        results["remote_fresh_per_s"] = timed(args.rounds, lambda: remote_fresh(fixture))
        results["remote_repeated_per_s"] = timed(
            args.rounds, lambda: remote_repeated(fixture, args.repeats)
        )
        results["batch_fresh_per_s"] = timed(args.rounds, lambda: batch(fixture, fixture.tokens))
        results["batch_repeated_per_s"] = timed(
            args.rounds, lambda: batch_repeated(fixture, fixture.tokens[0], args.repeats)
        )
    results["library_fresh_vs_raw"] = results["library_fresh_per_s"] / results["raw_ed25519_per_s"]
    results["remote_fresh_vs_raw"] = results["remote_fresh_per_s"] / results["raw_ed25519_per_s"]
    results["batch_fresh_vs_library"] = (
        results["batch_fresh_per_s"] / results["library_fresh_per_s"]
    )
    results["batch_repeated_vs_library"] = (
        results["batch_repeated_per_s"] / results["library_repeated_per_s"]
    )
    results.update(tokens=args.tokens, repeats=args.repeats, rounds=args.rounds,
                   seconds=time.perf_counter() - started, load=os.getloadavg()[0])  # fmt: skip
    for name, value in results.items():
        print(f"{name:28} {value:14,.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
