"""Approvals at the MCP gateway over Streamable HTTP (`nhidel proxy` at /mcp/SERVER), end to
end: the official SDK's HTTP client holding nothing but its grant, the human answering from
the command line while the call is held. One daemon with the default hold serves the module,
another with a short one what happens past it; `bot`'s `fs:write_file:*` and `fake:progress`
are marked."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.mcp_daemon import ACCEPT, VERSION, Daemon
from helpers.processes import ok, run


def marking(root: Path, *options: str) -> Iterator[Daemon]:
    running = Daemon(root, *options)
    ok(running.env, "agent", "update", "bot", "--approve", "fs:write_file:*",
       "--approve", "fake:progress")  # fmt: skip
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from marking(tmp_path_factory.mktemp("approvals-http"))


@pytest.fixture(scope="module")
def brief(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from marking(tmp_path_factory.mktemp("approvals-http-brief"), "--approval-hold", "1s")


def pending(daemon: Daemon) -> list[dict[str, Any]]:
    listed = json.loads(ok(daemon.env, "approvals", "--json").stdout)
    return [item for item in listed if item["status"] == "pending"]


def wait_for_request(daemon: Daemon) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = pending(daemon)
        if found:
            return str(found[0]["id"])
        time.sleep(0.2)
    raise AssertionError("no approval request was opened")


def answer_when_asked(daemon: Daemon, *command: str, after: float = 0.0) -> threading.Thread:
    """In another thread: wait for one pending request (then `after` s), run `nhidel COMMAND ID`."""

    def answer() -> None:
        ident = wait_for_request(daemon)
        time.sleep(after)
        ok(daemon.env, *command, ident)

    thread = threading.Thread(target=answer)
    thread.start()
    return thread


def test_a_held_call_goes_on_after_approve_within_the_hold(daemon: Daemon) -> None:
    token, _ = daemon.grant("bot", "fs:*", "fs:*:*")
    client = daemon.client("fs", token)
    target = daemon.allowed / "approved.txt"
    thread = answer_when_asked(daemon, "approve")
    answer = client.call("write_file", path=str(target), content="pay 10")
    thread.join()
    assert not answer["isError"], answer
    assert target.read_text() == "pay 10"


def test_a_held_call_is_refused_after_deny(daemon: Daemon) -> None:
    token, _ = daemon.grant("bot", "fs:*", "fs:*:*")
    client = daemon.client("fs", token)
    target = daemon.allowed / "denied.txt"
    thread = answer_when_asked(daemon, "deny", "--reason", "not today")
    answer = client.call("write_file", path=str(target), content="pay 99")
    thread.join()
    assert answer["isError"] and "approval_denied" in answer["text"], answer
    assert "not today" in answer["text"]
    assert not target.exists()


def test_past_the_hold_pending_then_the_identical_retry_goes_after_approve(brief: Daemon) -> None:
    token, _ = brief.grant("bot", "fs:*", "fs:*:*")
    client = brief.client("fs", token)
    target = brief.allowed / "later.txt"
    first = client.call("write_file", path=str(target), content="v1")
    assert first["isError"] and "approval_pending" in first["text"], first
    ident = wait_for_request(brief)
    ok(brief.env, "approve", ident)
    retried = client.call("write_file", path=str(target), content="v1")
    assert not retried["isError"], retried
    assert target.read_text() == "v1"
    assert [r["approval"] for r in brief.records("approval.used")].count(ident) == 1


def test_a_held_call_gets_progress_then_the_servers_own_progress_comes_after_it(
    daemon: Daemon,
) -> None:
    """Approved once the gateway's first progress notification came (approval_hold.TICK)."""
    token, _ = daemon.grant("bot", "fake:*")
    session = daemon.open_session("fake", token)
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "progress", "_meta": {"progressToken": "p"}}}  # fmt: skip
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token}", "Mcp-Session-Id": session,
               "MCP-Protocol-Version": VERSION}  # fmt: skip
    held: list[float] = []
    served: list[float] = []
    with daemon.http.stream("POST", "/mcp/fake", json=call, headers=headers) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line.removeprefix("data:"))
            if "id" in message:
                result = message["result"]
                break
            params = message["params"]  # the gateway's say what they wait for; the server's not
            (held if "message" in params else served).append(params["progress"])
            if len(held) == 1 and not served:
                ok(daemon.env, "approve", wait_for_request(daemon))
    assert result["content"][0]["text"] == "progress" and not result.get("isError"), result
    assert held and len(served) == 2, (held, served)
    assert min(served) > max(held) and served == sorted(served), (held, served)


def test_a_held_call_the_client_cancels_is_withdrawn_and_cannot_be_approved(
    daemon: Daemon,
) -> None:
    token, _ = daemon.grant("bot", "fs:*", "fs:*:*")
    session = daemon.open_session("fs", token)
    target = daemon.allowed / "cancelled.txt"
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": "write_file", "arguments": {"path": str(target), "content": "x"}}}  # fmt: skip
    answers: list[Any] = []
    poster = threading.Thread(target=lambda: answers.append(
        daemon.post("fs", call, token, session, Accept="application/json")))  # fmt: skip
    poster.start()
    ident = wait_for_request(daemon)
    cancelled = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                 "params": {"requestId": 5, "reason": "gave up"}}  # fmt: skip
    assert daemon.post("fs", cancelled, token, session).status_code == 202
    poster.join(30)
    assert "cancelled by the client" in answers[0].text, answers[0].text
    listed = {i["id"]: i for i in json.loads(ok(daemon.env, "approvals", "--json", "--all").stdout)}
    assert listed[ident]["status"] == "lapsed"
    lapsed = [r for r in daemon.records("approval.lapsed") if r["approval"] == ident]
    assert [r["reason"] for r in lapsed] == ["withdrawn by the client"]
    assert run(daemon.env, "approve", ident).code != 0
    assert not target.exists()
