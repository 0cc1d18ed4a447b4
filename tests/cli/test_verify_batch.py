"""`nhidel verify --batch`: one verdict line per input line, in order, whatever the line holds."""

from __future__ import annotations

import io
import json
import select
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import processes
from helpers.support import Cli

from nhidel.errors import IntegrityError
from nhidel.tokens.decision import Decision, Reason
from nhidel.tokens.jws import MAX_TOKEN_LENGTH
from nhidel.verifiers.batch import verify_lines

SCOPE = "repo:read:acme/api"


def grant(cli: Cli, *extra: str) -> str:
    return cli.ok("grant", "reviewer", "--scope", SCOPE, "--ttl", "10m", *extra).stdout.strip()


def verdicts(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_mixed_lines_get_one_verdict_each_in_order_and_exit_1(ready: Cli) -> None:
    good = grant(ready)
    revoked = grant(ready)
    ready.ok("revoke", processes.claims_of(revoked)["jti"])
    lines = [good, "", "garbage", "a" * (MAX_TOKEN_LENGTH + 5000), revoked, f"  {good}\r", good]
    result = ready("verify", "--batch", "--scope", SCOPE, input="\n".join(lines))  # no last \n
    assert result.exit_code == 1, result.stderr
    got = verdicts(result.stdout)
    assert [(v["allowed"], v["reason"]) for v in got] == [
        (True, None), (False, "malformed"), (False, "malformed"), (False, "malformed"),
        (False, "revoked"), (True, None), (True, None),
    ]  # fmt: skip
    assert got[0]["grant"]["id"] == processes.claims_of(good)["jti"]
    assert got[4]["grant"]["status"] == "revoked"
    assert result.stderr == ""


def test_every_line_allowed_exits_0_with_verify_jsons_shape(ready: Cli) -> None:
    token = grant(ready)
    single = json.loads(ready.ok("verify", "-", "--scope", SCOPE, "--json", input=token).stdout)
    batch = ready("verify", "--batch", "--scope", SCOPE, input=f"{token}\n{token}\n")
    assert batch.exit_code == 0, batch.stderr
    assert verdicts(batch.stdout) == [single, single]


def test_no_lines_is_exit_0_and_no_output(ready: Cli) -> None:
    result = ready("verify", "--batch", "--any-scope", input="")
    assert (result.exit_code, result.stdout) == (0, "")


def test_options_apply_to_every_line(ready: Cli) -> None:
    token = grant(ready)
    result = ready("verify", "--batch", "--scope", "repo:read:acme/other", input=f"{token}\n" * 2)
    assert result.exit_code == 1
    assert [v["reason"] for v in verdicts(result.stdout)] == ["scope_not_granted"] * 2


def test_consume_with_batch_counts_one_use_per_allowed_line(ready: Cli) -> None:
    token = grant(ready, "--uses", "2")
    result = ready("verify", "--batch", "--scope", SCOPE, "--consume", input=f"{token}\n" * 3)
    assert result.exit_code == 1
    got = verdicts(result.stdout)
    assert [v["reason"] for v in got] == [None, None, "uses_exhausted"]
    assert [v["grant"]["uses"] for v in got] == [1, 2, 2]
    shown = json.loads(ready.ok("show", processes.claims_of(token)["jti"], "--json").stdout)
    assert shown["uses"] == 2


def test_a_token_argument_with_batch_is_a_usage_error(ready: Cli) -> None:
    result = ready("verify", "--batch", "--any-scope", "sometoken")
    assert result.exit_code == 2
    assert "--batch" in result.stderr


# -- the loop itself -------------------------------------------------------------------


class Trickle(io.RawIOBase):
    """Hands out its data a few bytes per read, and checks that every verdict for the lines
    already handed out was flushed before the reader asks for more."""

    def __init__(self, data: bytes, step: int, sink: io.BytesIO) -> None:
        self.data = data
        self.step = step
        self.sink = sink
        self.given = 0

    def read1(self, size: int = -1) -> bytes:
        complete = self.data[: self.given].count(b"\n")
        assert self.sink.getvalue().count(b"\n") >= complete, "a verdict waited for more input"
        chunk = self.data[self.given : self.given + self.step]
        self.given += len(chunk)
        return chunk


def fake_check(text: str) -> Decision:
    if text.strip() == "ok":
        return Decision(True, None, "allowed")
    return Decision(False, Reason.MALFORMED, "no")


def test_verdicts_are_flushed_before_waiting_for_more_input_at_any_chunking() -> None:
    data = b"ok\n\nbad\n" + b"x" * (MAX_TOKEN_LENGTH * 2) + b"\nok\nok"
    for step in (1, 7, 4096, len(data)):
        sink = io.BytesIO()
        allowed = verify_lines(Trickle(data, step, sink), sink, fake_check, lambda: 0.0)
        got = [(v["allowed"], v["reason"]) for v in verdicts(sink.getvalue().decode())]
        assert got == [
            (True, None), (False, "malformed"), (False, "malformed"), (False, "malformed"),
            (True, None), (True, None),
        ], step  # fmt: skip
        assert allowed is False


def test_a_gateway_gets_each_verdict_before_it_sends_the_next_token(tmp_path: Path) -> None:
    env = processes.isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE="p4ss-w0rd")
    processes.ok(env, "init", "--principal", "alice")
    processes.ok(env, "agent", "add", "bot", "--allow", SCOPE, "--max-ttl", "1h")
    token = processes.ok(env, "grant", "bot", "--scope", SCOPE).stdout.strip()
    child = subprocess.Popen(
        processes.command("verify", "--batch", "--scope", SCOPE),
        env=env, cwd=env["HOME"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        for expected in (True, False, True):
            child.stdin.write((token if expected else "nope").encode() + b"\n")
            child.stdin.flush()
            ready, _, _ = select.select([child.stdout], [], [], 30)
            assert ready, "no verdict while the input pipe stays open"
            assert json.loads(child.stdout.readline())["allowed"] is expected
        child.stdin.close()
        assert child.wait(timeout=30) == 1
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def test_batch_verifies_remotely_with_a_jwks(ready: Cli, tmp_path: Path) -> None:
    token = grant(ready)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(ready.ok("key", "export", "--jwks").stdout)
    result = ready("verify", "--batch", "--jwks", str(jwks), "--iss", "nhidel:alice",
                   "--scope", SCOPE, input=f"{token}\nnope\n{token}\n")  # fmt: skip
    assert result.exit_code == 1, result.stderr
    got = verdicts(result.stdout)
    assert [(v["allowed"], v["reason"]) for v in got] == [
        (True, None), (False, "malformed"), (True, None),
    ]  # fmt: skip


def test_lines_decided_before_a_failing_one_keep_their_verdicts() -> None:
    """A corrupt ledger row stops the batch, but the lines answered before it (whose uses may
    be spent already) still get their verdicts, in order."""
    decided = []

    def check(text: str) -> Decision:
        if text == "corrupt":
            raise IntegrityError("the ledger row is corrupt", "restore the ledger")
        decided.append(text)
        return Decision(False, Reason.MALFORMED, "not a token")

    sink = io.BytesIO()
    with pytest.raises(IntegrityError):
        verify_lines(io.BytesIO(b"first\nsecond\ncorrupt\nnever\n"), sink, check)
    assert decided == ["first", "second"]
    assert [json.loads(line)["reason"] for line in sink.getvalue().splitlines()] == [
        "malformed",
        "malformed",
    ]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_batch_still_audits_the_verdicts_it_gave(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """Decisions wait up to a second for the group commit; a service manager's SIGTERM (or a
    closed terminal's SIGHUP) must not throw away verdicts a gateway has already acted on."""
    env = processes.isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE="p4ss-w0rd")
    processes.ok(env, "init", "--principal", "alice")
    processes.ok(env, "agent", "add", "bot", "--allow", SCOPE, "--max-ttl", "1h")
    token = processes.ok(env, "grant", "bot", "--scope", SCOPE).stdout.strip()
    child = subprocess.Popen(
        processes.command("verify", "--batch", "--scope", SCOPE),
        env=env, cwd=env["HOME"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        for _ in range(3):
            child.stdin.write(token.encode() + b"\n")
            child.stdin.flush()
            assert json.loads(child.stdout.readline())["allowed"] is True
        child.send_signal(stop)
        assert child.wait(timeout=30) == 128 + stop
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        child.stdin.close()
        child.stdout.close()
    records = [
        json.loads(line)
        for line in processes.ok(env, "audit", "tail", "-n", "20", "--json").stdout.splitlines()
    ]
    allowed = [r for r in records if r["event"] == "verify.allowed"]
    assert sum(r.get("count", 1) for r in allowed) == 3
