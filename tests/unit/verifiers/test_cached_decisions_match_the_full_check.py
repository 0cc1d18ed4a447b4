"""The verifier's fast paths decide exactly what the slow path does.

A remembered token is forgotten the moment another process commits to the ledger; times are
checked on every call; `consume` never comes from memory; every call's scopes and audience are
its own; the memory is bounded; and identical decisions coalesced into one audit record still
add up, under the seal.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.token_world import SCOPE, T, World, assert_denied, claims_of, forge

from nhidel.actions.audit_log import verify_log
from nhidel.ledger.commit_probe import CommitProbe
from nhidel.ledger.store import Ledger
from nhidel.models import Grant
from nhidel.paths import Paths
from nhidel.tokens.decision import Reason
from nhidel.tokens.jws import TokenDecoder, TokenRejected
from nhidel.verifiers.local import Verifier

REPO = Path(__file__).resolve().parents[3]


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["wal-index", "data_version"])
def probe_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every cache test runs with both ways of noticing a commit."""
    kind: str = request.param
    if kind == "data_version":
        monkeypatch.setattr(
            "nhidel.verifiers.local.CommitProbe",
            functools.partial(CommitProbe, use_wal_index=False),
        )
    return kind


@pytest.fixture
def verifier(world: World, probe_kind: str) -> Iterator[tuple[Verifier, Clock]]:
    clock = Clock(T)
    with Verifier(world.paths, world.keystore, clock=clock) as opened:
        assert opened._probe.reads_wal_index is (probe_kind == "wal-index")
        yield opened, clock


