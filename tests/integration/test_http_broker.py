"""The HTTP broker against a real HTTPS upstream with its own CA (`route add --ca-file`), with
httpx, curl and raw sockets as clients: what is allowed reaches the upstream with the secret and
without the grant; what is denied never reaches it; SPEC's status table; smuggling attempts;
streams cut on revocation; 100 MB both ways; the secret never back to the client, the log or
the audit log; an edited route never sends the secret anywhere."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.support import Cli
from helpers.upstream import SECRET_HEADER, Upstream, https_upstream
from helpers.upstream import curl as find_curl

from nhidel.enforce.broker import Limits, RunningBroker, listen_tcp, listen_unix, start_broker
from nhidel.keys.keystore import open_keystore
from nhidel.paths import Paths

VALUE = "upstream-secret-0123456789abcdef"
OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    with https_upstream(tmp_path / "upstream-ca") as running:
        yield running


@pytest.fixture
def routed(ready: Cli, upstream: Upstream) -> Cli:
    """The agent `bot` (any method on route `api`), the secret `up` and the route `api` to the
    upstream's /v1, trusting only its CA."""
    ready.ok("agent", "add", "bot", "--allow", "api:*", "--allow", "api:*:*", "--max-ttl", "1h")
    ready.ok("secret", "add", "up", input=VALUE + "\n")
    ready.ok(
        "route", "add", "api", upstream.url, "--secret", "up", "--header", SECRET_HEADER,
        "--format", "{secret}", "--ca-file", str(upstream.ca),
    )  # fmt: skip
    return ready


@dataclass
class Broker:
    running: RunningBroker
    logs: list[dict[str, Any]]

    def url(self, path: str) -> str:
        return self.running.url + path


def start(paths: Paths, **limits: Any) -> tuple[RunningBroker, list[dict[str, Any]]]:
    """A broker on a free port of 127.0.0.1 with these `Limits`, and its log entries."""
    logs: list[dict[str, Any]] = []
    running = start_broker(
        paths, open_keystore(paths), listen_tcp("127.0.0.1", 0), log=logs.append,
        limits=Limits(**limits),
    )  # fmt: skip
    return running, logs


@pytest.fixture
def broker(routed: Cli, paths: Paths) -> Iterator[Broker]:
    running, logs = start(paths)
    try:
        yield Broker(running, logs)
    finally:
        running.stop()


