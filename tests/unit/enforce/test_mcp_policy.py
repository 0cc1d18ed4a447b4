"""nhidel.enforce.mcp_policy: what the gateway relays, the scopes of a call, the path rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nhidel.enforce import mcp_policy as policy
from nhidel.enforce.mcp_policy import Action, CallRefused, Kind, NotRelayed
from nhidel.scopes import Scope, covers, parse_scope

RESOURCE_ARGS = {"read_file": ("path",), "move_file": ("source", "destination"),
                 "read_many": ("paths",)}  # fmt: skip


def message(body: dict[str, Any]) -> policy.Message:
    return policy.parse_message(json.dumps(body))


def request(method: str, params: dict[str, Any] | None = None, id: Any = 1) -> policy.Message:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        body["params"] = params
    return message(body)


def test_a_batch_is_refused_whole() -> None:
    with pytest.raises(NotRelayed) as refused:
        policy.parse_message(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]')
    assert refused.value.code == policy.INVALID_REQUEST


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json", policy.PARSE_ERROR),
        (b"", policy.PARSE_ERROR),
        (b'"a string"', policy.INVALID_REQUEST),
        (b'{"id":1,"method":"ping"}', policy.INVALID_REQUEST),  # no jsonrpc
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', policy.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', policy.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1}', policy.INVALID_REQUEST),  # neither result nor error
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', policy.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}', policy.INVALID_PARAMS),
    ],
)
def test_what_is_not_one_well_formed_message_is_not_relayed(line: bytes, code: int) -> None:
    with pytest.raises(NotRelayed) as refused:
        policy.parse_message(line)
    assert refused.value.code == code


def test_kinds() -> None:
    assert request("ping").kind is Kind.REQUEST
    assert message({"jsonrpc": "2.0", "method": "notifications/initialized"}).kind is (
        Kind.NOTIFICATION
    )
    assert message({"jsonrpc": "2.0", "id": "a", "result": {}}).kind is Kind.RESPONSE


@pytest.mark.parametrize(
    ("method", "action"),
    [
        ("initialize", Action.INITIALIZE),
        ("ping", Action.FORWARD),
        ("tools/list", Action.TOOLS_LIST),
        ("tools/call", Action.TOOLS_CALL),
        ("resources/read", Action.RESOURCES),
        ("resources/list", Action.RESOURCES),
        ("resources/subscribe", Action.RESOURCES),
        ("prompts/get", Action.PROMPTS),
        ("completion/complete", Action.REFUSE),
        ("tasks/get", Action.REFUSE),
        ("logging/setLevel", Action.REFUSE),
        ("sampling/createMessage", Action.REFUSE),  # the server's to send, not the client's
        ("anything/else", Action.REFUSE),
    ],
)
def test_client_requests_relayed_only_when_checked(method: str, action: Action) -> None:
    assert policy.client_action(request(method)) is action


def test_a_task_augmented_tool_call_is_refused() -> None:
    call = request("tools/call", {"name": "x", "arguments": {}, "task": {"ttl": 60000}})
    assert policy.client_action(call) is Action.REFUSE


def test_client_notifications_pass_except_roots_list_changed() -> None:
    def note(method: str) -> Action:
        return policy.client_action(message({"jsonrpc": "2.0", "method": method}))

    assert note("notifications/roots/list_changed") is Action.DROP
    for method in ("notifications/initialized", "notifications/cancelled",
                   "notifications/progress"):  # fmt: skip
        assert note(method) is Action.FORWARD


def test_server_requests_roots_answered_sampling_and_elicitation_passed_others_refused() -> None:
    assert policy.server_action(request("roots/list")) is Action.ROOTS
    for method in ("sampling/createMessage", "elicitation/create", "ping"):
        assert policy.server_action(request(method)) is Action.FORWARD
    assert policy.server_action(request("something/new")) is Action.REFUSE
    note = message({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert policy.server_action(note) is Action.FORWARD


def test_initialize_keeps_only_relayed_capabilities_and_adds_the_gateways_roots() -> None:
    params = {
        "protocolVersion": "2025-06-18",
        "capabilities": {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {},
                         "experimental": {"x": {}}, "tasks": {}},
        "clientInfo": {"name": "c", "version": "1"},
    }  # fmt: skip
    without = policy.initialize_params(params, has_roots=False)
    assert without["capabilities"] == {"sampling": {}, "elicitation": {}}
    assert without["clientInfo"] == params["clientInfo"]
    with_roots = policy.initialize_params(params, has_roots=True)
    assert with_roots["capabilities"]["roots"] == {"listChanged": False}


def test_initialize_result_hides_what_the_gateway_refuses() -> None:
    result = {"capabilities": {"tools": {}, "completions": {}, "tasks": {}}, "x": 1}
    assert policy.initialize_result(result) == {"capabilities": {"tools": {}}, "x": 1}


def scopes_of(params: dict[str, Any]) -> tuple[str, tuple[Scope, ...]]:
    return policy.call_scopes("fs", params, RESOURCE_ARGS)


def test_a_tool_without_resource_arguments_is_server_tool() -> None:
    assert scopes_of({"name": "list", "arguments": {"x": "/a"}}) == ("list", (Scope("fs", "list"),))


def test_every_resource_argument_and_every_list_element_is_a_scope() -> None:
    _, moved = scopes_of({"name": "move_file", "arguments": {"source": "/a", "destination": "/b"}})
    assert moved == (Scope("fs", "move_file", "/a"), Scope("fs", "move_file", "/b"))
    _, many = scopes_of({"name": "read_many", "arguments": {"paths": ["/a", "/b", "/a"]}})
    assert many == (Scope("fs", "read_many", "/a"), Scope("fs", "read_many", "/b"))


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"path": ""},
        {"path": None},
        {"path": 7},
        {"path": ["/a"], "other": 1},  # a list where the tool takes one: each element checked
        {"path": []},
        {"path": ["/a", 3]},
        {"path": [["/a"]]},
    ],
)
def test_missing_empty_or_non_string_resources_are_refused(arguments: dict[str, Any]) -> None:
    if arguments.get("path") == ["/a"]:
        assert scopes_of({"name": "read_file", "arguments": arguments})[1] == (
            Scope("fs", "read_file", "/a"),
        )
        return
    with pytest.raises(CallRefused):
        scopes_of({"name": "read_file", "arguments": arguments})


@pytest.mark.parametrize(
    "path",
    ["/tmp/../etc/passwd", "/tmp/./a", "/tmp//a", "/tmp/%2e%2e/a", "/tmp/a%2fb", "..", ".",
     "/tmp/a/..", "a\\..\\b", "/tmp/a\x00b", "file:///tmp/../etc", "//host/share"],
)  # fmt: skip
def test_paths_that_could_name_another_resource_are_refused(path: str) -> None:
    with pytest.raises(CallRefused):
        scopes_of({"name": "read_file", "arguments": {"path": path}})


@pytest.mark.parametrize("path", ["/tmp/a", "/tmp/dir/", "relative/a.txt", "file:///tmp/a",
                                  "/tmp/100%", "/tmp/a b"])  # fmt: skip
def test_plain_paths_pass(path: str) -> None:
    assert scopes_of({"name": "read_file", "arguments": {"path": path}})[1] == (
        Scope("fs", "read_file", path),
    )


@pytest.mark.parametrize("name", ["", None, 3, "Read_File", "resources", "prompts", "a b"])
def test_tools_no_scope_can_name_are_refused(name: Any) -> None:
    with pytest.raises(CallRefused):
        scopes_of({"name": name, "arguments": {}})


def test_arguments_that_are_not_an_object_are_refused() -> None:
    with pytest.raises(CallRefused):
        scopes_of({"name": "list", "arguments": ["x"]})


segment = st.text(alphabet=st.sampled_from("ab.%2eF/"), min_size=1, max_size=12)


@given(segment)
def test_an_accepted_path_has_no_dot_empty_or_encoded_segment(path: str) -> None:
    """Whatever path passes reads as itself: no segment a server would resolve differently."""
    try:
        (scope,) = scopes_of({"name": "read_file", "arguments": {"path": path}})[1]
    except CallRefused:
        return
    inner = path.strip("/").split("/")
    assert all(s not in ("", ".", "..") for s in inner)
    assert "%2e" not in path.lower() and "%2f" not in path.lower()
    assert scope.resource == path


@given(st.sampled_from(["/tmp/a", "/tmp/b/c", "/var/x"]), st.sampled_from(["../", "./", "/"]))
def test_a_prefix_grant_never_covers_a_refused_escape(base: str, escape: str) -> None:
    grant = parse_scope("fs:read_file:/tmp/*")
    path = f"{base}/{escape}etc/passwd"
    try:
        (requested,) = scopes_of({"name": "read_file", "arguments": {"path": path}})[1]
    except CallRefused:
        return
    assert covers(grant, requested) == path.startswith("/tmp/")
    assert ".." not in path


def test_listing_shows_tools_some_granted_scope_could_cover() -> None:
    tools = {"tools": [{"name": n} for n in ("read_file", "write_file", "list", "Upper")]}
    granted = (parse_scope("fs:read_file:/tmp/*"), parse_scope("other:write_file"))
    assert [t["name"] for t in policy.filter_tools(tools, "fs", granted)["tools"]] == ["read_file"]
    everything = (parse_scope("fs:*"),)
    assert [t["name"] for t in policy.filter_tools(tools, "fs", everything)["tools"]] == [
        "read_file", "write_file", "list",
    ]  # fmt: skip


def test_server_star_does_not_name_resources_or_prompts() -> None:
    assert not policy.names_kind("fs", (parse_scope("fs:*"),), "resources")
    assert policy.names_kind("fs", (parse_scope("fs:resources"),), "resources")
    assert not policy.names_kind("fs", (parse_scope("other:resources"),), "resources")


def test_the_denial_is_a_tool_result_the_model_can_read() -> None:
    assert policy.denial_result("expired", "the grant expired;\nrenew it") == {
        "content": [{"type": "text", "text": "denied: expired: the grant expired; renew it"}],
        "isError": True,
    }


def test_roots_are_file_uris() -> None:
    assert policy.roots_result(["/srv/data", "/tmp/a b"]) == {
        "roots": [{"uri": "file:///srv/data", "name": "data"},
                  {"uri": "file:///tmp/a%20b", "name": "a b"}]
    }  # fmt: skip


def test_the_argument_hash_ignores_key_order() -> None:
    one = policy.arguments_sha256({"arguments": {"a": 1, "b": [2, "x"]}})
    assert one == policy.arguments_sha256({"arguments": {"b": [2, "x"], "a": 1}})
    assert one != policy.arguments_sha256({"arguments": {"a": 1, "b": [2, "y"]}})


def test_ids_of_different_types_are_different_keys() -> None:
    assert policy.id_key(1) != policy.id_key("1")


def test_a_message_is_one_line() -> None:
    line = policy.dumps({"jsonrpc": "2.0", "id": 1, "result": {"text": "a\nb"}})
    assert line.endswith(b"\n") and line.count(b"\n") == 1


def test_a_lone_surrogate_is_refused_as_an_invalid_request_and_a_pair_passes() -> None:
    lone = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"arguments":{"a":"\\ud800"}}}'
    with pytest.raises(policy.NotRelayed) as refused:
        policy.parse_message(lone)
    assert (refused.value.code, refused.value.request_id) == (policy.INVALID_REQUEST, 3)
    pair = b'{"jsonrpc":"2.0","id":4,"method":"ping","params":{"a":"\\ud83d\\ude00"}}'
    assert policy.dumps(policy.parse_message(pair).body).decode().count("\U0001f600") == 1


@pytest.mark.parametrize("method", ["tools/call", "resources/read", "initialize", "x/y"])
def test_a_request_method_sent_as_a_notification_never_reaches_the_server(method: str) -> None:
    body = {"jsonrpc": "2.0", "method": method, "params": {"name": "write_file"}}
    message = policy.parse_message(json.dumps(body))
    assert message.kind is Kind.NOTIFICATION
    assert policy.client_action(message) is Action.DROP


def progress_note(token: Any, progress: Any, total: Any = None) -> dict[str, Any]:
    params = {"progressToken": token, "progress": progress}
    if total is not None:
        params["total"] = total
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}


@given(st.integers(1, 1_000), st.floats(0, 1e6) | st.integers(0, 10**6))
def test_a_servers_progress_after_a_hold_comes_after_the_gateways(sent: int, value: Any) -> None:
    moved = policy.offset_progress(progress_note("t", value, total=value + 1),
                                   {policy.id_key("t"): sent})  # fmt: skip
    assert moved["params"]["progress"] > sent
    left = moved["params"]["total"] - moved["params"]["progress"]
    assert left == pytest.approx(1)  # what was left to do is kept


def test_progress_of_another_token_or_not_a_number_is_left_as_it_is() -> None:
    offsets = {policy.id_key("held"): 3}
    for body in (progress_note("other", 1), progress_note("held", True), progress_note(1, 1)):
        assert policy.offset_progress(body, offsets) == body
