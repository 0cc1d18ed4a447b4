"""`nhidel request` through nhidel's files, and the human's side of it, in-process: a request
file is taken in sealed and marked unauthenticated, `approve` delivers the token sealed to the
requester's one-time key (and nowhere in plaintext), and the forgeries an agent that writes
nhidel's files would try are refused or shown for what they are."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from helpers.support import Cli

from nhidel.actions.approvals import new_approval_id
from nhidel.actions.grant_requests import (
    OneTimeKey,
    asked,
    lapse_for,
    outcome_in_files,
    write_file,
)
from nhidel.cli.common import now
from nhidel.errors import IntegrityError
from nhidel.paths import Paths

SCOPE = "repo:read:acme/api"


def file_request(paths: Paths, key: OneTimeKey, *, scope: str = SCOPE, ttl: int = 600) -> str:
    """A request written as `nhidel request --via files` writes it; its id."""
    approval_id = new_approval_id()
    write_file(paths, approval_id, asked("reviewer", [scope], ttl, "read the api", key.pubkey),
               now=now(), lapses_at=lapse_for(None, now()))  # fmt: skip
    return approval_id


def listed(cli: Cli) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in json.loads(cli.ok("approvals", "--json").stdout)}


def audit(paths: Paths) -> list[dict[str, Any]]:
    return [json.loads(line) for line in paths.audit_file.read_text().splitlines()]


def stored_bytes(paths: Paths) -> bytes:
    """Everything nhidel keeps in its state directory, as bytes."""
    return b"".join(p.read_bytes() for p in paths.state_dir.rglob("*") if p.is_file())


def test_a_file_request_is_taken_in_sealed_unauthenticated_and_its_file_removed(
    ready: Cli, paths: Paths
) -> None:
    result = ready.ok("request", "reviewer", "--scope", SCOPE, "--ttl", "10m", "--reason",
                      "read \"the\" api \u2713", "--via", "files")  # fmt: skip
    approval_id = result.stdout.strip()
    assert (paths.requests_dir / approval_id).stat().st_mode & 0o777 == 0o600
    printed = result.stderr.split("key fingerprint ")[1].split()[0]
    item = listed(ready)[approval_id]
    assert item["kind"] == "grant" and item["status"] == "pending"
    assert item["grant_request"] == {
        "agent": "reviewer", "scopes": [SCOPE], "ttl": 600, "fingerprint": printed,
        "authenticated": False, "via": "files", "refusal": None,
    }  # fmt: skip
    assert "[UNAUTHENTICATED]" in item["summary"] and r"\"the\" api \u2713" in item["summary"]
    assert "UNAUTHENTICATED" in ready.ok("approvals").stdout
    assert not list(paths.requests_dir.iterdir())
    (record,) = [r for r in audit(paths) if r["event"] == "grant.requested"]
    assert record["authenticated"] is False and record["approval"] == approval_id


def test_approve_delivers_the_token_to_the_requesters_key_alone(ready: Cli, paths: Paths) -> None:
    key = OneTimeKey()
    approval_id = file_request(paths, key)
    ready.ok("approvals")
    ready.ok("approve", approval_id)
    outcome = outcome_in_files(paths, approval_id, now=now())
    assert outcome.status == "granted" and outcome.box is not None
    token = key.open(outcome.box)
    verdict = json.loads(ready("verify", "-", "--scope", SCOPE, "--json", input=token).stdout)
    assert verdict["allowed"] is True
    with pytest.raises(IntegrityError):
        OneTimeKey().open(outcome.box)  # anyone else who reads the store: ciphertext only
    stored = stored_bytes(paths)
    assert token.encode() not in stored
    assert token.split(".")[2].encode() not in stored  # not even its signature


def test_a_key_swapped_in_the_sealed_row_breaks_its_seal_and_approve_refuses(
    ready: Cli, paths: Paths
) -> None:
    approval_id = file_request(paths, OneTimeKey())
    ready.ok("approvals")
    thief = OneTimeKey()
    with sqlite3.connect(paths.ledger_file) as db:
        (body,) = db.execute("SELECT body FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        swapped = json.loads(body)
        swapped["pubkey"] = thief.pubkey
        db.execute("UPDATE approvals SET body = ? WHERE id = ?",
                   (json.dumps(swapped, sort_keys=True, separators=(",", ":")),
                    approval_id))  # fmt: skip
    result = ready("approve", approval_id)
    assert result.exit_code == 5, result.stderr
    assert listed(ready)[approval_id]["status"] == "forged"
    assert not [r for r in audit(paths) if r["event"] == "grant.issued"]


def test_a_key_swapped_in_the_file_before_intake_shows_another_fingerprint(
    ready: Cli, paths: Paths
) -> None:
    result = ready.ok("request", "reviewer", "--scope", SCOPE, "--reason", "r", "--via", "files")
    approval_id = result.stdout.strip()
    printed = result.stderr.split("key fingerprint ")[1].split()[0]
    path = paths.requests_dir / approval_id
    filed = json.loads(path.read_text())
    thief = OneTimeKey()
    filed["pubkey"] = thief.pubkey
    path.unlink()
    path.write_text(json.dumps(filed))
    path.chmod(0o600)
    shown = listed(ready)[approval_id]["grant_request"]["fingerprint"]
    assert shown == thief.fingerprint != printed  # the human sees it is not the one printed
    assert thief.fingerprint in ready.ok("approvals", "show", approval_id).stdout


def test_a_request_beyond_the_ceiling_is_shown_so_and_refused_at_approve(
    ready: Cli, paths: Paths
) -> None:
    approval_id = file_request(paths, OneTimeKey(), scope="repo:write:acme/api")
    item = listed(ready)[approval_id]
    assert "beyond agent reviewer's ceiling" in item["grant_request"]["refusal"]
    assert "REFUSED" in ready.ok("approvals").stdout
    assert "BEYOND IT" in ready.ok("approvals", "show", approval_id).stdout
    assert ready("approve", approval_id).exit_code == 6
    assert listed(ready)[approval_id]["status"] == "pending"
    assert not [r for r in audit(paths) if r["event"] in ("grant.issued", "approval.granted")]


def test_a_ttl_over_the_agents_maximum_is_refused_at_approve(ready: Cli, paths: Paths) -> None:
    approval_id = file_request(paths, OneTimeKey(), ttl=2 * 3600)
    assert "maximum" in listed(ready)[approval_id]["grant_request"]["refusal"]
    assert ready("approve", approval_id).exit_code == 6


def test_deny_reaches_the_requester_with_its_reason(ready: Cli, paths: Paths) -> None:
    approval_id = file_request(paths, OneTimeKey())
    ready.ok("deny", approval_id, "--reason", "not today")
    outcome = outcome_in_files(paths, approval_id, now=now())
    assert (outcome.status, outcome.reason, outcome.box) == ("denied", "not today", None)


def test_a_request_file_that_does_not_parse_is_dropped_with_a_warning(
    ready: Cli, paths: Paths
) -> None:
    approval_id = file_request(paths, OneTimeKey())
    path = paths.requests_dir / approval_id
    path.write_text('{"id": "' + approval_id + '", "agent": "reviewer"}')
    result = ready.ok("approvals", "--json")
    assert "dropped" in result.stderr and json.loads(result.stdout) == []
    assert not path.exists()
    assert outcome_in_files(paths, approval_id, now=now()).status == "dropped"


def test_a_requester_without_a_token_cannot_send_through_the_daemon(ready: Cli) -> None:
    result = ready("request", "reviewer", "--scope", SCOPE, "--reason", "r", "--via", "daemon",
                   "--daemon", "unix:/nonexistent.sock")  # fmt: skip
    assert result.exit_code == 2 and "NHIDEL_TOKEN" in result.stderr


def test_wait_alone_means_ten_minutes_and_only_for_request() -> None:
    from nhidel.cli.app import with_optional_values

    assert with_optional_values(["request", "a", "--wait"])[-1] == "--wait=10m"
    assert with_optional_values(["--debug", "request", "--wait", "--via", "files"])[2] == (
        "--wait=10m"
    )
    assert with_optional_values(["request", "a", "--wait", "5m"]) == [
        "request",
        "a",
        "--wait",
        "5m",
    ]
    assert with_optional_values(["exec", "--", "x", "--wait"]) == ["exec", "--", "x", "--wait"]
    assert with_optional_values(["request", "a", "--", "--wait"])[-1] == "--wait"
