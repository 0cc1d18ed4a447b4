"""`nhidel mcp run` as a real process between the official `mcp` SDK client and the MCP
reference servers (server-filesystem, server-everything), installed at pinned versions by
tests/run.sh. What the gateway lets through, what it refuses, and that a denied call never
reaches the server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.mcp_servers import nhidel_command, require_sdk, server_binary
from helpers.processes import (
    assert_clean_error,
    claims_of,
    init_cheaply,
    isolated_env,
    list_all,
    ok,
    run,
)

SECRET_VALUE = "sk-live-7c1e9b0d4a3f-Zq"
FS_RESOURCE_ARGS = (
    "read_text_file=path", "read_file=path", "write_file=path", "read_multiple_files=paths",
    "move_file=source", "move_file=destination", "list_directory=path",
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("sdk")


@pytest.fixture
def sdk() -> None:
    require_sdk()


class World:
    """A home with a principal, the secret, both servers registered and agent `bot`."""

    def __init__(self, root: Path) -> None:
        passphrase = root / "passphrase"
        passphrase.write_text("gateway tests\n")
        passphrase.chmod(0o600)
        self.env = isolated_env(
            root, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(passphrase)
        )
        self.allowed = root / "allowed"
        self.outside = root / "outside"
        self.decoy = root / "decoy"
        self.offered = root / "offered"
        for directory in (self.allowed, self.outside, self.decoy, self.offered):
            directory.mkdir()
        (self.allowed / "a.txt").write_text("alpha\n")
        (self.allowed / "b.txt").write_text("bravo\n")
        (self.outside / "secret.txt").write_text("outside\n")
        self.home = Path(self.env["NHIDEL_HOME"])
        self.stderr = root / "gateway-stderr.txt"
        init_cheaply(self.env, "--principal", "alice")
        ok(self.env, "secret", "add", "api-key", input=SECRET_VALUE)
        filesystem = server_binary("mcp-server-filesystem")
        fs_args = [a for pair in FS_RESOURCE_ARGS for a in ("--resource-arg", pair)]
        ok(self.env, "mcp", "add", "fs", *fs_args, "--root", str(self.allowed), "--",
           str(filesystem), str(self.allowed))  # fmt: skip
        # Started with the decoy directory on its command line: roots/list must replace it.
        ok(self.env, "mcp", "add", "fsroots", "--root", str(self.allowed), "--",
           str(filesystem), str(self.decoy))  # fmt: skip
        everything = server_binary("mcp-server-everything")
        ok(self.env, "mcp", "add", "every", "--secret", "api-key=API_KEY", "--env",
           "MODE=plain", "--", str(everything), "stdio")  # fmt: skip
        ok(self.env, "agent", "add", "bot", "--allow", "fs:*", "--allow", "fs:*:*",
           "--allow", "fs:resources", "--allow", "every:*", "--allow", "fsroots:*",
           "--max-ttl", "1h")  # fmt: skip

    def gateway_args(self, server: str, *scopes: str) -> list[str]:
        args = ["mcp", "run", server, "--agent", "bot"]
        for scope in scopes:
            args += ["--scope", scope]
        return args

    def session(
        self,
        args: list[str],
        body: Callable[[Any], Awaitable[Any]],
        *,
        env: dict[str, str] | None = None,
        offered_roots: list[Path] | None = None,
        sampling_reply: str | None = None,
    ) -> Any:
        """Run `body(session)` in an initialised SDK session with `nhidel ARGS` as the server."""
        from mcp import ClientSession, StdioServerParameters, types
        from mcp.client.stdio import stdio_client

        program, argv = nhidel_command(*args)
        params = StdioServerParameters(
            command=program, args=argv, env=env or self.env, cwd=self.env["HOME"]
        )

        async def list_roots(_context: Any) -> types.ListRootsResult:
            return types.ListRootsResult(
                roots=[types.Root(uri=f"file://{p}", name=p.name) for p in offered_roots or []]
            )

        async def sample(_context: Any, _params: Any) -> types.CreateMessageResult:
            return types.CreateMessageResult(
                role="assistant",
                content=types.TextContent(type="text", text=sampling_reply or ""),
                model="test-model",
            )

        async def main() -> Any:
            with self.stderr.open("a") as errlog:
                async with stdio_client(params, errlog=errlog) as (read, write):
                    async with ClientSession(
                        read,
                        write,
                        list_roots_callback=list_roots if offered_roots else None,
                        sampling_callback=sample if sampling_reply is not None else None,
                    ) as session:
                        await session.initialize()
                        return await body(session)

        return asyncio.run(asyncio.wait_for(main(), 60))

    def audit_text(self) -> str:
        return "".join(p.read_text() for p in sorted(self.home.glob("audit*.jsonl*")))

    def records(self, event: str) -> list[dict[str, Any]]:
        return [r for r in map(json.loads, self.audit_text().splitlines()) if r["event"] == event]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def text_of(result: Any) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


def test_allowed_calls_return_what_the_server_returns_and_the_listing_is_filtered(
    world: World,
) -> None:
    async def body(session: Any) -> tuple[set[str], Any]:
        tools = {t.name for t in (await session.list_tools()).tools}
        read = await session.call_tool("read_text_file", {"path": str(world.allowed / "a.txt")})
        return tools, read

    tools, read = world.session(
        world.gateway_args(
            "fs", f"fs:read_text_file:{world.allowed}/*", "fs:list_allowed_directories"
        ),
        body,
    )
    # A resource-scoped grant lists its tool; nothing else of the server's 14 tools is listed.
    assert tools == {"read_text_file", "list_allowed_directories"}
    assert not read.isError and text_of(read) == "alpha\n"
    (allowed,) = world.records("tool.allowed")
    assert allowed["tool"] == "read_text_file" and allowed["resources"] == [
        str(world.allowed / "a.txt")
    ]
    assert len(allowed["args_sha256"]) == 64 and "alpha" not in json.dumps(allowed)


def test_a_denied_write_file_never_reaches_the_server_and_leaves_no_file(world: World) -> None:
    target = world.allowed / "new.txt"

    async def body(session: Any) -> Any:
        return await session.call_tool("write_file", {"path": str(target), "content": "x"})

    result = world.session(world.gateway_args("fs", f"fs:read_text_file:{world.allowed}/*"), body)
    assert result.isError
    assert text_of(result).startswith("denied: scope_not_granted: ")
    assert f"fs:write_file:{target}" in text_of(result)
    assert not target.exists()
    (denied,) = world.records("tool.denied")
    assert denied["reason"] == "scope_not_granted" and denied["tool"] == "write_file"


@pytest.mark.parametrize(
    "suffix",
    ["../outside/secret.txt", "./a.txt", "/a.txt", "%2e%2e/outside/secret.txt", "sub%2Fa.txt"],
    ids=["dotdot", "dot", "empty-segment", "encoded-dotdot", "encoded-slash"],
)
def test_paths_that_could_mean_another_file_are_refused(world: World, suffix: str) -> None:
    path = f"{world.allowed}/{suffix}"

    async def body(session: Any) -> Any:
        return await session.call_tool("read_text_file", {"path": path})

    result = world.session(world.gateway_args("fs", f"fs:read_text_file:{world.allowed}/*"), body)
    assert result.isError and text_of(result).startswith("denied: scope_not_granted: ")
    assert "outside" not in text_of(result).split(":", 2)[2].replace(path, "")


def test_a_list_argument_with_one_uncovered_path_is_refused_whole(world: World) -> None:
    inside, outside = str(world.allowed / "a.txt"), str(world.outside / "secret.txt")

    async def body(session: Any) -> tuple[Any, Any]:
        mixed = await session.call_tool("read_multiple_files", {"paths": [inside, outside]})
        both = await session.call_tool(
            "read_multiple_files", {"paths": [inside, str(world.allowed / "b.txt")]}
        )
        return mixed, both

    mixed, both = world.session(
        world.gateway_args("fs", f"fs:read_multiple_files:{world.allowed}/*"), body
    )
    assert mixed.isError and f"fs:read_multiple_files:{outside}" in text_of(mixed)
    assert "outside\n" not in text_of(mixed)
    assert not both.isError and "alpha" in text_of(both) and "bravo" in text_of(both)


def test_move_file_onto_an_uncovered_destination_is_refused(world: World) -> None:
    source, destination = world.allowed / "a.txt", world.outside / "moved.txt"

    async def body(session: Any) -> Any:
        return await session.call_tool(
            "move_file", {"source": str(source), "destination": str(destination)}
        )

    result = world.session(world.gateway_args("fs", f"fs:move_file:{world.allowed}/*"), body)
    assert result.isError and f"fs:move_file:{destination}" in text_of(result)
    assert source.exists() and not destination.exists()


def test_roots_list_is_answered_from_the_registration_not_the_client(world: World) -> None:
    async def body(session: Any) -> str:
        # The server asks for roots after `initialized`: poll until it has applied them.
        deadline = time.monotonic() + 20
        while True:
            text = text_of(await session.call_tool("list_allowed_directories", {}))
            if str(world.decoy) not in text or time.monotonic() > deadline:
                return text
            await asyncio.sleep(0.05)

    text = world.session(
        world.gateway_args("fsroots", "fsroots:list_allowed_directories"),
        body,
        offered_roots=[world.offered],
    )
    assert str(world.allowed) in text
    assert str(world.offered) not in text and str(world.decoy) not in text


def test_resources_read_is_refused_without_a_grant_naming_server_resources(world: World) -> None:
    from mcp.shared.exceptions import McpError

    async def body(session: Any) -> str:
        with pytest.raises(McpError) as refused:
            await session.read_resource(f"file://{world.allowed}/a.txt")
        return str(refused.value)

    # fs:* covers tools only.
    message = world.session(world.gateway_args("fs", "fs:*"), body)
    assert message.startswith("denied: scope_not_granted: ") and "fs:resources" in message
    assert world.records("tool.denied")[0]["tool"] == "resources/read"


def test_revoking_the_grant_mid_session_denies_the_next_call(world: World) -> None:
    token = ok(world.env, "grant", "bot", "--scope", "every:echo", "--ttl", "10m").stdout.strip()
    grant_id = claims_of(token)["jti"]

    async def body(session: Any) -> tuple[Any, Any]:
        before = await session.call_tool("echo", {"message": "one"})
        ok(world.env, "revoke", grant_id)
        after = await session.call_tool("echo", {"message": "two"})
        return before, after

    before, after = world.session(
        world.gateway_args("every"), body, env={**world.env, "NHIDEL_TOKEN": token}
    )
    assert not before.isError and text_of(before) == "Echo: one"
    assert after.isError and text_of(after).startswith("denied: revoked: ")
    assert "nhidel grant --like" in text_of(after)


def test_get_env_shows_the_secrets_variable_name_never_its_value(world: World) -> None:
    async def body(session: Any) -> Any:
        return await session.call_tool("get-env", {})

    env = {**world.env, "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent", "LC_TIME": "C"}
    result = world.session(world.gateway_args("every", "every:get-env"), body, env=env)
    server_env = json.loads(text_of(result))
    assert server_env["API_KEY"] == "[redacted:api-key]"
    # The server's whole environment: the registration's, PATH, HOME and the locale.
    assert set(server_env) <= {"API_KEY", "MODE", "PATH", "HOME", "LANG", "LC_TIME", "LANGUAGE"}
    assert server_env["MODE"] == "plain" and server_env["LC_TIME"] == "C"
    (redacted,) = world.records("secret.redacted")
    assert (redacted["server"], redacted["secret"]) == ("every", "api-key")
    assert SECRET_VALUE not in world.audit_text()
    assert SECRET_VALUE not in world.stderr.read_text()


@pytest.mark.parametrize(
    ("edit", "replacement"),
    [
        ("command", '["/bin/sh", "-c", "env > {leak}"]'),
        ("secrets", '{{ LEAKED = "api-key" }}'),
        ("env", '{{ MODE = "edited" }}'),
    ],
)
def test_an_edited_registration_is_refused_and_nothing_is_started(
    world: World, edit: str, replacement: str
) -> None:
    leak = world.home.parent / "leak.txt"
    config = world.home / "config.toml"
    text = config.read_text()
    head = "[mcp.every]\n" if edit == "command" else f"[mcp.every.{edit}]\n"
    start = text.index(head) + len(head)
    if edit == "command":
        end = text.index("]\n", start) + 2
        text = text[:start] + f"command = {replacement.format(leak=leak)}\n" + text[end:]
    else:
        end = text.index("\n[", start) + 1 if "\n[" in text[start:] else len(text)
        key, value = replacement.format().strip("{} ").split(" = ")
        text = text[:start] + f"{key} = {value}\n" + text[end:]
    config.write_text(text)

    refused = run(world.env, *world.gateway_args("every", "every:get-env"), input="")
    assert "every" in assert_clean_error(refused, 5)
    assert not leak.exists()
    assert SECRET_VALUE not in refused.stderr


def test_removing_the_server_mid_session_refuses_every_later_call(world: World) -> None:
    async def body(session: Any) -> tuple[Any, Any]:
        before = await session.call_tool("echo", {"message": "one"})
        ok(world.env, "mcp", "remove", "every")
        return before, await session.call_tool("echo", {"message": "two"})

    before, after = world.session(world.gateway_args("every", "every:echo"), body)
    assert not before.isError
    assert after.isError and text_of(after).startswith("denied: integrity: ")


def test_the_minted_grant_is_revoked_when_the_client_leaves(world: World) -> None:
    async def body(session: Any) -> None:
        await session.call_tool("echo", {"message": "one"})

    world.session(world.gateway_args("every", "every:echo"), body)
    (grant,) = list_all(world.env)
    assert grant["status"] == "revoked" and grant["scopes"] == ["every:echo"]


def raw_gateway(world: World, *args: str) -> subprocess.Popen[bytes]:
    program, argv = nhidel_command(*args)
    return subprocess.Popen(
        [program, *argv], env=world.env, cwd=world.env["HOME"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def exchange(process: subprocess.Popen[bytes], line: bytes) -> dict[str, Any]:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(line + b"\n")
    process.stdin.flush()
    answer: dict[str, Any] = json.loads(process.stdout.readline())
    return answer


INITIALIZE = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {"roots": {}},
               "clientInfo": {"name": "raw", "version": "0"}},
}).encode()  # fmt: skip


def test_a_batch_non_json_and_unrelayed_methods_get_json_rpc_errors(world: World) -> None:
    process = raw_gateway(world, *world.gateway_args("every", "every:*"))
    try:
        assert exchange(process, INITIALIZE)["result"]["serverInfo"]
        batch = exchange(process, b'[{"jsonrpc":"2.0","id":2,"method":"tools/list"}]')
        assert batch["error"]["code"] == -32600 and "batch" in batch["error"]["message"]
        assert exchange(process, b"this is not json")["error"]["code"] == -32700
        completion = exchange(
            process, b'{"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{}}'
        )
        assert (completion["id"], completion["error"]["code"]) == (3, -32601)
        # The session goes on: a plain request after them is answered by the server.
        assert exchange(process, b'{"jsonrpc":"2.0","id":4,"method":"ping"}') == {
            "jsonrpc": "2.0", "id": 4, "result": {},
        }  # fmt: skip
    finally:
        process.stdin.close()  # type: ignore[union-attr]
        assert process.wait(30) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_gateway_and_its_server_and_revokes_the_grant(
    world: World, signum: int
) -> None:
    process = raw_gateway(world, *world.gateway_args("every", "every:echo"))
    assert exchange(process, INITIALIZE)["result"]
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    (server,) = [int(pid) for pid in children]
    process.send_signal(signum)
    assert process.wait(30) == 128 + signum
    assert not Path(f"/proc/{server}").exists()  # stopped and reaped before the gateway ended
    (grant,) = list_all(world.env)
    assert grant["status"] == "revoked"


def test_a_server_that_dies_ends_the_gateway_with_one_error_and_the_grant_revoked(
    world: World,
) -> None:
    ok(world.env, "mcp", "add", "dies", "--", "/bin/sh", "-c", "echo starting >&2; exit 3")
    ok(world.env, "agent", "update", "bot", "--allow", "dies:*")
    process = raw_gateway(world, *world.gateway_args("dies", "dies:x"))
    # The client stays connected (stdin open): the server's exit alone ends the gateway.
    assert process.wait(30) == 1
    assert process.stderr is not None and process.stdin is not None
    stderr = process.stderr.read()
    process.stdin.close()
    lines = stderr.decode().splitlines()
    assert lines[0] == "[dies] starting" and lines[1].startswith("error: MCP server dies exited")
    assert "Traceback" not in stderr.decode()
    (grant,) = list_all(world.env)
    assert grant["status"] == "revoked"


def test_refusals_before_starting_are_one_error_line_with_a_hint(world: World) -> None:
    unknown = run(world.env, "mcp", "run", "nope", "--agent", "bot", "--scope", "nope:x")
    assert "nhidel mcp add nope" in assert_clean_error(unknown, 3)
    no_grant = run(world.env, "mcp", "run", "every", "--agent", "bot")
    assert "NHIDEL_TOKEN" in assert_clean_error(no_grant, 2)
    other = run(world.env, "mcp", "run", "every", "--agent", "bot", "--scope", "fs:read_file")
    assert "not for MCP server every" in assert_clean_error(other, 2)
    ok(world.env, "agent", "add", "ci", "--allow", "only-ci:*")
    ok(world.env, "mcp", "add", "only-ci", "--agent", "ci", "--", "/bin/true")
    refused = run(world.env, "mcp", "run", "only-ci", "--agent", "bot", "--scope", "only-ci:x")
    assert "not bot" in assert_clean_error(refused, 6)
    assert list_all(world.env) == []
    assert os.environ.get("NHIDEL_TOKEN") is None


def test_mcp_tools_lists_arguments_scopes_and_resource_arg_lines(world: World) -> None:
    listed = ok(world.env, "mcp", "tools", "fs")
    assert "  --resource-arg move_file=destination" in listed.stdout.splitlines()
    assert "    scope: fs:list_allowed_directories" in listed.stdout.splitlines()
    tools = {t["name"]: t for t in json.loads(ok(world.env, "mcp", "tools", "fs", "--json").stdout)}
    assert tools["read_multiple_files"]["resource_args"] == ["read_multiple_files=paths"]
    assert tools["read_multiple_files"]["resource_scope"] == "fs:read_multiple_files:<resource>*"
    assert tools["write_file"]["arguments"][1] == {
        "name": "content", "type": "string", "required": True, "resource": False,
    }  # fmt: skip
    # The server got its secret, and nothing of it reached the output.
    every = ok(world.env, "mcp", "tools", "every")
    assert "every:get-env" in every.stdout and SECRET_VALUE not in every.stdout + every.stderr


def test_mcp_tools_of_a_server_that_dies_says_what_it_said(world: World) -> None:
    ok(world.env, "mcp", "add", "dies", "--", "/bin/sh", "-c", "echo oops >&2; exit 2")
    failed = run(world.env, "mcp", "tools", "dies")
    assert "exited (status 2); it said: oops" in assert_clean_error(failed, 1)


def test_each_allowed_call_spends_a_use_and_a_denied_one_none(world: World) -> None:
    token = ok(world.env, "grant", "bot", "--scope", "every:echo", "--uses", "2").stdout.strip()

    async def body(session: Any) -> list[Any]:
        return [
            await session.call_tool("echo", {"message": "one"}),
            await session.call_tool("get-env", {}),  # denied: spends nothing
            await session.call_tool("echo", {"message": "two"}),
            await session.call_tool("echo", {"message": "three"}),
        ]

    one, env_call, two, three = world.session(
        world.gateway_args("every"), body, env={**world.env, "NHIDEL_TOKEN": token}
    )
    assert not one.isError and not two.isError
    assert env_call.isError and text_of(env_call).startswith("denied: scope_not_granted: ")
    assert three.isError and text_of(three).startswith("denied: uses_exhausted: ")
    assert SECRET_VALUE not in text_of(env_call)
    (grant,) = list_all(world.env)
    assert (grant["uses"], grant["status"]) == (2, "exhausted")


def test_an_expired_grant_is_denied_with_a_hint_to_renew(world: World) -> None:
    token = ok(world.env, "grant", "bot", "--scope", "every:echo", "--ttl", "3s").stdout.strip()
    expires = claims_of(token)["exp"]

    async def body(session: Any) -> Any:
        await asyncio.sleep(max(0.0, expires - time.time()) + 0.2)  # the clock is the condition
        return await session.call_tool("echo", {"message": "late"})

    late = world.session(
        world.gateway_args("every"), body, env={**world.env, "NHIDEL_TOKEN": token}
    )
    assert late.isError and text_of(late).startswith("denied: expired: ")
    assert "nhidel grant --like" in text_of(late)


def test_the_servers_stderr_is_redacted_prefixed_and_without_control_characters(
    world: World,
) -> None:
    everything = server_binary("mcp-server-everything")
    ok(world.env, "mcp", "add", "talky", "--secret", "api-key=API_KEY", "--", "/bin/sh", "-c",
       f'echo "starting with key $API_KEY" >&2; printf %s "$API_KEY" | base64 >&2; '
       "printf 'bell\\007\\033[2J\\n' >&2; "
       f"exec {everything} stdio")  # fmt: skip
    ok(world.env, "agent", "update", "bot", "--allow", "talky:*")

    async def body(session: Any) -> Any:
        return await session.call_tool("echo", {"message": "hi"})

    assert text_of(world.session(world.gateway_args("talky", "talky:echo"), body)) == "Echo: hi"
    said = world.stderr.read_text()
    assert "[talky] starting with key [redacted:api-key]" in said.splitlines()
    assert "[talky] bell??[2J" in said.splitlines()  # no control character reaches a terminal
    assert base64.b64encode(SECRET_VALUE.encode()).decode()[:-4] not in said
    assert SECRET_VALUE not in said and SECRET_VALUE not in world.audit_text()
    # One record per redacted line (the value, then its base64), each naming server and secret.
    found = [(r["server"], r["secret"]) for r in world.records("secret.redacted")]
    assert found == [("talky", "api-key")] * 2


def test_sampling_reaches_the_client_and_progress_passes_both_ways(world: World) -> None:
    progress: list[float] = []

    async def on_progress(done: float, _total: float | None, _message: str | None) -> None:
        progress.append(done)

    async def body(session: Any) -> tuple[Any, Any]:
        sampled = await session.call_tool("trigger-sampling-request", {"prompt": "hello"})
        ran = await session.call_tool(
            "trigger-long-running-operation", {"duration": 0.3, "steps": 3},
            progress_callback=on_progress,
        )  # fmt: skip
        return sampled, ran

    sampled, ran = world.session(
        world.gateway_args("every", "every:trigger-sampling-request",
                           "every:trigger-long-running-operation"),
        body,
        sampling_reply="a reply from the client's model",
    )  # fmt: skip
    assert not sampled.isError and "a reply from the client's model" in text_of(sampled)
    assert not ran.isError and progress == [1, 2, 3]


def read_until(process: subprocess.Popen[bytes], wanted_id: Any) -> list[dict[str, Any]]:
    """Messages from the gateway up to and including the response with `wanted_id`."""
    assert process.stdout is not None
    seen = []
    while True:
        line = process.stdout.readline()
        assert line, "the gateway closed its stdout"
        seen.append(json.loads(line))
        if seen[-1].get("id") == wanted_id and "method" not in seen[-1]:
            return seen


def send_line(process: subprocess.Popen[bytes], body: dict[str, Any]) -> None:
    assert process.stdin is not None
    process.stdin.write(json.dumps(body).encode() + b"\n")
    process.stdin.flush()


def call(ident: Any, tool: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "method": "tools/call",
            "params": {"name": tool, "arguments": {}}}  # fmt: skip


def test_what_the_server_receives_is_only_what_the_gateway_checked(world: World) -> None:
    fake = Path(__file__).resolve().parents[1] / "helpers" / "fake_mcp_server.py"
    ok(world.env, "mcp", "add", "fake", "--root", str(world.allowed), "--",
       sys.executable, str(fake))  # fmt: skip
    ok(world.env, "agent", "update", "bot", "--allow", "fake:*")
    process = raw_gateway(world, *world.gateway_args("fake", "fake:report", "fake:slow"))
    try:
        send_line(process, json.loads(INITIALIZE))
        (initialized,) = read_until(process, 1)
        assert "completions" not in initialized["result"]["capabilities"]
        send_line(process, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        send_line(process, {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
        # The client answers a request the server never sent, and one it did not relay.
        send_line(process, {"jsonrpc": "2.0", "id": "forged", "result": {"roots": []}})
        send_line(process, {"jsonrpc": "2.0", "id": "s1", "result": {"roots": []}})
        send_line(process, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        listed = read_until(process, 2)[-1]
        assert [t["name"] for t in listed["result"]["tools"]] == ["report", "slow"]
        # A second request under an id still pending is refused, not forwarded.
        send_line(process, call(3, "slow"))
        send_line(process, call(3, "other"))
        answers = read_until(process, 3)
        assert answers[-1]["error"]["code"] == -32600
        assert read_until(process, 3)[-1]["result"]["content"][0]["text"] == "slow"
        send_line(process, call(4, "other"))  # not granted: never reaches the server
        assert read_until(process, 4)[-1]["result"]["isError"]
        send_line(process, call(5, "report"))
        report = read_until(process, 5)[-1]["result"]["content"][0]["text"]
    finally:
        process.stdin.close()  # type: ignore[union-attr]
        process.wait(30)
    received = json.loads(report)
    methods = [m.get("method", f"response {m.get('id')}") for m in received]
    # (The gateway's answers to the server and the client's tools/list cross in any order.)
    assert methods[:2] == ["initialize", "notifications/initialized"]
    assert sorted(methods[2:5]) == ["response s1", "response s2", "tools/list"]
    assert methods[5:] == ["tools/call", "tools/call"]
    assert received[0]["params"]["capabilities"] == {"roots": {"listChanged": False}}
    by_id = {m["id"]: m for m in received if "method" not in m}
    assert by_id["s1"]["result"] == {"roots": [{"uri": world.allowed.as_uri(), "name": "allowed"}]}
    assert by_id["s2"]["error"]["code"] == -32601
    assert "forged" not in by_id
    assert [m["params"]["name"] for m in received[5:]] == ["slow", "report"]


def test_a_registered_executable_that_is_gone_is_one_error_and_the_grant_revoked(
    world: World,
) -> None:
    program = world.home.parent / "server-program"
    program.write_bytes(Path("/bin/true").read_bytes())
    program.chmod(0o700)
    ok(world.env, "mcp", "add", "gone", "--", str(program))
    ok(world.env, "agent", "update", "bot", "--allow", "gone:*")
    program.unlink()
    failed = run(world.env, *world.gateway_args("gone", "gone:x"), input="")
    assert str(program) in assert_clean_error(failed, 1)
    (grant,) = list_all(world.env)
    assert grant["status"] == "revoked"


def test_a_gateway_killed_with_sigkill_has_its_grant_revoked_by_the_next_command(
    world: World,
) -> None:
    process = raw_gateway(world, *world.gateway_args("every", "every:echo"))
    assert exchange(process, INITIALIZE)["result"]
    process.kill()
    process.wait(30)
    assert [g["status"] for g in list_all(world.env)] == ["active"]
    # Any command that opens the keystore revokes what a killed gateway left live.
    noted = ok(world.env, "secret", "add", "another", input="another-value-123")
    (grant,) = list_all(world.env)
    assert f"revoked grant {grant['id']}" in noted.stderr
    assert grant["status"] == "revoked"


def test_a_replaced_secret_reaches_a_running_session_on_its_next_call(world: World) -> None:
    fake = Path(__file__).resolve().parents[1] / "helpers" / "fake_mcp_server.py"
    ok(world.env, "secret", "add", "token", input="the-first-token-value\n")
    ok(world.env, "mcp", "add", "fake", "--secret", "token=API_TOKEN", "--",
       sys.executable, str(fake))  # fmt: skip
    ok(world.env, "agent", "update", "bot", "--allow", "fake:*")
    process = raw_gateway(world, *world.gateway_args("fake", "fake:digest", "fake:report"))

    def digest(ident: int) -> str:
        send_line(process, call(ident, "digest"))
        answer = read_until(process, ident)[-1]
        return str(answer["result"]["content"][0]["text"])

    try:
        send_line(process, json.loads(INITIALIZE))
        read_until(process, 1)
        send_line(process, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        first = hashlib.sha256(b"the-first-token-value").hexdigest()
        assert digest(2) == first
        ok(world.env, "secret", "add", "token", "--replace", input="the-second-token-value\n")
        assert digest(3) == hashlib.sha256(b"the-second-token-value").hexdigest()
        send_line(process, call(4, "report"))
        report = read_until(process, 4)[-1]["result"]["content"][0]["text"]
    finally:
        process.stdin.close()  # type: ignore[union-attr]
        process.wait(30)
    # The new server was initialised as the client had initialised the first: the client's
    # initialize replayed (its answer kept from the client), then initialized, then the calls.
    received = json.loads(report)
    methods = [m.get("method", f"response {m.get('id')}") for m in received]
    assert methods[:2] == ["initialize", "notifications/initialized"]
    assert received[0]["id"] == "nhidel-restart-1"
    assert [m["params"]["name"] for m in received if m.get("method") == "tools/call"] == [
        "digest", "report"
    ]  # fmt: skip
    stderr = process.stderr.read().decode()  # type: ignore[union-attr]
    assert "starting it again with the new value" in stderr
    assert "the-second-token-value" not in stderr and "the-first-token-value" not in stderr


def test_a_secret_value_the_keystore_lost_mid_session_leaves_the_session_serving(
    world: World,
) -> None:
    fake = Path(__file__).resolve().parents[1] / "helpers" / "fake_mcp_server.py"
    ok(world.env, "secret", "add", "token", input="the-first-token-value\n")
    ok(world.env, "mcp", "add", "fake", "--secret", "token=API_TOKEN", "--",
       sys.executable, str(fake))  # fmt: skip
    ok(world.env, "agent", "update", "bot", "--allow", "fake:*")
    process = raw_gateway(world, *world.gateway_args("fake", "fake:digest"))
    wipe = (
        "from nhidel.keys.keystore import open_keystore\n"
        "from nhidel.paths import Paths\n"
        "open_keystore(Paths.from_env()).write('secret.token', {})\n"
    )
    try:
        send_line(process, json.loads(INITIALIZE))
        read_until(process, 1)
        subprocess.run([sys.executable, "-c", wipe], env=world.env, check=True, timeout=60)
        ok(world.env, "grant", "bot", "--scope", "fake:digest")  # a commit: the gateway looks
        send_line(process, call(2, "digest"))
        answer = read_until(process, 2)[-1]
    finally:
        process.stdin.close()  # type: ignore[union-attr]
        process.wait(30)
    first = hashlib.sha256(b"the-first-token-value").hexdigest()
    assert answer["result"]["content"][0]["text"] == first  # the server it had, still serving
    stderr = process.stderr.read().decode()  # type: ignore[union-attr]
    assert "could not read the secrets it is given again" in stderr
    assert "Traceback" not in stderr