def in_another_process(paths: Paths, code: str) -> None:
    """Run `code` (with `ledger` open on the same file) in a separate Python process."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom nhidel.config import Paths\n"
        "from nhidel.ledger.store import Ledger\n"
        f"with Ledger(Paths(Path({str(paths.config_dir)!r}), Path({str(paths.state_dir)!r}))) "
        "as ledger, ledger.transaction():\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)


def decision_records(paths: Paths) -> list[dict[str, Any]]:
    lines = paths.audit_file.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if r["event"] in ("verify.allowed", "verify.denied")]


# -- what the ledger says is forgotten when another process changes it ----------------------


def test_a_revocation_by_another_process_is_seen_by_the_very_next_cached_check(
    world: World,
    verifier: tuple[Verifier, Clock],
) -> None:
    check, _ = verifier
    grant, token = world.issue(ttl="15m")
    for _ in range(3):  # remembered after the first
        assert check.check(token, [SCOPE]).allowed
    in_another_process(world.paths, f"ledger.revoke([{grant.id!r}], now={T}, reason='test')")
    assert_denied(check.check(token, [SCOPE]), Reason.REVOKED)


def test_a_use_by_another_connection_exhausts_the_grant_for_the_next_cached_check(
    world: World,
    verifier: tuple[Verifier, Clock],
) -> None:
    check, _ = verifier
    grant, token = world.issue(ttl="15m", uses=1)
    assert check.check(token, [SCOPE]).allowed
    # Another verifier, on its own connection to the ledger, spends the use.
    with Verifier(world.paths, world.keystore, clock=lambda: T) as other:
        assert other.check(token, [SCOPE], consume=True).allowed
    assert_denied(check.check(token, [SCOPE]), Reason.USES_EXHAUSTED)


def test_a_token_unknown_to_the_ledger_is_known_once_another_process_records_it(
    world: World,
    verifier: tuple[Verifier, Clock],
) -> None:
    check, _ = verifier
    grant, token = world.issue(ttl="15m")
    with Ledger(world.paths) as ledger:
        row = ledger.db.execute("SELECT * FROM grants WHERE id = ?", (grant.id,)).fetchone()
    deletion = f"DELETE FROM grants WHERE id = '{grant.id}'"
    in_another_process(world.paths, f"ledger.db.execute({deletion!r})")
    assert_denied(check.check(token, [SCOPE]), Reason.UNKNOWN_GRANT)
    assert_denied(check.check(token, [SCOPE]), Reason.UNKNOWN_GRANT)
    # Put back (as a restore would): the remembered "never issued" must not outlive it.
    marks = ", ".join("?" * len(row))
    in_another_process(
        world.paths, f"ledger.db.execute('INSERT INTO grants VALUES ({marks})', {tuple(row)!r})"
    )
    assert check.check(token, [SCOPE]).allowed


# -- times, scopes, audience: decided per call ---------------------------------------------


def test_expiry_is_checked_on_every_call_against_the_clock(
    world: World,
    verifier: tuple[Verifier, Clock],
) -> None:
    check, clock = verifier
    grant, token = world.issue(ttl="15m")
    assert check.check(token, [SCOPE]).allowed
    clock.now = grant.expires_at - 1
    assert check.check(token, [SCOPE]).allowed
    clock.now = grant.expires_at
    assert_denied(check.check(token, [SCOPE]), Reason.EXPIRED)


def test_not_before_is_checked_on_every_call_against_the_clock(
    world: World,
    verifier: tuple[Verifier, Clock],
) -> None:
    check, clock = verifier
    grant, token = world.issue(ttl="15m", not_before="+5m")
    assert_denied(check.check(token, [SCOPE]), Reason.NOT_YET_VALID)
    clock.now = grant.not_before
    assert check.check(token, [SCOPE]).allowed


def test_each_calls_scopes_and_audience_are_decided_for_that_call(
    world: World,
    verifier: tuple[Verifier, Clock],
) -> None:
    check, _ = verifier
    _, plain = world.issue(ttl="15m")
    assert check.check(plain, [SCOPE]).allowed
    assert_denied(check.check(plain, ["repo:read:acme/other"]), Reason.SCOPE_NOT_GRANTED)
    assert check.check(plain, [SCOPE]).allowed
    assert check.check(plain, any_scope=True).allowed
    # An audience: the same token, asked with and without the right one.
    _, aimed = world.issue(ttl="15m", aud="api.example.com")
    assert_denied(check.check(aimed, [SCOPE]), Reason.WRONG_AUDIENCE)
    assert check.check(aimed, [SCOPE], aud="api.example.com").allowed
    assert_denied(check.check(aimed, [SCOPE], aud="other.example.com"), Reason.WRONG_AUDIENCE)
    assert check.check(aimed, [SCOPE], aud="api.example.com").allowed


def test_the_remembered_decisions_match_a_new_verifiers_for_every_reason(
    world: World,
    verifier: tuple[Verifier, Clock],
) -> None:
    check, clock = verifier
    good = world.issue(ttl="15m")[1]
    revoked_grant, revoked = world.issue(ttl="15m")
    with Ledger(world.paths) as ledger, ledger.transaction():
        ledger.revoke([revoked_grant.id], now=T, reason=None)
    forged = forge(world.header(), claims_of(good), world.sign)
    bad_signature = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    cases = [good, revoked, forged, bad_signature, "garbage", "", good + "."]
    for at in (T, T + 900):
        clock.now = at
        for token in cases:
            for scopes in ([SCOPE], ["ticket:create:queue/x"]):
                for _ in range(2):
                    expected = world.decide(token, tuple(scopes), at=at)
                    got = check.check(token, scopes)
                    assert (got.allowed, got.reason) == (expected.allowed, expected.reason)


# -- consume is never served from memory ------------------------------------------------


def test_consume_counts_every_use_in_the_ledger_and_plain_checks_see_it(
    world: World,
    verifier: tuple[Verifier, Clock],
) -> None:
    check, _ = verifier
    grant, token = world.issue(ttl="15m", uses=2)
    assert check.check(token, [SCOPE]).allowed  # remembered, with 0 uses
    first = check.check(token, [SCOPE], consume=True)
    assert first.allowed and first.grant is not None and first.grant.uses == 1
    assert check.check(token, [SCOPE]).allowed
    second = check.check(token, [SCOPE], consume=True)
    assert second.allowed and second.grant is not None and second.grant.uses == 2
    assert world.uses(grant.id) == 2
    # Our own commit is not a change `PRAGMA data_version` reports: still forgotten.
    assert_denied(check.check(token, [SCOPE]), Reason.USES_EXHAUSTED)
    assert_denied(check.check(token, [SCOPE], consume=True), Reason.USES_EXHAUSTED)
    assert world.uses(grant.id) == 2


def test_consume_after_a_revocation_by_another_process_is_denied(
    world: World,
    verifier: tuple[Verifier, Clock],
) -> None:
    check, _ = verifier
    grant, token = world.issue(ttl="15m", uses=5)
    assert check.check(token, [SCOPE]).allowed
    in_another_process(world.paths, f"ledger.revoke([{grant.id!r}], now={T}, reason=None)")
    assert_denied(check.check(token, [SCOPE], consume=True), Reason.REVOKED)
    assert world.uses(grant.id) == 0


# -- bounded ---------------------------------------------------------------------------


def test_the_token_memory_is_bounded_least_recently_used_first_out(world: World) -> None:
    tokens = [world.issue(ttl="15m")[1] for _ in range(3)]
    with Verifier(world.paths, world.keystore, clock=lambda: T, cache_size=2) as check:
        for token in tokens[:2]:
            assert check.check(token, [SCOPE]).allowed
        assert check.check(tokens[0], [SCOPE]).allowed  # now the most recently used
        assert check.check(tokens[2], [SCOPE]).allowed
        assert list(check._known) == [tokens[0], tokens[2]]
        for token in tokens:
            assert check.check(token, [SCOPE]).allowed
        assert len(check._known) == 2


def test_the_header_verdict_is_remembered_but_every_signature_is_checked(world: World) -> None:
    claims = claims_of(world.issue(ttl="15m")[1])
    token = forge(world.header(), claims, world.sign)
    decoder = TokenDecoder({world.signer.kid: _public(world)})
    assert decoder.decode(token)["jti"] == claims["jti"]
    resigned = forge(world.header(), claims, lambda _: b"\x01" * 64)
    assert resigned.split(".")[0] == token.split(".")[0]  # the same, remembered, header
    with pytest.raises(TokenRejected) as rejected:
        decoder.decode(resigned)
    assert rejected.value.reason is Reason.BAD_SIGNATURE
    critical = forge(world.header(crit=["exp"]), claims, world.sign)
    for _ in range(2):  # a remembered refusal is still a refusal
        with pytest.raises(TokenRejected) as refused:
            decoder.decode(critical)
        assert refused.value.reason is Reason.MALFORMED


def _public(of: World) -> bytes:
    from nhidel.keys.material import public_x, verifying_key

    return verifying_key(public_x(of.signer.seed))


# -- coalesced decisions add up, under the seal -----------------------------------------


def test_coalesced_decisions_add_up_and_the_log_verifies(world: World) -> None:
    _, token = world.issue(ttl="15m")
    other_grant, other = world.issue(ttl="15m")
    asked: dict[tuple[str, str], int] = {}

    def ask(text: str, scope: str) -> None:
        decision = check.check(text, [scope])
        key = (text, "allowed" if decision.allowed else str(decision.reason))
        asked[key] = asked.get(key, 0) + 1

    with Verifier(world.paths, world.keystore, clock=lambda: T) as check:
        for round_ in range(50):
            ask(token, SCOPE)
            ask(token, SCOPE)
            ask(other, SCOPE if round_ % 2 else "ticket:create:queue/x")
            ask("garbage", SCOPE)
        check.decisions.flush()  # type: ignore[union-attr]  # one window closes, another opens
        for _ in range(7):
            ask(token, SCOPE)
    records = decision_records(world.paths)
    assert sum(record.get("count", 1) for record in records) == sum(asked.values()) == 207
    assert any(record.get("count", 1) > 1 for record in records)
    # Each (token, outcome) adds up on its own; the identical run after the flush is its own record.
    by_grant: dict[tuple[Any, str], int] = {}
    for record in records:
        key = (record["grant"], record["outcome"])
        by_grant[key] = by_grant.get(key, 0) + record.get("count", 1)
    assert by_grant[(other_grant.id, "allowed")] == 25
    assert by_grant[(other_grant.id, "scope_not_granted")] == 25
    assert by_grant[(None, "malformed")] == 50
    token_records = [r for r in records if r["grant"] == claims_of(token)["jti"]]
    assert [r.get("count", 1) for r in token_records] == [100, 7]
    first = token_records[0]
    assert first["time"] <= first["last_time"]
    report = verify_log(world.paths, world.keystore)
    assert report.ok, str(report.problem)


def test_a_tampered_count_is_detected(world: World) -> None:
    _, token = world.issue(ttl="15m")
    with Verifier(world.paths, world.keystore, clock=lambda: T) as check:
        for _ in range(5):
            assert check.check(token, [SCOPE]).allowed
    data = world.paths.audit_file.read_bytes()
    assert data.count(b'"count":5,') == 1
    world.paths.audit_file.write_bytes(data.replace(b'"count":5,', b'"count":1,'))
    report = verify_log(world.paths, world.keystore)
    assert not report.ok
    assert report.problem is not None and "seal" in report.problem.why


def test_audit_tail_shows_the_count(world: World) -> None:
    from nhidel.cli.render import audit_record_line

    _, token = world.issue(ttl="15m")
    with Verifier(world.paths, world.keystore, clock=lambda: T) as check:
        for _ in range(3):
            check.check(token, [SCOPE])
    (record,) = decision_records(world.paths)
    assert record["count"] == 3
    assert " x3 until " in audit_record_line(record, T)


def test_consumed_uses_are_never_coalesced(world: World) -> None:
    grant, token = world.issue(ttl="15m", uses=3)
    with Verifier(world.paths, world.keystore, clock=lambda: T) as check:
        for _ in range(3):
            assert check.check(token, [SCOPE], consume=True).allowed
    lines = world.paths.audit_file.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    used = [r for r in records if r["event"] == "grant.used"]
    assert [r["uses"] for r in used] == [1, 2, 3]
    assert all("count" not in r for r in records)
    assert verify_log(world.paths, world.keystore).ok


def test_the_probe_changes_when_another_connection_commits(paths: Paths) -> None:
    with Ledger(paths) as ours, Ledger(paths) as theirs:
        probe = CommitProbe(ours)
        assert probe.reads_wal_index
        before = probe()
        assert probe() == before
        with theirs.transaction():
            theirs.bump_revocation_epoch()
        assert probe() != before
        probe.close()


def test_grant_objects_from_the_lean_lookup_equal_the_plain_ones(world: World) -> None:
    grant, _ = world.issue(ttl="15m", uses=4, reason="why", aud="api.example.com")
    with Ledger(world.paths) as ledger:
        found = ledger.lookup(grant.id)
        assert found is not None
        assert found[0] == ledger.get(grant.id)
        assert isinstance(found[0], Grant)


@pytest.mark.parametrize("token", [None, b"bytes", ["a", "list"], 42])
def test_a_token_that_is_not_a_string_is_malformed_not_a_crash(
    world: World,
    token: Any,
) -> None:
    with Verifier(world.paths, world.keystore, clock=lambda: T) as check:
        for _ in range(2):
            assert_denied(check.check(token, [SCOPE]), Reason.MALFORMED)
