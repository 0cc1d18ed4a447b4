"""Approvals at the stdio MCP gateway, end to end: `nhidel mcp run` between the official `mcp`
SDK client and the filesystem reference server, with `write_file` marked for approval, and the
human answering from the command line (`approvals --json`, `approve`, `deny`) as another
process while the call is held."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.mcp_servers import nhidel_command, require_sdk, server_binary
from helpers.processes import (
    REPO,
    audit_records,
    init_cheaply,
    isolated_env,
    list_all,
    ok,
    run,
)

pytestmark = pytest.mark.usefixtures("sdk")
RESOURCE_ARGS = ("read_text_file=path", "write_file=path", "create_directory=path")
HELD_CLIENT = REPO / "tests" / "mcp_servers" / "held_call_client.mjs"


@pytest.fixture
def sdk() -> None:
    require_sdk()


class World:
    """A home with the filesystem server registered and agent `bot`, whose `write_file` and
    `create_directory` calls need a yes although the unmarked `fs:*:*` covers them too."""

    def __init__(self, root: Path) -> None:
        passphrase = root / "passphrase"
        passphrase.write_text("approval tests\n")
        passphrase.chmod(0o600)
        self.env = isolated_env(root, NHIDEL_KEYSTORE="file",
                                NHIDEL_PASSPHRASE_FILE=str(passphrase))  # fmt: skip
        self.allowed = root / "allowed"
        self.allowed.mkdir()
        init_cheaply(self.env, "--principal", "alice")
        args = [a for pair in RESOURCE_ARGS for a in ("--resource-arg", pair)]
        ok(self.env, "mcp", "add", "fs", *args, "--root", str(self.allowed), "--",
           str(server_binary("mcp-server-filesystem")), str(self.allowed))  # fmt: skip
        ok(self.env, "agent", "add", "bot", "--allow", "fs:*", "--allow", "fs:*:*",
           "--approve", "fs:write_file:*", "--approve", "fs:create_directory:*")  # fmt: skip

    def gateway(self, *hold: str, minted: bool = True) -> tuple[str, list[str]]:
        """`nhidel mcp run` for `bot` (each run with a grant of its own, unless not `minted`:
        then with the grant in NHIDEL_TOKEN)."""
        scopes = ("--scope", "fs:*", "--scope", "fs:*:*") if minted else ()
        return nhidel_command("mcp", "run", "fs", "--agent", "bot", *scopes, *hold)

    def session(
        self, body: Callable[[Any], Awaitable[Any]], *hold: str, token: str | None = None
    ) -> Any:
        """`body(session)` through `mcp run` with a grant it mints, or with `token`."""
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        program, argv = self.gateway(*hold, minted=token is None)
        env = {**self.env, "NHIDEL_TOKEN": token} if token else self.env
        params = StdioServerParameters(command=program, args=argv, env=env)

        async def main() -> Any:
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return await body(session)

        return asyncio.run(asyncio.wait_for(main(), 90))

    def pending(self) -> list[dict[str, Any]]:
        listed = json.loads(ok(self.env, "approvals", "--json").stdout)
        return [item for item in listed if item["status"] == "pending"]

    def answer_when_asked(self, *command: str) -> threading.Thread:
        """In another thread: wait for one pending request, then run `nhidel COMMAND ID`."""

        def answer() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                found = self.pending()
                if found:
                    ok(self.env, *command, found[0]["id"])
                    return
                time.sleep(0.3)

        thread = threading.Thread(target=answer)
        thread.start()
        return thread


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def write(session: Any, name: str, content: str) -> Awaitable[Any]:
    return session.call_tool("write_file", {"path": name, "content": content})


def text_of(result: Any) -> str:
    return "".join(getattr(part, "text", "") for part in result.content)


def test_a_call_both_a_marked_and_an_unmarked_scope_cover_is_held_and_goes_on_after_approve(
    world: World,
) -> None:
    target = str(world.allowed / "paid.txt")
    thread = world.answer_when_asked("approve")
    result = world.session(lambda s: write(s, target, "pay 10"))
    thread.join()
    assert not result.isError, text_of(result)
    assert Path(target).read_text() == "pay 10"
    requested = audit_records(world.env)
    events = [r["event"] for r in requested]
    assert events.count("approval.requested") == 1  # fs:*:* alone would have let it through
    assert events.count("approval.granted") == 1
    assert events.count("approval.used") == 1
    allowed = [r for r in requested if r["event"] == "tool.allowed"]
    assert (
        allowed[-1]["approval"]
        == [r for r in requested if r["event"] == "approval.requested"][0]["approval"]
    )


def test_a_held_call_is_refused_after_deny_and_never_reaches_the_server(world: World) -> None:
    target = world.allowed / "denied.txt"
    thread = world.answer_when_asked("deny", "--reason", "not today")
    result = world.session(lambda s: write(s, str(target), "pay 99"))
    thread.join()
    assert result.isError
    assert "approval_denied" in text_of(result)
    assert "not today" in text_of(result)
    assert not target.exists()


def test_unmarked_calls_are_not_held(world: World) -> None:
    (world.allowed / "a.txt").write_text("alpha")
    result = world.session(
        lambda s: s.call_tool("read_text_file", {"path": str(world.allowed / "a.txt")})
    )
    assert "alpha" in text_of(result)
    assert not [r for r in audit_records(world.env) if r["event"].startswith("approval.")]


def test_past_the_hold_the_identical_retry_goes_once_after_approve(world: World) -> None:
    target = world.allowed / "later.txt"

    async def body(session: Any) -> tuple[Any, ...]:
        first = await write(session, str(target), "v1")
        ident = world.pending()[0]["id"]
        different = await write(session, str(target), "v2")  # another argument: its own request
        await asyncio.to_thread(ok, world.env, "approve", ident)
        retried = await write(session, str(target), "v1")
        again = await write(session, str(target), "v1")  # the yes was spent
        return first, different, retried, again

    first, different, retried, again = world.session(body, "--approval-hold", "1s")
    assert first.isError and "approval_pending" in text_of(first)
    assert different.isError and "approval_pending" in text_of(different)
    assert not retried.isError, text_of(retried)
    assert again.isError and "approval_pending" in text_of(again)
    assert target.read_text() == "v1"


def test_approve_for_a_window_covers_identical_calls_and_nothing_else(world: World) -> None:
    target = world.allowed / "window.txt"

    async def body(session: Any) -> tuple[Any, ...]:
        await write(session, str(target), "same")
        ident = world.pending()[0]["id"]
        await asyncio.to_thread(ok, world.env, "approve", ident, "--for", "10m")
        one = await write(session, str(target), "same")
        two = await write(session, str(target), "same")
        other = await write(session, str(target), "other")
        return one, two, other

    one, two, other = world.session(body, "--approval-hold", "1s")
    assert not one.isError and not two.isError
    assert other.isError and "approval_pending" in text_of(other)


def test_a_forged_answer_in_the_ledger_is_not_a_yes(world: World) -> None:
    import sqlite3

    target = world.allowed / "forged.txt"

    async def body(session: Any) -> tuple[Any, Any]:
        first = await write(session, str(target), "x")
        ident = world.pending()[0]["id"]
        db = sqlite3.connect(Path(world.env["NHIDEL_HOME"]) / "ledger.db")
        answer = {"request": ident, "decision": "granted", "args_sha256": "0", "answered_at": 0,
                  "reason": None, "window": None, "extra": None}  # fmt: skip
        with db:
            db.execute("UPDATE approvals SET status='granted', answer=?, answer_seal=? WHERE id=?",
                       (json.dumps(answer), "0" * 64, ident))  # fmt: skip
        db.close()
        return first, await write(session, str(target), "x")

    first, retried = world.session(body, "--approval-hold", "1s")
    assert first.isError and retried.isError
    assert not target.exists()
    assert run(world.env, "audit", "verify").code == 5


def test_a_held_call_spends_a_use_only_when_it_goes_on(world: World) -> None:
    token = ok(world.env, "grant", "bot", "--scope", "fs:*:*", "--uses", "5").stdout.strip()
    target = world.allowed / "once.txt"

    async def body(session: Any) -> tuple[Any, Any]:
        first = await write(session, str(target), "one")
        await asyncio.to_thread(ok, world.env, "approve", world.pending()[0]["id"])
        return first, await write(session, str(target), "one")

    first, retried = world.session(body, "--approval-hold", "1s", token=token)
    assert "approval_pending" in text_of(first)
    assert not retried.isError, text_of(retried)
    (grant,) = list_all(world.env)
    assert grant["uses"] == 1  # the held attempt spent nothing; the call that went on, one


def test_approve_for_any_args_widens_the_arguments_only_not_the_tool_resource_or_grant(
    world: World,
) -> None:
    target, elsewhere = world.allowed / "wide.txt", world.allowed / "elsewhere.txt"

    async def body(session: Any) -> tuple[Any, ...]:
        await write(session, str(target), "asked")
        ident = world.pending()[0]["id"]
        await asyncio.to_thread(ok, world.env, "approve", ident, "--for", "10m", "--any-args")
        other_args = await write(session, str(target), "other")
        other_resource = await write(session, str(elsewhere), "asked")
        other_tool = await session.call_tool("create_directory", {"path": str(target)})
        return other_args, other_resource, other_tool

    other_args, other_resource, other_tool = world.session(body, "--approval-hold", "1s")
    assert not other_args.isError, text_of(other_args)
    assert "approval_pending" in text_of(other_resource)
    assert "approval_pending" in text_of(other_tool)
    # The next session has a grant of its own: the window is not its.
    other_grant = world.session(lambda s: write(s, str(target), "other"), "--approval-hold", "1s")
    assert "approval_pending" in text_of(other_grant)
    assert target.read_text() == "other" and not elsewhere.exists()


def raw_call(process: subprocess.Popen[bytes], line: dict[str, Any]) -> None:
    assert process.stdin is not None
    process.stdin.write(json.dumps(line).encode() + b"\n")
    process.stdin.flush()


def exchange(process: subprocess.Popen[bytes], line: dict[str, Any]) -> dict[str, Any]:
    """Send one request; its answer (the next line)."""
    assert process.stdout is not None
    raw_call(process, line)
    answer: dict[str, Any] = json.loads(process.stdout.readline())
    return answer


def raw_session(world: World) -> subprocess.Popen[bytes]:
    """`nhidel mcp run` spoken to line by line, initialized."""
    program, argv = world.gateway()
    process = subprocess.Popen([program, *argv], env=world.env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert process.stdout is not None
    raw_call(process, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})  # fmt: skip
    assert "result" in json.loads(process.stdout.readline())
    raw_call(process, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    return process


def end(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    process.wait(30)


def write_line(ident: int, path: Path) -> bytes:
    params = {"name": "write_file", "arguments": {"path": str(path), "content": "x"}}
    return json.dumps(
        {"jsonrpc": "2.0", "id": ident, "method": "tools/call", "params": params}
    ).encode()


def cancel_line(ident: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled",
                       "params": {"requestId": ident, "reason": "gave up"}}).encode()  # fmt: skip


def test_a_call_the_client_cancels_withdraws_its_request_and_it_cannot_be_approved(
    world: World,
) -> None:
    process = raw_session(world)
    assert process.stdin is not None and process.stdout is not None
    target = world.allowed / "cancelled.txt"
    try:
        process.stdin.write(write_line(2, target) + b"\n")
        process.stdin.flush()
        deadline = time.monotonic() + 30
        while not world.pending() and time.monotonic() < deadline:
            time.sleep(0.2)
        ident = world.pending()[0]["id"]
        process.stdin.write(cancel_line(2) + b"\n")
        process.stdin.flush()
        while world.pending() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert exchange(process, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"})["id"] == 3
    finally:
        end(process)
    listed = {item["id"]: item for item in json.loads(ok(world.env, "approvals", "--json",
                                                         "--all").stdout)}  # fmt: skip
    assert listed[ident]["status"] == "lapsed"
    lapsed = [r for r in audit_records(world.env) if r["event"] == "approval.lapsed"]
    assert [(r["approval"], r["reason"]) for r in lapsed] == [(ident, "withdrawn by the client")]
    refused = run(world.env, "approve", ident)
    assert refused.code != 0, refused
    assert not target.exists()


def test_a_call_cancelled_before_it_was_held_leaves_its_id_free_and_no_request(
    world: World,
) -> None:
    process = raw_session(world)
    assert process.stdin is not None
    (world.allowed / "a.txt").write_text("alpha")
    try:
        process.stdin.write(write_line(2, world.allowed / "never.txt") + b"\n" + cancel_line(2)
                            + b"\n")  # fmt: skip
        process.stdin.flush()
        read = {"name": "read_text_file", "arguments": {"path": str(world.allowed / "a.txt")}}
        reused = exchange(process, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                    "params": read})  # fmt: skip
    finally:
        end(process)
    assert "alpha" in json.dumps(reused), reused
    assert world.pending() == []


def test_the_typescript_sdk_client_gets_approval_pending_before_its_default_timeout(
    world: World,
) -> None:
    """Nobody answers: with the default hold (45 s), the TypeScript SDK's client, with its
    default request timeout (60 s), gets a tool result saying approval_pending, not -32001."""
    target = world.allowed / "unanswered.txt"
    program, argv = world.gateway()
    done = subprocess.run(
        ["node", str(HELD_CLIENT), "write_file", json.dumps({"path": str(target),
                                                             "content": "x"}), program, *argv],
        env=world.env, cwd=HELD_CLIENT.parent, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[-1])
    assert "error" not in answer, answer
    assert answer["result"]["isError"] is True
    assert "approval_pending" in answer["result"]["content"][0]["text"]
    assert not target.exists()