def grant(cli: Cli, *scopes: str, extra: tuple[str, ...] = ()) -> tuple[str, str]:
    """(token, grant id) of a 10-minute grant to `bot`."""
    args = [a for scope in scopes for a in ("--scope", scope)]
    issued = json.loads(
        cli.ok("grant", "bot", *args, "--ttl", "10m", *extra, "--format", "json").stdout
    )
    return issued["token"], issued["id"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit_text(paths: Paths) -> str:
    return "".join(p.read_text() for p in sorted(paths.state_dir.glob("audit*.jsonl*")))


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as they are (no client tidies them up) and read the answer's head."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def port_of(running: RunningBroker) -> int:
    return int(running.url.rsplit(":", 1)[1])


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- allowed ------------------------------------------------------------------------------------


def test_an_allowed_request_reaches_the_upstream_with_the_secret_and_without_the_grant(
    routed: Cli, broker: Broker, upstream: Upstream, paths: Paths
) -> None:
    token, grant_id = grant(routed, "api:get:echo")
    headers = {**bearer(token), **dict.fromkeys(OVERRIDES, "DELETE"), "X-Trace": "t1"}
    answer = httpx.get(broker.url("/api/echo?page=2&q=%2F"), headers=headers)
    assert answer.status_code == 200
    (seen,) = upstream.received
    sent = {name.lower(): value for name, value in seen["headers"]}
    assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/v1/echo", "page=2&q=%2F")
    assert sent[SECRET_HEADER.lower()] == VALUE
    assert "authorization" not in sent and token not in json.dumps(seen)
    assert not {o.lower() for o in OVERRIDES} & set(sent)
    assert sent["host"] == f"127.0.0.1:{upstream.port}" and sent["x-trace"] == "t1"
    # The upstream echoed the secret in its body (plain, base64, percent-encoded) and a header.
    assert VALUE not in answer.text and answer.json()["echo"] == "[redacted:up]"
    assert answer.json()["pct"] == "[redacted:up]"
    assert answer.json()["b64"].startswith("[redacted:up]")  # (padding bits may remain)
    assert answer.headers["X-Echo"] == "key=[redacted:up]"
    assert answer.reason_phrase == "OK [redacted:up]"
    assert VALUE not in json.dumps(list(answer.headers.items()))
    assert wait_for(lambda: len(broker.logs) == 1)  # (written once the answer has gone)
    (entry,) = broker.logs
    assert entry["decision"] == "allowed" and entry["status"] == 200
    assert (entry["route"], entry["path"], entry["agent"]) == ("api", "/echo", "bot")
    assert entry["grant"] == grant_id[:10] and VALUE not in json.dumps(entry)
    broker.running.stop()  # writes the buffered decision records
    log = audit_text(paths)
    assert VALUE not in log and token not in log
    records = [json.loads(line) for line in log.splitlines()]
    allowed = [r for r in records if r["event"] == "http.allowed"]
    assert [(r["route"], r["method"], r["path"], r["status"], r["scopes"]) for r in allowed] == [
        ("api", "GET", "/echo", 200, ["api:get:echo"])
    ]
    assert [r["secret"] for r in records if r["event"] == "secret.redacted"] == ["up"]


def test_curl_through_the_unix_socket_is_allowed_and_the_socket_is_private(
    routed: Cli, paths: Paths, upstream: Upstream
) -> None:
    curl = find_curl()
    directory = Path(tempfile.mkdtemp(prefix="nb-"))  # short: a socket path has ~100 bytes
    try:
        running = start_broker(paths, open_keystore(paths), listen_unix(directory / "p.sock"))
        try:
            assert (directory / "p.sock").stat().st_mode & 0o777 == 0o600
            token, _ = grant(routed, "api:post:echo")
            done = subprocess.run(
                [curl, "-sS", "--unix-socket", str(directory / "p.sock"), "-X", "POST",
                 "-H", f"Authorization: token {token}", "-d", "hello",
                 "-w", "\n%{http_code}", "http://localhost/api/echo"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
        finally:
            running.stop()
        body, _, status = done.stdout.rpartition("\n")
        assert status == "200" and json.loads(body)["method"] == "POST"
        assert VALUE not in done.stdout
        assert upstream.paths() == ["/v1/echo"]
        assert not (directory / "p.sock").exists()  # removed on the way out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_every_request_on_a_kept_alive_connection_is_checked(
    routed: Cli, broker: Broker, upstream: Upstream
) -> None:
    token, grant_id = grant(routed, "api:get:echo")
    with httpx.Client() as client:
        assert client.get(broker.url("/api/echo"), headers=bearer(token)).status_code == 200
        assert client.get(broker.url("/api/secret"), headers=bearer(token)).status_code == 403
        routed.ok("revoke", grant_id)
        again = client.get(broker.url("/api/echo"), headers=bearer(token))
        assert (again.status_code, again.json()) == (401, {"error": "revoked"})
        assert client.get(broker.url("/api/echo")).status_code == 401
    assert upstream.paths() == ["/v1/echo"]


def test_a_redirect_is_handed_back_not_followed(
    routed: Cli, broker: Broker, upstream: Upstream
) -> None:
    token, _ = grant(routed, "api:get:redirect")
    answer = httpx.get(broker.url("/api/redirect"), headers=bearer(token))
    assert answer.status_code == 302
    assert answer.headers["Location"] == "https://other.example/landing"
    assert upstream.paths() == ["/v1/redirect"]


def test_a_gzip_body_is_decoded_scanned_and_sent_plain(
    routed: Cli, broker: Broker, upstream: Upstream
) -> None:
    token, _ = grant(routed, "api:get:gzip")
    answer = httpx.get(broker.url("/api/gzip"), headers=bearer(token))
    assert answer.status_code == 200 and "content-encoding" not in answer.headers
    assert answer.json()["echo"] == "[redacted:up]" and VALUE not in answer.text


def test_a_route_root_is_checked_as_route_method(
    routed: Cli, broker: Broker, upstream: Upstream
) -> None:
    token, _ = grant(routed, "api:get")
    assert httpx.get(broker.url("/api"), headers=bearer(token)).status_code == 200
    assert httpx.get(broker.url("/api/echo"), headers=bearer(token)).status_code == 403
    assert upstream.paths() == ["/v1"]


def test_healthz_answers_without_a_grant_and_says_nothing_else(broker: Broker) -> None:
    answer = httpx.get(broker.url("/healthz"))
    assert (answer.status_code, answer.text) == (200, "ok\n")
    assert broker.logs == []


# -- denied: nothing goes upstream ----------------------------------------------------------------


def test_a_denied_request_never_reaches_the_upstream(
    routed: Cli, broker: Broker, upstream: Upstream, paths: Paths
) -> None:
    token, _ = grant(routed, "api:get:echo")
    answer = httpx.post(broker.url("/api/echo"), headers=bearer(token), content=b"x")
    assert answer.status_code == 403 and answer.json() == {"error": "scope_not_granted"}
    assert answer.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
    assert upstream.received == []
    broker.running.stop()
    denied = [json.loads(x) for x in audit_text(paths).splitlines() if '"http.denied"' in x]
    assert [(r["reason"], r["status"], r["method"]) for r in denied] == [
        ("scope_not_granted", 403, "POST")
    ]


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("no grant", 401, "no_grant"),
        ("garbage", 401, "malformed"),
        ("tampered", 401, "bad_signature"),
        ("not yet valid", 401, "not_yet_valid"),
        ("revoked", 401, "revoked"),
        ("used up", 401, "uses_exhausted"),
        ("wrong path", 403, "scope_not_granted"),
        ("unknown route", 404, "unknown_route"),
        ("bad path", 400, "bad_path"),
    ],
)
def test_each_denial_has_specs_status_and_reason(
    routed: Cli, broker: Broker, upstream: Upstream, case: str, status: int, error: str
) -> None:
    token, grant_id = grant(routed, "api:get:echo", extra=("--uses", "1"))
    path, headers = "/api/echo", bearer(token)
    if case == "no grant":
        headers = {}
    elif case == "garbage":
        headers = bearer("not.a.token")
    elif case == "tampered":
        head, claims, signature = token.split(".")
        flipped = "A" if signature[0] != "A" else "B"
        headers = bearer(f"{head}.{claims}.{flipped}{signature[1:]}")
    elif case == "not yet valid":
        later, _ = grant(routed, "api:get:echo", extra=("--not-before", "+5m"))
        headers = bearer(later)
    elif case == "revoked":
        routed.ok("revoke", grant_id)
    elif case == "used up":
        assert httpx.get(broker.url(path), headers=headers).status_code == 200
        upstream.received.clear()
    elif case == "wrong path":
        path = "/api/other"
    elif case == "unknown route":
        path = "/nope/echo"
    elif case == "bad path":
        path = "/api/a/%2e%2e/echo"
    answer = httpx.get(broker.url(path), headers=headers)
    assert (answer.status_code, answer.json()) == (status, {"error": error})
    if status == 401:
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert upstream.received == []


