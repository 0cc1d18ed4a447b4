"""The local verifier's audit records are built by `nhidel.audit.records.event()`, like every
other record, and keep the documented fields."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers.token_world import SCOPE, T, World

from nhidel.audit import records
from nhidel.models import Grant
from nhidel.verifiers import local
from nhidel.verifiers.local import Verifier

# What the writer adds to a record's content: its chain, its time, a group commit's count.
WRITER_FIELDS = {"v", "seq", "prev", "nhidel", "sid", "time", "seal", "count", "last_time"}
DECISION_FIELDS = {"event", "principal", "agent", "grant", "scopes", "expires_at", "reason",
                   "token_fp", "requested", "aud", "outcome"}  # fmt: skip


def test_every_decision_and_use_record_is_built_by_event(
    world: World, granted: tuple[Grant, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[dict[str, Any]] = []

    def spy(name: str, **fields: Any) -> dict[str, Any]:
        content = records.event(name, **fields)
        built.append(dict(content))
        return content

    monkeypatch.setattr(local, "event", spy)
    grant, token = granted
    with Verifier(world.paths, world.keystore, clock=lambda: T) as verifier:
        assert verifier.check(token, [SCOPE]).allowed
        assert not verifier.check(token, ["repo:write:acme/api"]).allowed
        assert not verifier.check("not a token", [SCOPE]).allowed
        assert verifier.check(token, [SCOPE], consume=True).allowed
    logged = [json.loads(line) for line in world.paths.audit_file.read_bytes().splitlines()]
    written = [
        {k: v for k, v in record.items() if k not in WRITER_FIELDS}
        for record in logged
        if record["event"] in ("verify.allowed", "verify.denied", "grant.used")
    ]
    assert [r["event"] for r in written] == [
        "verify.allowed", "verify.denied", "verify.denied", "verify.allowed", "grant.used",
    ]  # fmt: skip
    assert all(record in built for record in written)
    assert {frozenset(r) for r in written if r["event"] != "grant.used"} == {
        frozenset(DECISION_FIELDS)
    }
    assert written[0]["grant"] == grant.id and written[0]["outcome"] == "allowed"
    assert written[2]["outcome"] == "malformed" and written[2]["grant"] is None
