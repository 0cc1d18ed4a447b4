"""A grant's times are decided by one function, `time_fault`, in every verifier: its
boundaries, leeway included, and the local (cached and consuming) and remote verifiers
agreeing with it second by second."""

from __future__ import annotations

import json

import pytest
from helpers.token_world import World

from nhidel.keys.material import public_jwk, public_x
from nhidel.tokens.claims import time_fault
from nhidel.tokens.decision import Reason
from nhidel.verifiers.local import Verifier
from nhidel.verifiers.remote import RemoteVerifier

EXP, NBF = 10_000, 5_000


@pytest.mark.parametrize("leeway", [0, 1, 30, 3600])
def test_expiry_is_from_exp_and_leeway_on(leeway: int) -> None:
    assert time_fault(EXP, NBF, EXP + leeway - 1, leeway) is None
    assert time_fault(EXP, NBF, EXP + leeway, leeway) is Reason.EXPIRED
    assert time_fault(EXP, NBF, EXP + leeway + 1, leeway) is Reason.EXPIRED


@pytest.mark.parametrize("leeway", [0, 1, 30, 3600])
def test_not_yet_valid_is_before_nbf_less_leeway(leeway: int) -> None:
    assert time_fault(EXP, NBF, NBF - leeway, leeway) is None
    assert time_fault(EXP, NBF, NBF - leeway - 1, leeway) is Reason.NOT_YET_VALID


def test_a_grant_both_expired_and_not_yet_valid_is_expired() -> None:
    # (exp before nbf: nhidel never mints one, but the order of the checks is SPEC.md's)
    assert time_fault(NBF, EXP, 7_000, 0) is Reason.EXPIRED


@pytest.mark.parametrize("leeway", [0, 30])
def test_local_and_remote_verifiers_decide_times_as_time_fault_does(
    world: World, leeway: int
) -> None:
    grant, token = world.issue(ttl="15m", not_before="+5m")
    jwks = json.dumps({"keys": [public_jwk(public_x(world.signer.seed))]}).encode()
    clock = [0]
    local = Verifier(world.paths, world.keystore, clock=lambda: clock[0], leeway=leeway)
    remote = RemoteVerifier("jwks.json", clock=lambda: clock[0], leeway=leeway,
                            fetcher=lambda _: jwks)  # fmt: skip
    edges = (grant.not_before - leeway, grant.expires_at + leeway)
    with local:
        for at in [t for edge in edges for t in (edge - 2, edge - 1, edge, edge + 1)]:
            clock[0] = at
            expected = time_fault(grant.expires_at, grant.not_before, at, leeway)
            assert local.check(token, ["repo:read:acme/api"]).reason is expected, at
            assert remote.check(token, ["repo:read:acme/api"]).reason is expected, at
        for at in (edges[1] - 1, edges[1]):  # a use is counted only while the grant is valid
            clock[0] = at
            expected = time_fault(grant.expires_at, grant.not_before, at, leeway)
            used = local.check(token, ["repo:read:acme/api"], consume=True)
            assert used.reason is expected, at