def test_a_grant_for_another_audience_is_refused_by_a_broker_with_aud(
    routed: Cli, paths: Paths, upstream: Upstream
) -> None:
    running = start_broker(paths, open_keystore(paths), listen_tcp("127.0.0.1", 0), aud="broker")
    try:
        other, _ = grant(routed, "api:get:echo", extra=("--aud", "elsewhere"))
        mine, _ = grant(routed, "api:get:echo", extra=("--aud", "broker"))
        refused = httpx.get(running.url + "/api/echo", headers=bearer(other))
        assert (refused.status_code, refused.json()) == (403, {"error": "wrong_audience"})
        assert upstream.received == []
        assert httpx.get(running.url + "/api/echo", headers=bearer(mine)).status_code == 200
    finally:
        running.stop()


def test_a_body_over_the_limit_is_413_and_too_many_at_once_is_429(
    routed: Cli, paths: Paths, upstream: Upstream
) -> None:
    running, _ = start(paths, max_body=1000, max_in_flight=1)
    try:
        token, _ = grant(routed, "api:*:*")
        big = httpx.post(running.url + "/api/upload", headers=bearer(token), content=b"x" * 2000)
        assert (big.status_code, big.json()) == (413, {"error": "body_too_large"})
        assert upstream.received == []
        with (
            httpx.Client(timeout=10) as client,
            client.stream("GET", running.url + "/api/sse", headers=bearer(token)) as stream,
        ):
            assert stream.status_code == 200
            busy = httpx.get(running.url + "/api/echo", headers=bearer(token))
            assert (busy.status_code, busy.json()) == (429, {"error": "too_many_requests"})
            assert "Retry-After" in busy.headers
        assert upstream.paths() == ["/v1/sse"]
    finally:
        running.stop()


