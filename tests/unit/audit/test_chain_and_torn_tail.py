"""The audit log's chain, its silence about tokens, and recovery from a torn last line."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any

import pytest
from helpers.audit_lines import GENESIS, assert_chained, audit_lines, line_sha256
from helpers.support import Cli

from nhidel.audit import AuditKeys, AuditLog, event
from nhidel.audit.writer import TORN_MARK
from nhidel.keys.keystore import open_keystore
from nhidel.keys.principal import load_trust
from nhidel.paths import Paths


def read_records(paths: Paths) -> list[dict[str, Any]]:
    """The records on disk, without their seals (what append returns)."""
    records = [json.loads(line) for line in paths.audit_file.read_bytes().splitlines()]
    for record in records:
        record.pop("seal")
    return records


@pytest.fixture
def log(paths: Paths) -> AuditLog:
    """A writer with its own audit key and no keystore (so no high-water mark)."""
    return AuditLog(paths, AuditKeys(os.urandom(32), None))


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
    # Recomputed with hashlib/hmac: each prev is the SHA-256 of the line before, and each
    # seal the HMAC of its body under the audit key in the keystore.
    key = load_trust(open_keystore(paths, env={})).audit_key
    assert_chained(audit_lines(paths.audit_file), key=key)


def test_batched_appends_continue_the_chain(paths: Paths, log: AuditLog) -> None:
    first = log.append([event("agent.added", agent="a"), event("agent.added", agent="b")])
    second = log.append([event("agent.removed", agent="a")])
    assert [r["seq"] for r in first + second] == [1, 2, 3]
    assert second[0]["prev"] == line_sha256(audit_lines(paths.audit_file)[1])
    assert_chained(audit_lines(paths.audit_file), key=log.keys.seal_key)  # type: ignore[union-attr]
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


def test_a_torn_last_line_is_reported_by_a_log_recovered_record(
    paths: Paths, log: AuditLog
) -> None:
    (good,) = log.append([event("agent.added", agent="a")])
    good_line = paths.audit_file.read_bytes().rstrip(b"\n")
    fragment = b'{"event":"agent.added","agent":"b","se'
    with paths.audit_file.open("ab") as handle:
        handle.write(fragment)

    recovered, following = log.append([event("agent.removed", agent="a")])

    assert recovered["event"] == "log.recovered"
    assert recovered["fragment_bytes"] == len(fragment)
    assert recovered["fragment_sha256"] == hashlib.sha256(fragment).hexdigest()
    lines = paths.audit_file.read_bytes().split(b"\n")
    assert (recovered["seq"], recovered["prev"]) == (good["seq"] + 1, line_sha256(good_line))
    assert (following["seq"], following["prev"]) == (recovered["seq"] + 1, line_sha256(lines[2]))
    # The fragment stays where it was, ended so it never parses as a record: reported, never
    # silently dropped, never shown as a record.
    assert lines[1] == fragment + TORN_MARK
    assert [json.loads(line)["event"] for line in (lines[0], lines[2], lines[3])] == [
        "agent.added",
        "log.recovered",
        "agent.removed",
    ]
    assert lines[4] == b""


def test_a_log_holding_only_a_torn_line_restarts_from_genesis_and_reports_it(
    paths: Paths, log: AuditLog
) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.audit_file.write_bytes(b'{"seq":1,"ev')
    recovered, _ = log.append([event("agent.added", agent="a")])
    assert recovered["event"] == "log.recovered"
    assert recovered["prev"] == GENESIS
