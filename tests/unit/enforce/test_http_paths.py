"""What the broker refuses before any grant check, the scope a request needs, the upstream path
built from the route, and the headers that go on and back (nhidel.enforce.http_paths)."""

from __future__ import annotations

import pytest

from nhidel.enforce import http_paths
from nhidel.enforce.http_paths import Refused, parse_target, upstream_path


@pytest.mark.parametrize(
    ("raw", "method", "scope", "query"),
    [
        ("/github/repos/acme/api", "GET", "github:get:repos/acme/api", ""),
        ("/github/repos/acme/api?per_page=5&x=%2F", "POST", "github:post:repos/acme/api",
         "per_page=5&x=%2F"),
        ("/github", "GET", "github:get", ""),
        ("/github/", "DELETE", "github:delete", ""),
        ("/github/repos/", "GET", "github:get:repos", ""),
        ("/api/@scope/pkg", "GET", "api:get:@scope/pkg", ""),
        ("/api/a%20b", "GET", "api:get:a%20b", ""),
        ("/api/v1/items?", "PATCH", "api:patch:v1/items", ""),
        ("/api/items;v=2/x", "GET", "api:get:items;v=2/x", ""),
        ("/api/100%25", "GET", "api:get:100%25", ""),
    ],
)  # fmt: skip
def test_a_plain_path_is_checked_as_route_method_path(
    raw: str, method: str, scope: str, query: str
) -> None:
    target = parse_target(raw, method)
    assert target.scope(method) == scope
    assert target.query == query