def test_an_upstream_that_fails_is_502_and_one_that_is_slow_is_504(
    routed: Cli, paths: Paths, upstream: Upstream
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    routed.ok("route", "add", "dead", f"https://127.0.0.1:{dead_port}", "--secret", "up")
    routed.ok("agent", "update", "bot", "--allow", "dead:*:*")
    running, _ = start(paths, upstream_timeout=0.5)
    try:
        token, _ = grant(routed, "api:*:*", "dead:*:*")
        failed = httpx.get(running.url + "/dead/x", headers=bearer(token))
        assert (failed.status_code, failed.json()) == (502, {"error": "upstream_failed"})
        slow = httpx.get(running.url + "/api/slow", headers=bearer(token))
        assert (slow.status_code, slow.json()) == (504, {"error": "upstream_timeout"})
        brotli = httpx.get(running.url + "/api/brotli", headers=bearer(token))
        # aiohttp refuses to decode it (or decodes it, and the broker refuses the coding).
        assert brotli.status_code == 502
        assert brotli.json()["error"] in ("undecodable_body", "upstream_failed")
    finally:
        running.stop()


def test_tls_trusts_only_the_routes_ca_never_a_ca_variable(
    routed: Cli, paths: Paths, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same upstream registered without its CA: the system's store does not know it, and
    # SSL_CERT_FILE pointing at it must not change that; nor may a proxy variable be used.
    monkeypatch.setenv("SSL_CERT_FILE", str(upstream.ca))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    routed.ok("route", "add", "sys", upstream.url, "--secret", "up")
    routed.ok("agent", "update", "bot", "--allow", "sys:*:*")
    running, _ = start(paths)
    try:
        token, _ = grant(routed, "sys:get:echo", "api:get:echo")
        refused = httpx.get(running.url + "/sys/echo", headers=bearer(token))
        assert (refused.status_code, refused.json()) == (502, {"error": "upstream_failed"})
        assert upstream.received == []
        assert httpx.get(running.url + "/api/echo", headers=bearer(token)).status_code == 200
    finally:
        running.stop()


# -- smuggling ---------------------------------------------------------------------------------


def test_a_second_authorization_header_is_400(
    routed: Cli, broker: Broker, upstream: Upstream
) -> None:
    token, _ = grant(routed, "api:get:echo")
    answer = httpx.get(
        broker.url("/api/echo"),
        headers=[("Authorization", f"Bearer {token}"), ("Authorization", "Bearer other")],
    )
    assert (answer.status_code, answer.json()) == (400, {"error": "bad_header"})
    assert upstream.received == []


@pytest.mark.parametrize(
    ("target", "extra"),
    [
        ("/api/a/../echo", ""),
        ("/api/./echo", ""),
        ("/api//echo", ""),
        ("//other.host/api/echo", ""),
        ("/api@other.host/echo", ""),
        ("http://user@other.host/api/echo", ""),
        ("/api/a%2Fb", ""),
        ("/api/%2e%2e/echo", ""),
        ("/api/a\\b", ""),
        ("/api/echo", "Upgrade: websocket\r\nConnection: Upgrade\r\n"),
        ("/api/echo", "Transfer-Encoding: chunked\r\n"),
        ("/api/echo", "X-Evil: a\r\n b\r\n"),
        ("/api/echo", "X-Evil: a\rb\r\n"),
        ("/api/echo", "X-Evil: a\nSmuggled: b\r\n"),
    ],
)
def test_smuggling_attempts_are_400_and_never_reach_the_upstream(
    routed: Cli, broker: Broker, upstream: Upstream, target: str, extra: str
) -> None:
    token, _ = grant(routed, "api:*", "api:*:*")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    )
    answer = raw_request(port_of(broker.running), request.encode())
    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer[:200]
    assert upstream.received == []


def test_connect_is_refused(routed: Cli, broker: Broker, upstream: Upstream) -> None:
    token, _ = grant(routed, "api:*", "api:*:*")
    answer = raw_request(
        port_of(broker.running),
        f"CONNECT other.host:443 HTTP/1.1\r\nHost: other.host:443\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode(),
    )
    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request") and upstream.received == []


def test_a_method_override_header_cannot_change_the_checked_method(
    routed: Cli, broker: Broker, upstream: Upstream
) -> None:
    token, _ = grant(routed, "api:post:echo")
    for name in OVERRIDES:
        answer = httpx.post(broker.url("/api/echo"), headers={**bearer(token), name: "DELETE"})
        assert answer.status_code == 200 and answer.json()["method"] == "POST"
    for seen in upstream.received:
        assert seen["method"] == "POST"
        assert not {n.lower() for n, _ in seen["headers"]} & {o.lower() for o in OVERRIDES}


# -- streams ------------------------------------------------------------------------------------


def test_sse_streams_and_is_cut_when_its_grant_is_revoked(
    routed: Cli, broker: Broker, upstream: Upstream
) -> None:
    token, grant_id = grant(routed, "api:get:sse")
    events: list[str] = []
    cut: list[bool] = []
    ended = threading.Event()

    def read() -> None:
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("GET", broker.url("/api/sse"), headers=bearer(token)) as stream,
            ):
                assert stream.headers["content-type"] == "text/event-stream"
                events.extend(line for line in stream.iter_lines() if line)
        except httpx.RemoteProtocolError:
            cut.append(True)  # the stream ends without its last chunk: not a complete answer
        finally:
            ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert wait_for(lambda: len(events) >= 3), "events arrive while the stream is open"
    assert events[0] == "data: event 0"
    routed.ok("revoke", grant_id)
    assert ended.wait(5), "the stream is cut within the re-check interval"
    assert cut == [True], "a cut stream must not look complete"
    assert wait_for(upstream.sse_closed.is_set), "the upstream stream is closed too"
    assert wait_for(lambda: len(broker.logs) == 1)
    (entry,) = broker.logs
    assert (entry["decision"], entry["reason"]) == ("allowed", "revoked")


