"""Approvals at the HTTP broker, end to end: `nhidel proxy` as real processes in front of a
real HTTPS upstream, curl and httpx as clients, with `POST` and `DELETE` on route `api` marked
for approval although `api:*:*` covers them too, and the human answering from the command line
(`approvals --json`, `approve`, `deny`) while the request is held or after it was answered
`approval_pending`.

One home, one upstream and two proxies for the whole module (one holding requests for the
default 45 s, one for 1 s); each test uses paths and queries of its own."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.processes import audit_records, init_cheaply, isolated_env, ok
from helpers.upstream import SECRET_HEADER, Upstream, https_upstream
from helpers.upstream import curl as find_curl

VALUE = "upstream-secret-0123456789abcdef"


@dataclass
class World:
    env: dict[str, str]
    upstream: Upstream
    held: str  # a proxy holding a marked request up to 45 s
    brief: str  # a proxy holding it 1 s, then answering approval_pending
    logs: list[Path]

    def grant(self) -> tuple[str, str]:
        """(token, grant id) of a grant to `bot` for any method and path of `api`."""
        issued = json.loads(ok(self.env, "grant", "bot", "--scope", "api:*:*", "--ttl", "10m",
                               "--format", "json").stdout)  # fmt: skip
        return issued["token"], issued["id"]

    def pending(self, action: str) -> list[dict[str, Any]]:
        """The pending requests for `action` (`METHOD /path`), oldest first."""
        listed = json.loads(ok(self.env, "approvals", "--json").stdout)
        return [i for i in listed if i["status"] == "pending" and i["call"]["action"] == action]

    def wait_pending(self, action: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = self.pending(action)
            if found:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"no approval request for {action}")

    def records(self, wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """The audit records `wanted` picks, once there are any (decisions are written within
        a second of being made), or none after 10 s."""
        deadline = time.monotonic() + 10
        while True:
            found = [r for r in audit_records(self.env) if wanted(r)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def reached(self, path: str) -> list[dict[str, Any]]:
        """What the upstream received on `path` (below its /v1)."""
        return [r for r in self.upstream.received if r["path"] == "/v1" + path]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("approvals-broker")
    passphrase = root / "passphrase"
    passphrase.write_text("approval tests\n")
    passphrase.chmod(0o600)
    env = isolated_env(root, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(passphrase))
    with https_upstream(root / "upstream-ca") as upstream:
        init_cheaply(env, "--principal", "alice")
        ok(env, "agent", "add", "bot", "--allow", "api:*:*", "--approve", "api:post:*",
           "--approve", "api:delete:*", "--max-ttl", "1h")  # fmt: skip
        ok(env, "secret", "add", "up", input=VALUE + "\n")
        ok(env, "route", "add", "api", upstream.url, "--secret", "up", "--header", SECRET_HEADER,
           "--format", "{secret}", "--ca-file", str(upstream.ca))  # fmt: skip
        logs = [root / "held.log", root / "brief.log"]
        held, held_url = _proxy(env, logs[0])
        brief, brief_url = _proxy(env, logs[1], "--approval-hold", "1s")
        try:
            yield World(env, upstream, held_url, brief_url, logs)
        finally:
            for process in (held, brief):
                process.send_signal(signal.SIGTERM)
                process.wait(30)


def _proxy(env: dict[str, str], log: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "nhidel", "proxy", "--listen", "127.0.0.1:0", *args],
            env=env, cwd=env["HOME"], text=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    assert process.stdout is not None
    url = process.stdout.readline().strip()  # printed once it accepts requests
    if not url:
        process.kill()
        raise AssertionError(log.read_text())
    return process, url


def post(url: str, token: str, body: bytes, method: str = "POST") -> httpx.Response:
    return httpx.request(method, url, content=body, timeout=60,
                         headers={"Authorization": f"Bearer {token}",
                                  "Content-Type": "application/json"})  # fmt: skip


def curl_post(world: World, path: str, token: str, body: bytes) -> subprocess.Popen[str]:
    """curl POSTing `body` (with `Expect: 100-continue`, as curl sends for a large body) to the
    45 s proxy; prints the JSON answer, then the status on a line of its own."""
    process = subprocess.Popen(
        [find_curl(), "-sS", "-X", "POST", "--data-binary", body.decode(),
         "-H", "Expect: 100-continue", "-H", f"Authorization: Bearer {token}",
         "-H", "Content-Type: application/json", "-w", "\n%{http_code}", "--max-time", "60",
         world.held + path],
        text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    return process


def curl_answer(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    out, err = process.communicate(timeout=90)
    assert process.returncode == 0, err
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text)


def test_a_held_post_goes_upstream_once_with_the_secret_after_approve_within_the_hold(
    world: World,
) -> None:
    token, _ = world.grant()
    body = json.dumps({"amount": 1234, "note": "marker-within-the-hold"}).encode()
    process = curl_post(world, "/api/upload?case=within", token, body)
    request = world.wait_pending("POST /upload")
    assert request["summary"].startswith("api POST /upload: ")
    assert "marker-within-the-hold" in request["summary"]
    ok(world.env, "approve", request["id"])
    status, answer = curl_answer(process)
    assert status == 200
    assert answer == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    (seen,) = [r for r in world.reached("/upload") if r["query"] == "case=within"]
    assert dict(seen["headers"])[SECRET_HEADER] == VALUE
    allowed = world.records(lambda r: r["event"] == "http.allowed"
                            and r.get("approval") == request["id"])  # fmt: skip
    assert len(allowed) == 1 and allowed[0]["path"] == "/upload"
    audit = (Path(world.env["NHIDEL_HOME"]) / "audit.jsonl").read_text()
    for written in (audit, *(log.read_text() for log in world.logs)):
        assert "marker-within-the-hold" not in written  # a body is never logged


def test_a_held_request_denied_is_403_approval_denied_and_never_reaches_the_upstream(
    world: World,
) -> None:
    token, _ = world.grant()
    process = curl_post(world, "/api/denied", token, b'{"amount": 99}')
    request = world.wait_pending("POST /denied")
    ok(world.env, "deny", request["id"], "--reason", "not today")
    status, answer = curl_answer(process)
    assert status == 403
    assert answer["error"] == "approval_denied" and answer["approval"] == request["id"]
    assert "not today" in answer["detail"]
    assert world.reached("/denied") == []


def test_a_grant_revoked_during_the_hold_is_refused_after_the_yes(world: World) -> None:
    token, grant_id = world.grant()
    process = curl_post(world, "/api/revoked", token, b'{"amount": 5}')
    request = world.wait_pending("POST /revoked")
    ok(world.env, "revoke", grant_id)
    ok(world.env, "approve", request["id"])
    status, answer = curl_answer(process)
    assert (status, answer["error"]) == (401, "revoked")
    assert world.reached("/revoked") == []


def test_a_client_that_goes_away_while_held_withdraws_its_request(world: World) -> None:
    token, _ = world.grant()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(world.held + "/api/gone", content=b"{}", timeout=2,
                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    withdrawn = world.records(lambda r: r["event"] == "approval.lapsed"
                              and r["reason"] == "withdrawn by the client")  # fmt: skip
    assert len(withdrawn) == 1
    assert world.pending("POST /gone") == []
    assert world.reached("/gone") == []


def test_past_the_hold_it_is_pending_with_retry_after_and_the_identical_retry_goes_once(
    world: World,
) -> None:
    token, _ = world.grant()
    url, body = world.brief + "/api/later?n=1", b'{"amount": 10}'
    first = post(url, token, body)
    assert first.status_code == 403
    ident = first.json()["approval"]
    assert first.json() == {"error": "approval_pending", "approval": ident,
                            "hint": f"run nhidel approve {ident}, then retry"}  # fmt: skip
    assert first.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
    assert 1 <= int(first.headers["Retry-After"]) <= 30
    ok(world.env, "approve", ident)
    other_body = post(url, token, b'{"amount": 11}')
    other_query = post(world.brief + "/api/later?n=2", token, body)
    retried = post(url, token, body)
    again = post(url, token, body)
    assert (other_body.status_code, other_body.json()["error"]) == (403, "approval_pending")
    assert (other_query.status_code, other_query.json()["error"]) == (403, "approval_pending")
    assert retried.status_code == 200, retried.text
    assert (again.status_code, again.json()["error"]) == (403, "approval_pending")
    assert again.json()["approval"] != ident  # the yes was spent: a new request
    assert len(world.reached("/later")) == 1


def test_a_held_request_spends_a_use_only_when_it_goes_on(world: World) -> None:
    issued = json.loads(ok(world.env, "grant", "bot", "--scope", "api:*:*", "--uses", "5",
                           "--format", "json").stdout)  # fmt: skip
    url, body = world.brief + "/api/metered", b'{"amount": 5}'
    first = post(url, issued["token"], body)
    assert first.json()["error"] == "approval_pending"
    ok(world.env, "approve", first.json()["approval"])
    assert post(url, issued["token"], body).status_code == 200
    shown = json.loads(ok(world.env, "show", issued["id"], "--json").stdout)
    assert shown["uses"] == 1  # the held attempt spent nothing; the request that went on, one


def test_an_unmarked_request_on_the_same_grant_is_not_held(world: World) -> None:
    token, _ = world.grant()
    answer = httpx.get(world.brief + "/api/plain", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert world.pending("GET /plain") == []
    assert not [
        r
        for r in audit_records(world.env)
        if r["event"] == "http.allowed" and r["path"] == "/plain" and "approval" in r
    ]


def test_approve_for_covers_identical_requests_and_not_another_path_method_or_body(
    world: World,
) -> None:
    token, _ = world.grant()
    url, body = world.brief + "/api/window", b'{"amount": 7}'
    ident = post(url, token, body).json()["approval"]
    ok(world.env, "approve", ident, "--for", "10m")
    one, two = post(url, token, body), post(url, token, body)
    assert (one.status_code, two.status_code) == (200, 200)
    for refused in (
        post(world.brief + "/api/window2", token, body),
        post(url, token, body, method="DELETE"),
        post(url, token, b'{"amount": 8}'),
        post(url + "?page=2", token, body),
    ):
        assert (refused.status_code, refused.json()["error"]) == (403, "approval_pending")
    assert len(world.reached("/window")) == 2 and world.reached("/window2") == []


def test_approve_for_any_args_widens_only_the_body_and_query(world: World) -> None:
    token, _ = world.grant()
    url = world.brief + "/api/wide"
    ident = post(url + "?q=1", token, b'{"amount": 1}').json()["approval"]
    ok(world.env, "approve", ident, "--for", "10m", "--any-args")
    other_args = post(url + "?q=2", token, b'{"amount": 2}')
    assert other_args.status_code == 200, other_args.text
    for refused in (
        post(url, token, b'{"amount": 1}', method="DELETE"),
        post(world.brief + "/api/wide/more", token, b'{"amount": 1}'),
    ):
        assert (refused.status_code, refused.json()["error"]) == (403, "approval_pending")
    other_token, _ = world.grant()  # another grant of the same agent
    assert post(url + "?q=1", other_token, b'{"amount": 1}').status_code == 403
    assert len(world.reached("/wide")) == 1


def test_a_forged_answer_row_is_not_a_yes(world: World) -> None:
    token, _ = world.grant()
    url, body = world.brief + "/api/forged", b'{"amount": 666}'
    ident = post(url, token, body).json()["approval"]
    answer = {"request": ident, "decision": "granted", "args_sha256": "0", "answered_at": 0,
              "reason": None, "window": None, "extra": None}  # fmt: skip
    db = sqlite3.connect(Path(world.env["NHIDEL_HOME"]) / "ledger.db")
    with db:
        db.execute("UPDATE approvals SET status='granted', answer=?, answer_seal=? WHERE id=?",
                   (json.dumps(answer), "0" * 64, ident))  # fmt: skip
    db.close()
    retried = post(url, token, body)
    assert (retried.status_code, retried.json()["error"]) == (403, "approval_pending")
    assert world.reached("/forged") == []
