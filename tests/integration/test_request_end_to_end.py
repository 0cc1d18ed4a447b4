"""`nhidel request --wait` end to end, as processes: through a real `nhidel proxy` on a socket
(authenticated by a grant of the agent) and through nhidel's files with no keystore in the
requester's environment; the human answers with `approve` or `deny` from another process.
One home and one daemon serve the whole module."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.processes import command, finish, init_cheaply, isolated_env, ok, run

SCOPE = "pay:charge"
pytestmark = pytest.mark.xdist_group("grant-requests")  # one home and daemon for the module
KEYSTORE_VARIABLES = ("NHIDEL_KEYSTORE", "NHIDEL_PASSPHRASE_FILE", "NHIDEL_PASSPHRASE")


class Home:
    """Agents `shopper` and `other` (pay:*, at most 1h), and `nhidel proxy` on a socket."""

    def __init__(self, root: Path) -> None:
        passphrase = root / "passphrase"
        passphrase.write_text("grant request tests\n")
        passphrase.chmod(0o600)
        self.env = isolated_env(root, NHIDEL_KEYSTORE="file",
                                NHIDEL_PASSPHRASE_FILE=str(passphrase))  # fmt: skip
        init_cheaply(self.env, "--principal", "alice")
        for agent in ("shopper", "other"):
            ok(self.env, "agent", "add", agent, "--allow", "pay:*", "--max-ttl", "1h")
        run_dir = root / "run"
        run_dir.mkdir(mode=0o700)
        self.socket = run_dir / "proxy.sock"
        self.daemon = subprocess.Popen(
            command("proxy", "--socket", str(self.socket)), env=self.env, cwd=self.env["HOME"],
            text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=(root / "proxy-stderr.txt").open("w"), start_new_session=True,
        )  # fmt: skip
        assert self.daemon.stdout is not None
        assert self.daemon.stdout.readline().strip() == f"unix:{self.socket}"
        # The requester's environment: the home, and no keystore at all.
        self.requester = {k: v for k, v in self.env.items() if k not in KEYSTORE_VARIABLES}

    def grant(self, agent: str) -> str:
        return ok(self.env, "grant", agent, "--scope", "pay:refund", "--ttl", "10m").stdout.strip()

    def request(self, *args: str, token: str | None = None) -> subprocess.Popen[str]:
        env = dict(self.requester)
        if token is not None:
            env["NHIDEL_TOKEN"] = token
        return subprocess.Popen(
            command("request", "shopper", "--scope", SCOPE, "--reason", "pay invoice 7", *args),
            env=env, cwd=env["HOME"], text=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip

    def answer(self, *how: str) -> str:
        """Wait for the one pending request, then `nhidel approve|deny ID ...` it; its id."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = json.loads(ok(self.env, "approvals", "--json").stdout)
            pending = [item for item in listed if item["status"] == "pending"]
            if pending:
                ok(self.env, how[0], pending[0]["id"], *how[1:])
                return str(pending[0]["id"])
            time.sleep(0.2)
        raise AssertionError("no request arrived")

    def stop(self) -> None:
        self.daemon.terminate()
        self.daemon.wait(30)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    made = Home(tmp_path_factory.mktemp("grant-requests"))
    yield made
    made.stop()


def test_through_the_daemon_request_wait_prints_the_token_approve_minted(home: Home) -> None:
    requester = home.request("--wait", token=home.grant("shopper"))  # --wait alone: 10m
    try:
        approval_id = home.answer("approve")
    finally:
        done = finish(requester, timeout=30)
    assert done.code == 0, str(done)
    token = done.stdout.strip()
    verdict = json.loads(
        ok(home.env, "verify", "-", "--scope", SCOPE, "--json", input=token).stdout
    )
    assert verdict["allowed"] is True and verdict["grant"]["agent"] == "shopper"
    (item,) = [i for i in json.loads(ok(home.env, "approvals", "--json", "--all").stdout)
               if i["id"] == approval_id]  # fmt: skip
    assert item["grant_request"]["authenticated"] is True
    assert item["grant_request"]["fingerprint"] in done.stderr  # the one request printed
    audit = Path(home.env["NHIDEL_HOME"], "audit.jsonl").read_text()
    assert token not in audit and token.split(".")[2] not in audit


def test_through_the_daemon_a_grant_of_another_agent_is_refused(home: Home) -> None:
    transport = httpx.HTTPTransport(uds=str(home.socket))
    with httpx.Client(transport=transport, base_url="http://localhost") as http:
        answer = http.post(
            "/requests",
            headers={"Authorization": f"Bearer {home.grant('other')}"},
            json={"agent": "shopper", "scopes": [SCOPE], "ttl": None, "reason": "r",
                  "pubkey": "A" * 43},
        )  # fmt: skip
    assert (answer.status_code, answer.json()["error"]) == (403, "wrong_agent")
    refused = finish(home.request("--wait=5s", token=home.grant("other")))
    assert refused.code == 6 and "wrong_agent" in refused.stderr


