"""`verify` denying a grant for its times (`expired`, `not_yet_valid`) still names the grant the
ledger knows, and a grant not valid yet says when it starts: in the `denied:` line, in the
JSON's `detail`, in `--batch` and through the library.

`world` set the home up at the fixed time T, days before the real clock: a grant issued at T has
expired by now.
"""

from __future__ import annotations

import json
import time
from typing import Any

from helpers.support import Cli
from helpers.token_world import SCOPE, T, World, claims_of

from nhidel.timefmt import rfc3339
from nhidel.tokens.decision import Reason
from nhidel.tokens.jws import mint


def verdict(cli: Cli, token: str, *args: str) -> tuple[dict[str, Any], str]:
    result = cli("verify", "-", "--scope", SCOPE, "--json", *args, input=token)
    assert result.exit_code == 1, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found, result.stderr


def test_an_expired_grant_is_denied_with_its_grant(world: World, cli: Cli) -> None:
    issued, token = world.issue(ttl="15m")
    found, stderr = verdict(cli, token)
    assert (found["allowed"], found["reason"]) == (False, "expired")
    assert found["grant"]["id"] == issued.id and found["grant"]["status"] == "expired"
    assert found["detail"] == "the grant has expired"
    assert stderr == "denied: expired: the grant has expired\n"


def test_a_pending_grant_is_denied_with_its_grant_and_when_it_starts(
    world: World, cli: Cli
) -> None:
    token = cli.ok("grant", "reviewer", "--scope", SCOPE, "--not-before", "+1h").stdout.strip()
    start = rfc3339(claims_of(token)["nbf"])
    for args in ((), ("--consume",)):
        found, stderr = verdict(cli, token, *args)
        assert found["reason"] == "not_yet_valid"
        assert found["grant"]["id"] == claims_of(token)["jti"]
        assert found["grant"]["status"] == "pending"
        detail = f"the grant is not valid yet: it starts at {start}"
        assert found["detail"] == detail
        assert stderr == f"denied: not_yet_valid: {detail}\n"


def test_batch_verdicts_of_time_denials_carry_the_grant(world: World, cli: Cli) -> None:
    _, expired = world.issue(ttl="15m")
    pending = cli.ok("grant", "reviewer", "--scope", SCOPE, "--not-before", "+5m").stdout.strip()
    result = cli("verify", "--batch", "--scope", SCOPE, input=f"{expired}\n{pending}\n")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(v["reason"], v["grant"]["id"]) for v in lines] == [
        ("expired", claims_of(expired)["jti"]),
        ("not_yet_valid", claims_of(pending)["jti"]),
    ]
    assert "it starts at" in lines[1]["detail"]


def test_a_time_denial_of_a_token_the_ledger_never_issued_names_no_grant(
    world: World, cli: Cli
) -> None:
    now = int(time.time())
    _, token = world.issue(ttl="15m")
    stranger = {**claims_of(token), "jti": "g" + "b" * 26, "nbf": now + 600, "exp": now + 900}
    found, _ = verdict(cli, mint(stranger, world.signer.seed, world.signer.kid))
    assert (found["reason"], found["grant"]) == ("not_yet_valid", None)
    assert rfc3339(now + 600) in found["detail"]


def test_the_library_decision_carries_the_grant_of_a_time_denial(world: World) -> None:
    issued, token = world.issue(ttl="15m", not_before="+10m")
    early = world.decide(token, at=T)
    late = world.decide(token, at=T + 3600)
    assert (early.reason, late.reason) == (Reason.NOT_YET_VALID, Reason.EXPIRED)
    assert early.grant is not None and late.grant is not None
    assert early.grant.id == late.grant.id == issued.id
    assert early.detail.endswith(f"it starts at {rfc3339(T + 600)}")