@pytest.mark.parametrize(
    "raw",
    [
        "/api/a/../b", "/api/..", "/api/./b", "/api/a/./", "/api//b", "/api/a//",
        "//other.host/x", "//other.host", "/api/a%2fb", "/api/a%2Fb", "/api/%2e%2e/b",
        "/api/%2E/b", "/api/a%5cb", "/api/a\\b", "/api/a%00b", "/api/a%0d%0ab", "/api/a%zz",
        "/api/a%2", "http://other.host/api/x", "https://user@other.host/api", "*",
        "/api@other.host/x", "/api:443/x", "/API/x", "/api/x#frag", "/api/é", "/api/a b",
        "/api/a\tb", "/", "", "/api/..;/admin", "/api/a/..;x=1/b", "/api/.;/b", "/api/;x/b",
        "/api/%252e%252e/b", "/api/a%252Fb", "/api/a%255c",
    ],
)  # fmt: skip
def test_a_path_that_could_read_differently_upstream_is_refused(raw: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_target(raw, "GET")
    assert refused.value.reason == "bad_path"


@pytest.mark.parametrize("method", ["CONNECT", "get", "", "G ET", "GET\r\nX"])
def test_connect_and_odd_methods_are_refused(method: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_target("/api/x", method)
    assert refused.value.reason == "bad_method"


@pytest.mark.parametrize(
    ("route_url", "raw", "path"),
    [
        ("https://api.example.com", "/r/repos/x", "/repos/x"),
        ("https://api.example.com", "/r", "/"),
        ("https://api.example.com", "/r/", "/"),
        ("https://h.example/api/v3", "/r/repos/x", "/api/v3/repos/x"),
        ("https://h.example/api/v3", "/r", "/api/v3"),
        ("https://h.example/api/v3", "/r/", "/api/v3/"),
        ("https://h.example/api/v3", "/r/a/b/", "/api/v3/a/b/"),
        ("https://h.example/api/v3", "/r/@other.host/x", "/api/v3/@other.host/x"),
    ],
)
def test_the_upstream_path_is_the_route_prefix_then_the_checked_path(
    route_url: str, raw: str, path: str
) -> None:
    assert upstream_path(route_url, parse_target(raw, "GET")) == path


def test_a_second_authorization_header_is_refused() -> None:
    with pytest.raises(Refused) as refused:
        http_paths.bearer_grant(["Bearer a.b.c", "Bearer d.e.f"])
    assert refused.value.reason == "bad_header"


@pytest.mark.parametrize(
    ("values", "grant"),
    [
        (["Bearer a.b.c"], "a.b.c"),
        (["bearer a.b.c"], "a.b.c"),
        (["token a.b.c"], "a.b.c"),
        (["Basic dXNlcjpwYXNz"], None),
        (["Bearer "], None),
        ([], None),
    ],
)
def test_the_grant_comes_from_bearer_or_token_only(values: list[str], grant: str | None) -> None:
    assert http_paths.bearer_grant(values) == grant


def test_upgrade_and_a_second_host_are_refused() -> None:
    upgrade = http_paths.refused_request_header(["Host", "Connection", "Upgrade"])
    assert upgrade is not None and upgrade.reason == "upgrade_refused"
    hosts = http_paths.refused_request_header(["Host", "host"])
    assert hosts is not None and hosts.reason == "bad_header"
    assert http_paths.refused_request_header(["Host", "Accept"]) is None


def test_request_headers_lose_the_grant_overrides_hop_by_hop_and_the_secrets_header() -> None:
    sent = [
        ("Host", "127.0.0.1:8787"),
        ("Authorization", "Bearer grant"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-Http-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "hop"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authorization", "Basic x"),
        ("Accept-Encoding", "br"),
        ("x-api-key", "planted by the client"),
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
    ]
    kept = http_paths.forward_request_headers(sent, ["keep-alive, X-Private"], "X-Api-Key")
    assert kept == [
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
    ]


def test_response_headers_lose_hop_by_hop_and_the_bodys_framing() -> None:
    got = [
        ("Content-Type", "text/plain"),
        ("Content-Length", "10"),
        ("Content-Encoding", "gzip"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Location", "https://other.example/"),
    ]
    kept = http_paths.forward_response_headers(got, ["close, X-Hop"])
    assert kept == [("Content-Type", "text/plain"), ("Location", "https://other.example/")]


@pytest.mark.parametrize(
    ("values", "ok"),
    [
        ([], True), (["identity"], True), (["gzip"], True), (["GZip"], True),
        (["deflate"], True), (["br"], False), (["zstd"], False), (["gzip, gzip"], False),
        (["gzip", "br"], False), (["compress"], False),
    ],
)  # fmt: skip
def test_only_bodies_the_broker_can_decode_to_scan_are_relayed(values: list[str], ok: bool) -> None:
    assert http_paths.decodable(values) is ok


@pytest.mark.parametrize(
    "raw",
    ["/api/echo/%25%32%65%25%32%65/admin", "/api/echo/%25%32e/x", "/api/x%25%32%46y",
     "/api/echo/%252e%252e/admin"],
)  # fmt: skip
def test_an_escape_encoded_twice_is_refused_however_spelled(raw: str) -> None:
    with pytest.raises(http_paths.Refused) as refused:
        http_paths.parse_target(raw, "GET")
    assert refused.value.reason == "bad_path"


@pytest.mark.parametrize(
    "name",
    ["X-Original-URL", "X-Rewrite-URL", "X_HTTP_Method_Override", "x-original-method",
     "X-Forwarded-Host", "X_Api_Key"],
)  # fmt: skip
def test_path_and_method_overrides_and_underscore_spellings_are_not_forwarded(name: str) -> None:
    kept = http_paths.forward_request_headers([(name, "v"), ("Accept", "x")], [], "X-Api-Key")
    assert kept == [("Accept", "x")]


@pytest.mark.parametrize(
    ("values", "ok"),
    [([], True), (["gzip"], True), ([" Deflate "], True), (["gzip,"], False),
     ([", gzip"], False), (["gzip", "gzip"], False), (["br"], False)],
)  # fmt: skip
def test_only_a_content_encoding_aiohttp_decodes_whole_is_scannable(
    values: list[str], ok: bool
) -> None:
    assert http_paths.decodable(values) is ok


# -- approvals ----------------------------------------------------------------------------------


def _hash(raw: str, method: str = "POST", body: bytes = b'{"amount": 10}') -> str:
    return http_paths.request_sha256(method, parse_target(raw, method), body)


def test_identical_requests_share_their_approval_hash() -> None:
    assert _hash("/api/charges?x=1") == _hash("/api/charges?x=1")


@pytest.mark.parametrize(
    ("raw", "method", "body"),
    [
        ("/api/charges?x=1", "POST", b'{"amount": 11}'),  # another body
        ("/api/charges?x=2", "POST", b'{"amount": 10}'),  # another query
        ("/api/charges", "POST", b'{"amount": 10}'),  # no query
        ("/api/charges?x=1", "PUT", b'{"amount": 10}'),  # another method
        ("/api/refunds?x=1", "POST", b'{"amount": 10}'),  # another path
        ("/api/charges/?x=1", "POST", b'{"amount": 10}'),  # a trailing slash goes upstream
        ("/other/charges?x=1", "POST", b'{"amount": 10}'),  # another route
    ],
)  # fmt: skip
def test_a_request_differing_in_any_part_has_another_approval_hash(
    raw: str, method: str, body: bytes
) -> None:
    assert _hash(raw, method, body) != _hash("/api/charges?x=1")


def test_the_parts_of_the_approval_hash_cannot_run_into_each_other() -> None:
    assert _hash("/api/a?b", body=b"") != _hash("/api/a?", body=b"b")
    assert _hash("/api/ab") != _hash("/api/a/b")


@pytest.mark.parametrize(
    ("content_type", "body", "shown"),
    [
        ("application/json", b'{"amount": 10}', {"amount": 10}),
        ("application/problem+json; charset=utf-8", b"[1, 2]", [1, 2]),
        ("application/json", b"{not json", "{not json"),
        ("text/plain", b'{"amount": 10}', '{"amount": 10}'),
        ("application/octet-stream", b"\xff\xfe\x00", "<3 bytes binary>"),
        ("application/json", b"[" * 5000 + b"]" * 5000, "[" * 5000 + "]" * 5000),
    ],
)  # fmt: skip
def test_a_body_is_shown_parsed_when_json_else_as_text_else_by_size(
    content_type: str, body: bytes, shown: object
) -> None:
    shown_as = http_paths.request_arguments("a=1", content_type, body)
    assert shown_as == {"query": "a=1", "body": shown}


def test_a_request_without_query_or_body_shows_no_arguments() -> None:
    assert http_paths.request_arguments("", "application/json", b"") == {}


def test_a_body_too_long_to_show_is_cut_and_says_how_much_more() -> None:
    body = b"x" * (http_paths.SHOWN_BODY + 5)
    shown = http_paths.request_arguments("", "text/plain", body)["body"]
    assert shown.startswith("x" * 100) and shown.endswith("…(+5 more bytes)")


@pytest.mark.parametrize(("left", "after"), [(600, 30), (31, 30), (12, 12), (0, 1), (-5, 1)])
def test_retry_after_is_at_most_30_seconds_and_never_past_the_requests_lapse(
    left: int, after: int
) -> None:
    assert http_paths.approval_retry_after(left) == after
