"""`nhidel proxy` as a real process: where it listens (stdout, for scripts), a log line per
request on stderr (text or JSON) that never holds the secret or the grant, the default socket
(0600 in a 0700 runtime directory) and the state file doctor reads there, no core file, the
body limit and upstream timeout as options, a changed configuration seen on the next request,
and SIGTERM: no new connection, the request in flight finished, exit 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.processes import isolated_env
from helpers.support import Cli
from helpers.upstream import SECRET_HEADER, Upstream, https_upstream
from helpers.upstream import curl as find_curl

VALUE = "upstream-secret-0123456789abcdef"
FILE_KEYSTORE = {"NHIDEL_KEYSTORE": "file", "NHIDEL_PASSPHRASE": "proxy test passphrase"}


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    with https_upstream(tmp_path / "upstream-ca") as running:
        yield running


@pytest.fixture
def env(
    cli: Cli,
    tmp_path: Path,
    upstream: Upstream,
    nhidel_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """A file keystore (made here, at the tests' cheap KDF cost) with the agent `bot`, the
    secret `up` and the route `api`; the environment a process needs to use it."""
    for name, value in FILE_KEYSTORE.items():
        monkeypatch.setenv(name, value)
    for args, given in (
        (("init", "--principal", "alice"), None),
        (("agent", "add", "bot", "--allow", "api:*:*", "--max-ttl", "1h"), None),
        (("secret", "add", "up"), VALUE + "\n"),
        (
            ("route", "add", "api", upstream.url, "--secret", "up", "--header", SECRET_HEADER,
             "--format", "{secret}", "--ca-file", str(upstream.ca)),
            None,
        ),
    ):  # fmt: skip
        cli.ok(*args, input=given)
    environment = isolated_env(tmp_path / "process", **FILE_KEYSTORE)
    environment["NHIDEL_HOME"] = str(nhidel_home)
    return environment


def token_for(cli: Cli, scope: str) -> str:
    return cli.ok("grant", "bot", "--scope", scope, "--ttl", "10m").stdout.strip()


def start_proxy(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "nhidel", "proxy", *args],
        env=env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    where = process.stdout.readline().strip()  # printed once it accepts requests
    if not where:
        process.kill()
        raise AssertionError(process.communicate()[1])
    return process, where


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr


def test_proxy_prints_its_url_logs_each_request_and_ends_on_sigterm_with_0(
    cli: Cli, env: dict[str, str], upstream: Upstream
) -> None:
    process, url = start_proxy(env, "--listen", "127.0.0.1:0")
    try:
        assert url.startswith("http://127.0.0.1:")
        token = token_for(cli, "api:get:echo")
        allowed = httpx.get(
            f"{url}/api/echo?q=query-text", headers={"Authorization": f"Bearer {token}"}
        )
        denied = httpx.get(f"{url}/api/other", headers={"Authorization": f"Bearer {token}"})
        assert (allowed.status_code, denied.status_code) == (200, 403)
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"]  # no core file, soft and hard
        if os.getuid() != 0:  # a process that is not dumpable has its /proc files owned by root
            assert os.stat(f"/proc/{process.pid}/environ").st_uid == 0
    finally:
        code, stderr = stop(process)
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if " /api/" in line]
    assert len(lines) == 2
    assert "allowed 200 GET /api/echo" in lines[0] and "agent=bot" in lines[0]
    assert "denied 403 GET /api/other" in lines[1] and "reason=scope_not_granted" in lines[1]
    assert VALUE not in stderr and token not in stderr and "query-text" not in stderr
    assert upstream.paths() == ["/v1/echo"]


def test_proxy_json_logs_one_object_per_request(
    cli: Cli, env: dict[str, str], upstream: Upstream
) -> None:
    process, url = start_proxy(env, "--listen", "127.0.0.1:0", "--json")
    try:
        token = token_for(cli, "api:get:echo")
        httpx.get(f"{url}/api/echo", headers={"Authorization": f"Bearer {token}"})
    finally:
        code, stderr = stop(process)
    assert code == 0
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [(e["route"], e["path"], e["status"], e["decision"]) for e in entries] == [
        ("api", "/echo", 200, "allowed")
    ]
    assert set(entries[0]) >= {"time", "method", "bytes", "duration_ms", "agent", "grant"}
    assert VALUE not in stderr and token not in stderr


def test_the_default_socket_is_0600_in_a_0700_runtime_directory(
    cli: Cli, env: dict[str, str], upstream: Upstream
) -> None:
    curl = find_curl()
    runtime = Path(tempfile.mkdtemp(prefix="nr-"))  # short: a socket path has ~100 bytes
    try:
        process, where = start_proxy({**env, "XDG_RUNTIME_DIR": str(runtime)})
        sock = runtime / "nhidel" / "proxy.sock"
        try:
            assert where == f"unix:{sock}"
            assert (runtime / "nhidel").stat().st_mode & 0o777 == 0o700
            assert sock.stat().st_mode & 0o777 == 0o600
            (daemon,) = doctor_says(env, runtime)["daemon"]
            assert (
                daemon["detail"]
                == f"nhidel proxy is running (pid {process.pid} on {where}) and answers"
            )
            token = token_for(cli, "api:get:echo")
            done = subprocess.run(
                [curl, "-sS", "--unix-socket", str(sock), "-H", f"Authorization: Bearer {token}",
                 "http://localhost/api/echo"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert json.loads(done.stdout)["echo"] == "[redacted:up]"
        finally:
            code, _ = stop(process)
        assert code == 0 and not sock.exists()
        assert list((runtime / "nhidel").iterdir()) == []  # the state file gone with it
        (daemon,) = doctor_says(env, runtime)["daemon"]
        assert daemon["detail"] == "no nhidel proxy is running for this home"
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def doctor_says(env: dict[str, str], runtime: Path) -> dict[str, list[dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, "-m", "nhidel", "doctor", "--json"],
        env={**env, "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    checks: dict[str, list[dict[str, Any]]] = {}
    for check in json.loads(done.stdout)["checks"]:
        checks.setdefault(check["name"], []).append(check)
    return checks


def test_listen_and_socket_together_are_a_usage_error(cli: Cli, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nhidel", "proxy", "--listen", "127.0.0.1:0", "--socket", "/x"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "not both" in done.stderr


def test_sigterm_refuses_new_connections_and_lets_the_request_in_flight_finish(
    cli: Cli, env: dict[str, str], upstream: Upstream
) -> None:
    import socket
    import threading
    import time

    process, url = start_proxy(env, "--listen", "127.0.0.1:0")
    port = int(url.rsplit(":", 1)[1])
    token = token_for(cli, "api:get:slow")
    answers: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: answers.append(
            httpx.get(f"{url}/api/slow", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        )
    )
    client.start()
    deadline = time.monotonic() + 10
    while not upstream.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.paths() == ["/v1/slow"]  # in flight: the upstream answers in 3 s
    process.send_signal(signal.SIGTERM)
    refused = False
    while not refused and time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.02)
        except ConnectionRefusedError:
            refused = True
    assert refused and not answers  # no longer accepting, the slow answer still to come
    _, stderr = process.communicate(timeout=30)
    client.join(30)
    assert process.returncode == 0, stderr
    assert [(a.status_code, a.text) for a in answers] == [(200, "late")]
    assert "stopping; requests in flight get up to 10s to finish" in stderr


def test_the_body_limit_and_the_upstream_timeout_are_options(
    cli: Cli, env: dict[str, str], upstream: Upstream
) -> None:
    process, url = start_proxy(
        env, "--listen", "127.0.0.1:0", "--max-body", "1K", "--upstream-timeout", "1s"
    )
    try:
        token = token_for(cli, "api:*:*")
        auth = {"Authorization": f"Bearer {token}"}
        small = httpx.post(f"{url}/api/echo", headers=auth, content=b"x" * 1024)
        large = httpx.post(f"{url}/api/echo", headers=auth, content=b"x" * 1025)
        slow = httpx.get(f"{url}/api/slow", headers=auth, timeout=30)
    finally:
        code, stderr = stop(process)
    assert (small.status_code, large.status_code, slow.status_code) == (200, 413, 504), stderr
    assert (large.json(), slow.json()) == (
        {"error": "body_too_large"},
        {"error": "upstream_timeout"},
    )
    assert code == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [("--max-body", "lots"), ("--max-body", "0"), ("--max-body", "1T"),
     ("--upstream-timeout", "soon")],
)  # fmt: skip
def test_a_bad_limit_is_a_usage_error_before_anything_listens(
    cli: Cli, option: str, value: str
) -> None:
    result = cli("proxy", "--listen", "127.0.0.1:0", option, value)
    assert result.exit_code == 2 and option in result.stderr and result.stdout == ""


def test_a_removed_route_and_a_replaced_secret_reach_the_running_daemon_at_once(
    cli: Cli, env: dict[str, str], upstream: Upstream
) -> None:
    process, url = start_proxy(env, "--listen", "127.0.0.1:0")
    try:
        auth = {"Authorization": f"Bearer {token_for(cli, 'api:get:echo')}"}
        assert httpx.get(f"{url}/api/echo", headers=auth).status_code == 200
        cli.ok("secret", "add", "up", "--replace", input="replaced-secret-value-42\n")
        assert httpx.get(f"{url}/api/echo", headers=auth).status_code == 200
        cli.ok("route", "remove", "api")
        gone = httpx.get(f"{url}/api/echo", headers=auth)
    finally:
        code, _ = stop(process)
    assert (gone.status_code, gone.json(), code) == (404, {"error": "unknown_route"}, 0)
    sent = [dict((n.lower(), v) for n, v in r["headers"]) for r in upstream.received]
    assert [s[SECRET_HEADER.lower()] for s in sent] == [VALUE, "replaced-secret-value-42"]


@pytest.mark.parametrize(
    ("listen", "url_start", "warned"),
    [("[::1]:0", "http://[::1]:", False), ("0.0.0.0:0", "http://0.0.0.0:", True)],
)
def test_listen_takes_ipv6_and_warns_off_loopback(
    env: dict[str, str], listen: str, url_start: str, warned: bool
) -> None:
    if listen.startswith("[") and not socket_has_ipv6():
        pytest.skip("no IPv6 loopback here")
    process, url = start_proxy(env, "--listen", listen)
    code, stderr = stop(process)
    assert url.startswith(url_start) and code == 0
    assert ("warning: listening on 0.0.0.0, not loopback" in stderr) is warned


def socket_has_ipv6() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_a_closed_stderr_does_not_make_requests_fail(
    cli: Cli, env: dict[str, str], upstream: Upstream
) -> None:
    process, url = start_proxy(env, "--listen", "127.0.0.1:0")
    assert process.stderr is not None
    process.stderr.close()  # whoever read the log went away
    try:
        token = token_for(cli, "api:get:echo")
        for path, status in (("echo", 200), ("other", 403), ("echo", 200), ("other", 403)):
            answer = httpx.get(f"{url}/api/{path}", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == status
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_ctrl_c_ends_the_proxy_with_0_too(env: dict[str, str]) -> None:
    process, _ = start_proxy(env, "--listen", "127.0.0.1:0")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0 and "nhidel proxy: stopped" in stderr
