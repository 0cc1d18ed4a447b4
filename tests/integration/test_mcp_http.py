"""`nhidel proxy` as a real process serving registered MCP servers over Streamable HTTP at
`/mcp/SERVER`, reached through its Unix socket by the official `mcp` SDK's client in a process
of its own that holds nothing but its grant (no keystore, no passphrase, no D-Bus address, an
empty NHIDEL_HOME), and by raw requests for what a well-behaved client never sends.

One daemon serves the module (its sessions are independent); the idle limit gets a daemon of
its own with a short one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.mcp_daemon import (
    DIGEST,
    FAKE_SERVER,
    SECRET_VALUE,
    VERSION,
    WAIT,
    Daemon,
    process_gone,
    wait_for,
)
from helpers.mcp_servers import require_sdk
from helpers.processes import command, ok


@pytest.fixture(scope="module", autouse=True)
def sdk() -> None:
    require_sdk()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = Daemon(tmp_path_factory.mktemp("mcp-http"))
    try:
        yield running
    finally:
        running.stop()


def text_of(answer: dict[str, Any]) -> str:
    return "\n".join(c["text"] for c in answer["result"]["content"] if c["type"] == "text")


# -- through the SDK's client, with the grant alone -----------------------------------------------


def test_a_client_with_its_grant_alone_sees_its_tools_and_a_denied_write_leaves_no_file(
    daemon: Daemon,
) -> None:
    token, grant_id = daemon.grant("bot", f"fs:read_text_file:{daemon.allowed}/*",
                                   "fs:list_allowed_directories")  # fmt: skip
    client = daemon.client("fs", token)
    target = daemon.allowed / "new.txt"
    assert client.tools() == {"read_text_file", "list_allowed_directories"}
    read = client.call("read_text_file", path=str(daemon.allowed / "a.txt"))
    assert read == {"text": "alpha\n", "isError": False, "progress": []}
    write = client.call("write_file", path=str(target), content="x")
    assert write["isError"] and write["text"].startswith("denied: scope_not_granted: ")
    assert not target.exists()

    def decided() -> set[tuple[str, str]]:
        found = daemon.records("tool.allowed") + daemon.records("tool.denied")
        return {(r["event"], r["tool"]) for r in found if r["grant"] == grant_id}

    # (Decisions are written at most a second after they are made.)
    assert wait_for(
        lambda: decided() == {("tool.allowed", "read_text_file"), ("tool.denied", "write_file")}
    ), decided()
    assert list(client.empty.iterdir()) == []  # it never needed an nhidel home


def test_the_registered_secret_reaches_the_child_server_and_never_the_client(
    daemon: Daemon,
) -> None:
    token, _ = daemon.grant("bot", "fake:digest", "fake:leak")
    client = daemon.client("fake", token)
    digest = client.call("digest")["text"]
    assert digest == hashlib.sha256(SECRET_VALUE.encode()).hexdigest()
    leaked = client.call("leak")
    assert leaked["text"] == "my token is [redacted:api-key]"
    assert SECRET_VALUE not in daemon.log()
    assert wait_for(
        lambda: any(r["secret"] == "api-key" for r in daemon.records("secret.redacted"))
    )


def test_the_everything_server_samples_through_the_client_reports_progress_and_hides_the_key(
    daemon: Daemon,
) -> None:
    token, _ = daemon.grant("bot", "every:trigger-sampling-request", "every:get-env",
                            "every:trigger-long-running-operation")  # fmt: skip
    client = daemon.client("every", token)
    sampled = client.call("trigger-sampling-request", prompt="hello")
    assert not sampled["isError"] and "a reply from the client's model" in sampled["text"]
    ran = client.call("trigger-long-running-operation", duration=0.3, steps=3)
    assert not ran["isError"] and ran["progress"] == [1, 2, 3]
    environment = client.call("get-env")["text"]
    assert '"[redacted:api-key]"' in environment and SECRET_VALUE not in environment


def test_progress_reaches_the_client_and_its_notifications_reach_the_server(
    daemon: Daemon,
) -> None:
    token, _ = daemon.grant("bot", "fake:progress", "fake:report")
    client = daemon.client("fake", token)
    assert client.call("progress")["progress"] == [1.0, 2.0]
    client.ask("notify", method="notifications/cancelled", params={"requestId": 99})
    client.ask("notify", method="notifications/progress",
               params={"progressToken": "t1", "progress": 1})  # fmt: skip
    # The server keeps what it received: the call that asks is answered after both.
    received = json.loads(client.call("report")["text"])
    methods = [m.get("method") for m in received]
    assert "notifications/cancelled" in methods and "notifications/progress" in methods


def test_revocation_mid_session_denies_the_next_call_and_stops_the_child_server(
    daemon: Daemon,
) -> None:
    token, grant_id = daemon.grant("bot", "fake:pid")
    client = daemon.client("fake", token)
    pid = int(client.call("pid")["text"])
    ok(daemon.env, "revoke", grant_id)
    again = client.call("pid")
    assert again["isError"] and again["text"].startswith("denied: revoked: ")
    assert wait_for(lambda: process_gone(pid)), "the session's server still runs"


def test_two_agents_at_once_each_see_only_their_own_tools(daemon: Daemon) -> None:
    bot = daemon.client("fake", daemon.grant("bot", "fake:pid")[0])
    other = daemon.client("fake", daemon.grant("other", "fake:digest", "fake:leak")[0])
    assert bot.tools() == {"pid"}
    assert other.tools() == {"digest", "leak"}
    assert bot.call("digest")["text"].startswith("denied: scope_not_granted: ")
    assert not other.call("digest")["isError"]


# -- a stdio client through nhidel mcp connect -----------------------------------------------------


def test_mcp_connect_gives_a_stdio_client_the_same_checks_with_its_grant_alone(
    daemon: Daemon,
) -> None:
    token, grant_id = daemon.grant("bot", f"fs:read_text_file:{daemon.allowed}/*")
    client = daemon.client("fs", token, connect=True)
    target = daemon.allowed / "by-connect.txt"
    assert client.tools() == {"read_text_file"}
    read = client.call("read_text_file", path=str(daemon.allowed / "a.txt"))
    assert read == {"text": "alpha\n", "isError": False, "progress": []}
    write = client.call("write_file", path=str(target), content="x")
    assert write["isError"] and write["text"].startswith("denied: scope_not_granted: ")
    assert not target.exists()
    assert wait_for(lambda: any(r["grant"] == grant_id and r["tool"] == "write_file"
                                for r in daemon.records("tool.denied")))  # fmt: skip
    assert list(client.empty.iterdir()) == []  # no nhidel home, no keystore


def test_mcp_connect_relays_progress_and_the_secret_stays_with_the_server(
    daemon: Daemon,
) -> None:
    token, _ = daemon.grant("bot", "fake:digest", "fake:leak", "fake:progress")
    client = daemon.client("fake", token, connect=True)
    assert client.call("digest")["text"] == DIGEST
    assert client.call("leak")["text"] == "my token is [redacted:api-key]"
    assert client.call("progress")["progress"] == [1.0, 2.0]


def test_mcp_connect_sees_a_revocation_on_the_next_call_and_the_server_stops(
    daemon: Daemon,
) -> None:
    token, grant_id = daemon.grant("bot", "fake:pid")
    client = daemon.client("fake", token, connect=True)
    pid = int(client.call("pid")["text"])
    ok(daemon.env, "revoke", grant_id)
    again = client.call("pid")
    assert again["isError"] and again["text"].startswith("denied: revoked: ")
    assert wait_for(lambda: process_gone(pid)), "the session's server still runs"


def test_mcp_connect_without_a_grant_or_a_socket_says_what_to_do(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NHIDEL_HOME": str(tmp_path)}
    missing = subprocess.run(command("mcp", "connect", str(tmp_path / "s.sock"), "fs"), env=env,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.splitlines()[0] == "error: no grant: NHIDEL_TOKEN is not set"
    env["NHIDEL_TOKEN"] = "x.y.z"
    nowhere = subprocess.run(command("mcp", "connect", str(tmp_path / "s.sock"), "fs"), env=env,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    assert nowhere.returncode == 1, nowhere.stderr
    assert nowhere.stderr.splitlines()[0] == f"error: no daemon socket at {tmp_path}/s.sock"
    assert nowhere.stderr.splitlines()[1].startswith("hint: start nhidel proxy")
    assert list(tmp_path.iterdir()) == []


# -- what the transport refuses --------------------------------------------------------------------


def test_a_grant_for_another_agent_is_refused_on_an_existing_session(daemon: Daemon) -> None:
    bot, _ = daemon.grant("bot", "fake:pid")
    other, _ = daemon.grant("other", "fake:*")
    session = daemon.open_session("fake", bot)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pid"}}
    refused = daemon.post("fake", call, other, session)
    assert (refused.status_code, refused.json()) == (403, {"error": "wrong_agent"})
    assert "WWW-Authenticate" not in refused.headers
    # The session is still its agent's.
    assert not daemon.call("fake", bot, session, "pid")["result"].get("isError")


def test_a_request_without_a_grant_gets_401_and_an_unknown_session_404(daemon: Daemon) -> None:
    token, _ = daemon.grant("bot", "fake:pid")
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    initialize = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}
    missing = daemon.post("fake", initialize, None)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    unreadable = daemon.post("fake", initialize, token[:-4] + "AAAA")
    assert unreadable.status_code == 401
    unknown = daemon.post("fake", ping, token, "no-such-session")
    assert (unknown.status_code, unknown.json()) == (404, {"error": "unknown_session"})
    no_server = daemon.post("nothing", initialize, token)
    assert (no_server.status_code, no_server.json()) == (404, {"error": "unknown_server"})


def test_a_bad_origin_gets_403_and_a_loopback_one_is_served(daemon: Daemon) -> None:
    token, _ = daemon.grant("bot", "fake:pid")
    session = daemon.open_session("fake", token)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    for origin in ("http://evil.example", "http://127.0.0.1.evil.example:8080", "null"):
        answer = daemon.post("fake", ping, token, session, Origin=origin)
        assert (answer.status_code, answer.json()) == (403, {"error": "bad_origin"}), origin
    served = daemon.post("fake", ping, token, session, Origin="http://localhost:3000")
    assert served.status_code == 200 and served.json()["result"] == {}


def test_a_malformed_body_gets_400_with_a_json_rpc_parse_error(daemon: Daemon) -> None:
    token, _ = daemon.grant("bot", "fake:pid")
    session = daemon.open_session("fake", token)
    answer = daemon.post("fake", b'{"jsonrpc": "2.0", "id": 1, "method": ', token, session)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32700 and answer.json()["id"] is None
    batch = daemon.post("fake", [{"jsonrpc": "2.0", "id": 1, "method": "ping"}], token, session)
    assert batch.status_code == 400 and batch.json()["error"]["code"] == -32600
    version = daemon.post("fake", {"jsonrpc": "2.0", "id": 2, "method": "ping"}, token, session,
                          **{"MCP-Protocol-Version": "1900-01-01"})  # fmt: skip
    assert (version.status_code, version.json()) == (400, {"error": "unsupported_protocol_version"})


def test_a_renewed_grant_is_taken_until_the_server_is_stopped_then_the_session_is_over(
    daemon: Daemon,
) -> None:
    first, first_id = daemon.grant("bot", "fake:pid")
    renewed, _ = daemon.grant("bot", "fake:pid", "fake:digest")
    session = daemon.open_session("fake", first)
    assert text_of(daemon.call("fake", renewed, session, "digest")) == DIGEST
    pid = int(text_of(daemon.call("fake", first, session, "pid")))
    ok(daemon.env, "revoke", first_id)
    denied = daemon.call("fake", first, session, "pid")
    assert text_of(denied).startswith("denied: revoked: ")
    assert wait_for(lambda: process_gone(pid))
    over = daemon.post("fake", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, renewed, session)
    assert (over.status_code, over.json()) == (404, {"error": "unknown_session"})


def test_delete_ends_the_session_and_stops_its_server(daemon: Daemon) -> None:
    token, _ = daemon.grant("bot", "fake:pid")
    session = daemon.open_session("fake", token)
    pid = int(text_of(daemon.call("fake", token, session, "pid")))
    headers = {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session}
    assert daemon.http.delete("/mcp/fake", headers=headers).status_code == 204
    assert wait_for(lambda: process_gone(pid))
    assert daemon.post("fake", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, token,
                       session).status_code == 404  # fmt: skip


def test_mcp_remove_takes_effect_on_the_running_daemons_next_request(daemon: Daemon) -> None:
    ok(daemon.env, "mcp", "add", "brief", "--", sys.executable, str(FAKE_SERVER))
    token, _ = daemon.grant("bot", "brief:pid")
    session = daemon.open_session("brief", token)
    pid = int(text_of(daemon.call("brief", token, session, "pid")))
    ok(daemon.env, "mcp", "remove", "brief")
    denied = daemon.call("brief", token, session, "pid")["result"]
    assert denied["isError"] and text_of({"result": denied}).startswith("denied: integrity: ")
    assert wait_for(lambda: process_gone(pid))
    initialize = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}
    assert daemon.post("brief", initialize, token).status_code == 404


# -- limits --------------------------------------------------------------------------------------

SILENT_MARKER = "nhidel-test-silent-server"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    options = ("--session-idle", "3s", "--server-timeout", "1s", "--max-sessions", "2",
               "--max-body", "1M")  # fmt: skip
    running = Daemon(tmp_path_factory.mktemp("mcp-http-limits"), *options)
    try:
        yield running
    finally:
        running.stop()


def end_session(daemon: Daemon, server: str, token: str, session: str) -> None:
    headers = {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session}
    assert daemon.http.delete(f"/mcp/{server}", headers=headers).status_code == 204


def silent_servers() -> list[int]:
    found = []
    for process in Path("/proc").iterdir():
        try:
            command_line = (process / "cmdline").read_bytes() if process.name.isdigit() else b""
        except OSError:
            continue  # it exited meanwhile
        if SILENT_MARKER.encode() in command_line:
            found.append(int(process.name))
    return [pid for pid in found if not process_gone(pid)]


def test_a_silent_server_gets_504_and_is_stopped_while_other_sessions_go_on(
    limited: Daemon,
) -> None:
    ok(limited.env, "mcp", "add", "mute", "--", sys.executable, "-c",
       "import time; time.sleep(600)", SILENT_MARKER)  # fmt: skip
    mute, _ = limited.grant("bot", "mute:*")
    other, _ = limited.grant("other", "fake:pid")
    answers: list[httpx.Response] = []
    initialize = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                  "params": {"protocolVersion": VERSION, "capabilities": {},
                             "clientInfo": {"name": "raw", "version": "1"}}}  # fmt: skip
    waiting = threading.Thread(
        target=lambda: answers.append(limited.post("mute", initialize, mute))
    )
    waiting.start()
    assert wait_for(lambda: bool(silent_servers())), "the silent server never started"
    # While it keeps its session waiting, another session opens and calls.
    session = limited.open_session("fake", other)
    assert text_of(limited.call("fake", other, session, "pid")).isdigit()
    waiting.join(WAIT)
    assert (answers[0].status_code, answers[0].json()) == (504, {"error": "server_timeout"})
    assert wait_for(lambda: not silent_servers()), "the silent server still runs"
    end_session(limited, "fake", other, session)


def test_an_agent_past_its_session_limit_gets_429_and_others_are_not_held_back(
    limited: Daemon,
) -> None:
    ok(limited.env, "agent", "add", "third", "--allow", "fake:*", "--max-ttl", "1h")
    token, _ = limited.grant("third", "fake:pid")
    bot, _ = limited.grant("bot", "fake:pid")
    sessions = [limited.open_session("fake", token) for _ in range(2)]
    initialize = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}
    refused = limited.post("fake", initialize, token)
    assert (refused.status_code, refused.json()) == (429, {"error": "too_many_sessions"})
    assert limited.open_session("fake", bot)  # another agent's sessions are its own
    end_session(limited, "fake", token, sessions[0])
    assert limited.open_session("fake", token)  # one ended: room for one more
    assert wait_for(lambda: any(r.get("reason") == "too_many_sessions"
                                for r in limited.records("http.denied")))  # fmt: skip


def test_a_huge_body_gets_413_and_one_not_json_415(limited: Daemon) -> None:
    token, _ = limited.grant("bot", "fake:pid")
    session = limited.open_session("fake", token)
    huge = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * (2 << 20)}}
    too_large = limited.post("fake", huge, token, session)
    assert (too_large.status_code, too_large.json()) == (413, {"error": "body_too_large"})
    ping = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode()
    text = limited.post("fake", ping, token, session, **{"Content-Type": "text/plain"})
    assert (text.status_code, text.json()) == (415, {"error": "not_json"})
    assert limited.call("fake", token, session, "pid")["result"]  # the session goes on
    end_session(limited, "fake", token, session)


def test_an_idle_session_ends_and_its_server_stops(limited: Daemon) -> None:
    token, _ = limited.grant("bot", "fake:pid")
    session = limited.open_session("fake", token)
    pid = int(text_of(limited.call("fake", token, session, "pid")))
    assert wait_for(lambda: process_gone(pid)), "the idle session's server still runs"
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    assert limited.post("fake", ping, token, session).status_code == 404


def test_sigterm_ends_the_daemon_every_sessions_server_and_mcp_connect(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    try:
        token, _ = daemon.grant("bot", "fake:pid")
        pids = []
        for _ in range(2):
            session = daemon.open_session("fake", token)
            pids.append(int(text_of(daemon.call("fake", token, session, "pid"))))
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NHIDEL_TOKEN": token}
        relay = subprocess.Popen(command("mcp", "connect", str(daemon.socket), "fake"), env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert relay.stdin is not None and relay.stdout is not None
        relay.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                      "params": {"protocolVersion": VERSION, "capabilities": {},
                                                 "clientInfo": {"name": "raw", "version": "1"}}})
                          + "\n"
                          + json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
                          + "\n")  # fmt: skip
        relay.stdin.flush()
        assert json.loads(relay.stdout.readline())["result"]["serverInfo"]
    finally:
        daemon.stop()
    assert daemon.process.returncode == 0, daemon.log()
    assert all(process_gone(pid) for pid in pids)
    # The relay's client sees its server go: the relay ends, saying why.
    _, stderr = relay.communicate(timeout=WAIT)
    assert relay.returncode == 1, stderr
    assert stderr.splitlines()[-2].startswith("error: MCP server fake: the daemon "), stderr
