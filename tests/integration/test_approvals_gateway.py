"""Approvals at the stdio MCP gateway, end to end: `nhidel mcp run` between the official `mcp`
SDK client and the filesystem reference server, with `write_file` marked for approval, and the
human answering from the command line (`approvals --json`, `approve`, `deny`) as another
process while the call is held."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.mcp_servers import nhidel_command, require_sdk, server_binary
from helpers.processes import audit_records, init_cheaply, isolated_env, list_all, ok, run

pytestmark = pytest.mark.usefixtures("sdk")
RESOURCE_ARGS = ("read_text_file=path", "write_file=path")


@pytest.fixture
def sdk() -> None:
    require_sdk()


class World:
    """A home with the filesystem server registered and agent `bot`, whose `write_file` calls
    need a yes although `fs:*:*` covers them too."""

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
           "--approve", "fs:write_file:*")  # fmt: skip

    def session(
        self, body: Callable[[Any], Awaitable[Any]], *hold: str, token: str | None = None
    ) -> Any:
        """`body(session)` through `mcp run` with a grant it mints, or with `token`."""
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        minted = () if token else ("--scope", "fs:*", "--scope", "fs:*:*")
        program, argv = nhidel_command("mcp", "run", "fs", "--agent", "bot", *minted, *hold)
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


def test_a_held_call_goes_on_after_approve_within_the_hold(world: World) -> None:
    target = str(world.allowed / "paid.txt")
    thread = world.answer_when_asked("approve")
    result = world.session(lambda s: write(s, target, "pay 10"))
    thread.join()
    assert not result.isError, text_of(result)
    assert Path(target).read_text() == "pay 10"
    requested = audit_records(world.env)
    events = [r["event"] for r in requested]
    assert events.count("approval.requested") == 1
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