def test_through_the_files_without_a_keystore_request_wait_gets_its_token(home: Home) -> None:
    requester = home.request("--wait=30s", "--via", "files")
    approval_id = home.answer("approve")
    done = finish(requester)
    assert done.code == 0, str(done)
    verdict = json.loads(
        ok(home.env, "verify", "-", "--scope", SCOPE, "--json", input=done.stdout).stdout
    )
    assert verdict["allowed"] is True
    listed = json.loads(ok(home.env, "approvals", "--json", "--all").stdout)
    (item,) = [i for i in listed if i["id"] == approval_id]
    assert item["grant_request"]["authenticated"] is False


@pytest.mark.parametrize("via", ["daemon", "files"])
def test_a_denied_request_ends_approval_denied(home: Home, via: str) -> None:
    requester = home.request("--wait=30s", "--via", via, token=home.grant("shopper"))
    home.answer("deny", "--reason", "not this month")
    done = finish(requester)
    assert done.code == 1 and done.stdout == ""
    assert done.stderr.splitlines()[-1] == "approval_denied: not this month"


@pytest.mark.parametrize("via", ["daemon", "files"])
def test_an_unanswered_request_ends_approval_timeout(home: Home, via: str) -> None:
    done = finish(home.request("--wait=2s", "--via", via, token=home.grant("shopper")))
    assert done.code == 1 and done.stdout == ""
    assert done.stderr.splitlines()[-1] == "approval_timeout"
    assert run(home.env, "approvals", "--json").code == 0  # (its lapse recorded on the way)


def test_through_the_daemon_another_agents_grant_cannot_read_a_request(home: Home) -> None:
    requester = home.request("--wait=30s", token=home.grant("shopper"))
    try:
        listed = []
        deadline = time.monotonic() + 30
        while not listed and time.monotonic() < deadline:
            listed = [i for i in json.loads(ok(home.env, "approvals", "--json").stdout)
                      if i["status"] == "pending"]  # fmt: skip
        transport = httpx.HTTPTransport(uds=str(home.socket))
        with httpx.Client(transport=transport, base_url="http://localhost") as http:
            other = {"Authorization": f"Bearer {home.grant('other')}"}
            answer = http.get(f"/requests/{listed[0]['id']}", headers=other)
        assert (answer.status_code, answer.json()["error"]) == (404, "unknown_request")
        ok(home.env, "deny", listed[0]["id"])
    finally:
        finish(requester)


def test_the_daemon_takes_in_a_file_request_by_itself(home: Home) -> None:
    requests_dir = Path(home.env["NHIDEL_HOME"], "requests")
    filed = ok(home.requester, "request", "shopper", "--scope", SCOPE, "--reason", "r",
               "--via", "files").stdout.strip()  # fmt: skip
    deadline = time.monotonic() + 20  # the daemon looks every INTAKE_EVERY (2s)
    while (requests_dir / filed).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    records = [json.loads(line) for line in
               Path(home.env["NHIDEL_HOME"], "audit.jsonl").read_text().splitlines()]  # fmt: skip
    (taken,) = [r for r in records if r["event"] == "grant.requested" and r["approval"] == filed]
    assert taken["authenticated"] is False and taken["via"] == "files"
    ok(home.env, "deny", filed)


def test_the_endpoint_refuses_no_grant_a_bad_body_and_a_bad_key(home: Home) -> None:
    transport = httpx.HTTPTransport(uds=str(home.socket))
    mine = {"Authorization": f"Bearer {home.grant('shopper')}"}
    good = {"agent": "shopper", "scopes": [SCOPE], "ttl": None, "reason": "r", "pubkey": "A" * 43}
    with httpx.Client(transport=transport, base_url="http://localhost") as http:
        assert http.post("/requests", json=good).status_code == 401
        assert http.post("/requests", headers=mine, content=b"[").status_code == 400
        assert http.post("/requests", headers=mine, json={**good, "pubkey": "A"}).status_code == 400
        beyond = http.post("/requests", headers=mine, json={**good, "scopes": ["*:*:**"]})
        assert beyond.status_code == 400
        assert http.get("/requests/aaaaaaaaaaaaaaaaa", headers=mine).status_code == 404
    assert not [i for i in json.loads(ok(home.env, "approvals", "--json").stdout)
                if i["status"] == "pending"]  # fmt: skip