def test_a_quiet_stream_is_cut_within_a_second_or_so_of_its_grants_revocation(
    routed: Cli, broker: Broker
) -> None:
    token, grant_id = grant(routed, "api:get:quiet")
    lines: list[str] = []
    cut: list[bool] = []
    ended = threading.Event()

    def read() -> None:
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("GET", broker.url("/api/quiet"), headers=bearer(token)) as stream,
            ):
                lines.extend(line for line in stream.iter_lines() if line)
        except httpx.RemoteProtocolError:
            cut.append(True)
        finally:
            ended.set()

    threading.Thread(target=read, daemon=True).start()
    assert wait_for(lambda: lines == ["data: the only event"])
    routed.ok("revoke", grant_id)
    assert ended.wait(5), "nothing arrives, and the broker's timer still cuts the stream"
    assert cut == [True]


def test_a_client_that_goes_away_closes_the_upstream_stream(
    routed: Cli, broker: Broker, upstream: Upstream
) -> None:
    token, _ = grant(routed, "api:get:sse")
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", broker.url("/api/sse"), headers=bearer(token)) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "data: event 0"
    assert wait_for(upstream.sse_closed.is_set), "the upstream stream outlived its client"


def test_an_event_on_a_quiet_stream_is_not_held_back_for_redaction(
    routed: Cli, broker: Broker
) -> None:
    token, _ = grant(routed, "api:get:quiet")
    first: list[str] = []

    def read() -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream("GET", broker.url("/api/quiet"), headers=bearer(token)) as stream,
        ):
            for line in stream.iter_lines():
                first.append(line)
                return

    threading.Thread(target=read, daemon=True).start()
    assert wait_for(lambda: bool(first), timeout=3), "the event waits for bytes that never come"
    assert first == ["data: the only event"]


