"""`review` counts each broker request once: with a use-limited grant, every request also leaves
the `verify.allowed` and `grant.used` records of the use it spent, and those are the same
action, not more. Through the real broker and a real upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.support import Cli
from helpers.upstream import SECRET_HEADER, Upstream, https_upstream

from nhidel.enforce.broker import listen_tcp, start_broker
from nhidel.keys.keystore import open_keystore
from nhidel.paths import Paths


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    with https_upstream(tmp_path / "upstream-ca") as running:
        yield running


@pytest.fixture
def routed(ready: Cli, upstream: Upstream) -> Cli:
    """The agent `bot` (GET and POST on route `api`), the route `api` to the upstream."""
    ready.ok("agent", "add", "bot", "--allow", "api:get:*", "--allow", "api:post:*")
    ready.ok("secret", "add", "up", input="upstream-secret-0123456789abcdef\n")
    ready.ok(
        "route", "add", "api", upstream.url, "--secret", "up", "--header", SECRET_HEADER,
        "--format", "{secret}", "--ca-file", str(upstream.ca),
    )  # fmt: skip
    return ready


def test_a_use_limited_grants_requests_are_each_one_action(routed: Cli, paths: Paths) -> None:
    issued = json.loads(routed.ok("grant", "bot", "--scope", "api:get:echo", "--uses", "2",
                                  "--format", "json").stdout)  # fmt: skip
    headers = {"Authorization": f"Bearer {issued['token']}"}
    running = start_broker(paths, open_keystore(paths), listen_tcp("127.0.0.1", 0))
    try:
        answers = [httpx.get(running.url + "/api/echo", headers=headers) for _ in range(3)]
    finally:
        running.stop()  # its decisions written
    assert [a.status_code for a in answers] == [200, 200, 401]
    records = "".join(p.read_text() for p in paths.state_dir.glob("audit*.jsonl*"))
    assert records.count('"event":"verify.allowed"') == 2  # the uses the broker spent
    assert records.count('"event":"http.allowed"') == 2
    one: dict[str, Any] = json.loads(routed.ok("review", "--agent", "bot", "--json").stdout)[
        "agents"
    ][0]
    assert one["actions"] == 2
    assert one["exercised"] == [{"scope": "api:get:echo", "actions": 2}]
    assert one["denials"] == {"uses_exhausted": 1}
    assert one["grants"][0]["actions"] == 2
    assert one["command"] == "nhidel agent update bot --disallow 'api:post:*'"
