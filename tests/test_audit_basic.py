"""The audit log's chain, its silence about tokens, and recovery from a torn last line."""

from __future__ import annotations

import hashlib
import json
import stat
from typing import Any

from support import Cli

from nhidel.audit import GENESIS, AuditLog, event
from nhidel.config import Paths


def read_records(paths: Paths) -> list[dict[str, Any]]:
    return [json.loads(line) for line in paths.audit_file.read_bytes().splitlines()]


def independent_hash(record: dict[str, Any]) -> str:
    body = {key: value for key, value in record.items() if key != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_records_chain_each_prev_is_the_previous_hash_and_seq_increments(
    ready: Cli, paths: Paths
) -> None:
    token = ready.ok("grant", "reviewer", "--scope", "repo:read:acme/api").stdout.strip()
    ready("verify", "-", "--scope", "repo:read:acme/api", input=token)
    ready("verify", "-", "--scope", "repo:write:acme/api", input=token)
    records = read_records(paths)
    events = [r["event"] for r in records]
    assert events[:2] == ["key.created", "agent.added"]
    assert {"grant.issued", "verify.allowed", "verify.denied"} <= set(events)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["prev"] == GENESIS
    for before, after in zip(records, records[1:], strict=False):
        assert after["prev"] == before["hash"]
    for record in records:
        assert record["hash"] == independent_hash(record)


def test_batched_appends_continue_the_chain(paths: Paths) -> None:
    log = AuditLog(paths)
    first = log.append([event("agent.added", agent="a"), event("agent.added", agent="b")])
    second = log.append([event("agent.removed", agent="a")])
    assert [r["seq"] for r in first + second] == [1, 2, 3]
    assert second[0]["prev"] == first[1]["hash"]
    assert read_records(paths) == first + second
    assert log.append([]) == []
    assert len(read_records(paths)) == 3


def test_no_token_appears_in_the_log_after_grant_and_verify(ready: Cli, paths: Paths) -> None:
    token = ready.ok(
        "grant",
        "reviewer",
        "--scope",
        "repo:read:acme/api",
        "--uses",
        "2",
        "--reason",
        "review PR 7",
    ).stdout.strip()
    assert token.count(".") == 2
    ready.ok("verify", "-", "--scope", "repo:read:acme/api", input=token)
    ready.ok("verify", "-", "--scope", "repo:read:acme/api", "--consume", input=token)
    ready("verify", "-", "--scope", "repo:write:acme/api", input=token)
    ready("verify", "-", "--any-scope", input=token + "tampered")
    content = paths.audit_file.read_bytes()
    assert b"review PR 7" in content and b"grant.used" in content  # the log did record them
    for piece in (token, *token.split(".")):
        assert piece.encode() not in content


def test_the_log_is_a_0600_file(ready: Cli, paths: Paths) -> None:
    assert stat.S_IMODE(paths.audit_file.stat().st_mode) == 0o600


def test_a_torn_last_line_is_reported_by_a_log_recovered_record(paths: Paths) -> None:
    log = AuditLog(paths)
    (good,) = log.append([event("agent.added", agent="a")])
    fragment = b'{"event":"agent.added","agent":"b","se'
    with paths.audit_file.open("ab") as handle:
        handle.write(fragment)

    recovered, following = log.append([event("agent.removed", agent="a")])

    assert recovered["event"] == "log.recovered"
    assert recovered["fragment_bytes"] == len(fragment)
    assert recovered["fragment_sha256"] == hashlib.sha256(fragment).hexdigest()
    assert (recovered["seq"], recovered["prev"]) == (good["seq"] + 1, good["hash"])
    assert (following["seq"], following["prev"]) == (recovered["seq"] + 1, recovered["hash"])
    lines = paths.audit_file.read_bytes().split(b"\n")
    # The fragment stays where it was, ended by a newline: reported, never silently dropped.
    assert lines[1] == fragment
    assert [json.loads(line)["event"] for line in (lines[0], lines[2], lines[3])] == [
        "agent.added",
        "log.recovered",
        "agent.removed",
    ]
    assert lines[4] == b""


def test_a_log_holding_only_a_torn_line_restarts_from_genesis_and_reports_it(
    paths: Paths,
) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.audit_file.write_bytes(b'{"seq":1,"ev')
    recovered, _ = AuditLog(paths).append([event("agent.added", agent="a")])
    assert recovered["event"] == "log.recovered"
    assert recovered["prev"] == GENESIS