def test_a_100_mb_body_streams_both_ways_in_bounded_memory(routed: Cli, broker: Broker) -> None:
    import tracemalloc

    token, _ = grant(routed, "api:post:upload", "api:get:download")
    block = b"\x01" * (1 << 20)
    tracemalloc.start()  # every thread's allocations: the broker's, the upstream's, httpx's

    def body() -> Iterator[bytes]:
        for _ in range(100):
            yield block

    sent = httpx.post(broker.url("/api/upload"), headers=bearer(token), content=body(), timeout=120)
    assert sent.status_code == 200 and sent.json()["size"] == 100 << 20
    received = 0
    with httpx.stream(
        "GET", broker.url("/api/download?mb=100"), headers=bearer(token), timeout=120
    ) as stream:
        for chunk in stream.iter_raw():
            received += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert received == 100 << 20
    assert peak < 32 << 20, f"{peak >> 20} MiB at the peak: a body was held whole"


# -- the sealed configuration -----------------------------------------------------------------


def test_a_route_url_edited_in_config_toml_is_503_and_the_secret_reaches_no_listener(
    routed: Cli, broker: Broker, upstream: Upstream, paths: Paths
) -> None:
    from aiohttp import web
    from helpers.upstream import serving

    heard: list[str] = []

    async def listen(request: web.Request) -> web.Response:
        heard.append(json.dumps(dict(request.headers)))
        return web.Response(text="got it")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", listen)
    token, _ = grant(routed, "api:get:echo")
    assert httpx.get(broker.url("/api/echo"), headers=bearer(token)).status_code == 200
    with serving(app, None) as port:
        config = paths.config_file.read_text()
        edited = config.replace(upstream.url, f"http://127.0.0.1:{port}/v1")
        assert edited != config
        paths.config_file.write_text(edited)
        answer = httpx.get(broker.url("/api/echo"), headers=bearer(token))
        assert (answer.status_code, answer.json()) == (503, {"error": "integrity"})
        assert heard == []
    assert upstream.paths() == ["/v1/echo"]


def test_a_replaced_secret_and_a_removed_route_are_seen_on_the_next_request(
    routed: Cli, broker: Broker, upstream: Upstream
) -> None:
    token, _ = grant(routed, "api:get:echo")
    assert httpx.get(broker.url("/api/echo"), headers=bearer(token)).status_code == 200
    routed.ok("secret", "add", "up", "--replace", input="replaced-secret-value-42\n")
    answer = httpx.get(broker.url("/api/echo"), headers=bearer(token))
    assert answer.json()["echo"] == "[redacted:up]"
    sent = [dict((n.lower(), v) for n, v in r["headers"]) for r in upstream.received]
    assert [s[SECRET_HEADER.lower()] for s in sent] == [VALUE, "replaced-secret-value-42"]
    routed.ok("route", "remove", "api")
    gone = httpx.get(broker.url("/api/echo"), headers=bearer(token))
    assert (gone.status_code, gone.json()) == (404, {"error": "unknown_route"})
    assert len(upstream.received) == 2


def test_a_route_an_older_nhidel_registered_under_a_reserved_name_is_never_routed(
    routed: Cli, broker: Broker, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nhidel.actions import registrations

    with monkeypatch.context() as older:  # an nhidel from before the names were reserved
        older.setattr(registrations, "check_route_name", lambda name: name)
        routed.ok(
            "route", "add", "healthz", upstream.url, "--secret", "up", "--ca-file",
            str(upstream.ca),
        )  # fmt: skip
    routed.ok("agent", "update", "bot", "--allow", "healthz:*:*")
    token, _ = grant(routed, "healthz:get:echo")
    refused = httpx.get(broker.url("/healthz/echo"), headers=bearer(token))
    assert (refused.status_code, refused.json()) == (404, {"error": "unknown_route"})
    assert upstream.received == []
    doctor = {c["name"]: c for c in json.loads(routed("doctor", "--json").stdout)["checks"]}
    assert doctor["registrations"]["ok"] is False
    assert doctor["registrations"]["fix"].startswith("nhidel route remove healthz")


def test_the_default_authorization_route_replaces_the_grant_with_the_secret(
    routed: Cli, paths: Paths, upstream: Upstream
) -> None:
    routed.ok(
        "route", "add", "gh", upstream.url, "--secret", "up", "--ca-file", str(upstream.ca)
    )  # fmt: skip
    routed.ok("agent", "update", "bot", "--allow", "gh:*:*")
    running, _ = start(paths)
    try:
        token, _ = grant(routed, "gh:get:echo")
        answer = httpx.get(running.url + "/gh/echo", headers=bearer(token))
    finally:
        running.stop()
    assert answer.status_code == 200
    (seen,) = upstream.received
    assert [v for n, v in seen["headers"] if n.lower() == "authorization"] == [f"Bearer {VALUE}"]


def test_curl_posting_a_large_body_with_expect_100_continue_is_not_held(
    routed: Cli, broker: Broker, upstream: Upstream, tmp_path: Path
) -> None:
    token, _ = grant(routed, "api:post:upload")
    body = tmp_path / "body.bin"
    body.write_bytes(b"\x02" * (5 << 20))
    started = time.monotonic()
    done = subprocess.run(
        [find_curl(), "-sS", "-H", f"Authorization: Bearer {token}", "-H",
         "Expect: 100-continue", "--expect100-timeout", "20", "--data-binary", f"@{body}",
         broker.url("/api/upload")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(done.stdout)["size"] == 5 << 20
    assert time.monotonic() - started < 10  # curl got its 100 Continue, not its timeout


def test_a_chunked_body_over_the_limit_is_413(
    routed: Cli, paths: Paths, upstream: Upstream
) -> None:
    running, _ = start(paths, max_body=1 << 20)
    try:
        token, _ = grant(routed, "api:post:upload")

        def body() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it comes
            for _ in range(8):
                yield b"x" * (1 << 20)

        answer = httpx.post(
            running.url + "/api/upload", headers=bearer(token), content=body(), timeout=30
        )
    finally:
        running.stop()
    assert (answer.status_code, answer.json()) == (413, {"error": "body_too_large"})


def test_a_socket_in_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    from nhidel.errors import UsageError

    shared = Path(tempfile.mkdtemp(prefix="nb-"))
    try:
        shared.chmod(0o777)
        with pytest.raises(UsageError, match="only you can write"):
            listen_unix(shared / "p.sock")
        assert not (shared / "p.sock").exists()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced(
    routed: Cli, paths: Paths
) -> None:
    from nhidel.errors import UsageError

    directory = Path(tempfile.mkdtemp(prefix="nb-"))
    try:
        running = start_broker(paths, open_keystore(paths), listen_unix(directory / "p.sock"))
        try:
            with pytest.raises(UsageError, match="already listening"):
                listen_unix(directory / "p.sock")
        finally:
            running.stop()
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(directory / "p.sock"))
        stale.close()  # a socket file nobody listens on, as a killed broker leaves it
        listen_unix(directory / "p.sock").sock.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
