"""`nhidel approvals watch` as a real process: requests opened by an enforcement point's `Desk`
(here, in the test's process, on the same home) are noticed as they arrive; with `--json` each
is one line, and on a terminal (a pseudo-terminal) each is asked about and answered."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.processes import TIMEOUT, command, init_cheaply, isolated_env, ok, run

from nhidel.actions.approvals import Desk
from nhidel.audit import AuditKeys
from nhidel.cli.approval_watch import SETTLE
from nhidel.integrity.approvals import Call
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.ledger.store import Ledger
from nhidel.paths import Paths


class Home:
    """An initialised home with a file keystore, shared by the test and the nhidel it runs."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        passphrase = root / "passphrase"
        passphrase.write_text("watch tests\n")
        passphrase.chmod(0o600)
        self.env = isolated_env(root, NHIDEL_KEYSTORE="file",
                                NHIDEL_PASSPHRASE_FILE=str(passphrase))  # fmt: skip
        init_cheaply(self.env, "--principal", "alice")
        for name in ("NHIDEL_HOME", "NHIDEL_KEYSTORE", "NHIDEL_PASSPHRASE_FILE"):
            monkeypatch.setenv(name, self.env[name])
        self.paths = Paths.from_env()
        self.store: KeyStore = open_keystore(self.paths, prompt=None)

    def ask(self, content: str, *, agent: str = "shopper") -> str:
        """A held `fs write_file` call, as the MCP gateway's desk opens it: its request id."""
        arguments = {"path": "/srv/pay.txt", "content": content}
        call = Call(agent, "g" + "q" * 26, "fs", "write_file", ("/srv/pay.txt",),
                    hashlib.sha256(content.encode()).hexdigest())  # fmt: skip
        with Ledger(self.paths) as ledger:
            desk = Desk(self.paths, AuditKeys.of(self.store), ledger, clock=time.time)
            verdict = desk.consider(call, via="mcp", mark="fs:write_file:*", arguments=arguments)
        assert verdict.request is not None
        return verdict.request.id

    def answers(self) -> dict[str, str]:
        listed = json.loads(ok(self.env, "approvals", "--json", "--all").stdout)
        return {item["id"]: item["status"] for item in listed}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    return Home(tmp_path, monkeypatch)


def test_json_prints_waiting_then_newly_arrived_requests_as_lines(home: Home) -> None:
    waiting = home.ask("pay 10")
    process = subprocess.Popen(
        command("approvals", "watch", "--json"), env=home.env, cwd=home.env["HOME"], text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        first = json.loads(read_line(process))
        arrived = home.ask("pay 20\x1b[2J", agent="bot")  # after the watch started
        second = json.loads(read_line(process))
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=TIMEOUT)
    assert (first["id"], second["id"]) == (waiting, arrived)
    listed = json.loads(ok(home.env, "approvals", "--json").stdout)
    assert second == next(item for item in listed if item["id"] == arrived)  # the same keys
    assert second["agent"] == "bot" and second["status"] == "pending"
    assert "\\u001b[2J" in second["summary"]  # escaped by the desk's summary
    assert process.returncode == 130 and stderr == ""  # Ctrl-C ends it quietly


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
    assert ready, "no line from approvals watch --json"
    return process.stdout.readline()


def test_without_a_terminal_or_json_it_refuses_with_a_hint(tmp_path: Path) -> None:
    refused = run(isolated_env(tmp_path), "approvals", "watch")
    assert refused.code == 2
    assert "terminal" in refused.stderr and "--json" in refused.stderr


class Terminal:
    """nhidel on a pseudo-terminal (its controlling terminal, 200 columns wide): what it drew,
    and keys typed into it."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.master, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.process = subprocess.Popen(
            command(*args), env={**env, "TERM": "xterm"}, cwd=env["HOME"], stdin=follower,
            stdout=follower, stderr=follower, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )  # fmt: skip
        os.close(follower)
        self.screen = ""

    def until(self, text: str) -> None:
        """Read what is drawn until `text` shows (in what came since the last call)."""
        deadline = time.monotonic() + TIMEOUT
        seen = len(self.screen)
        while text not in self.screen[seen:]:
            assert time.monotonic() < deadline, f"{text!r} never showed:\n{self.screen[-2000:]}"
            if select.select([self.master], [], [], 0.2)[0]:
                self.screen += os.read(self.master, 65536).decode(errors="replace")

    def press(self, key: bytes) -> None:
        os.write(self.master, key)

    def close(self) -> int:
        """Wait for nhidel to end, keep the last it drew, and return its exit status."""
        try:
            code = self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        while select.select([self.master], [], [], 0.2)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: nothing holds the terminal any more
                break
            if not chunk:
                break
            self.screen += chunk.decode(errors="replace")
        os.close(self.master)
        return code


@pytest.fixture
def notifier(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A `notify-send` on PATH that writes down its arguments: (its bin dir, what it wrote)."""
    bin_dir, said = tmp_path / "bin", tmp_path / "notified"
    bin_dir.mkdir()
    program = bin_dir / "notify-send"
    program.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{said}"\n')
    program.chmod(0o755)
    yield bin_dir, said


def test_on_a_terminal_y_approves_and_n_denies_as_requests_arrive(
    home: Home, notifier: tuple[Path, Path]
) -> None:
    bin_dir, notified = notifier
    first = home.ask("pay 10")
    env = {**home.env, "PATH": f"{bin_dir}{os.pathsep}{home.env['PATH']}"}
    terminal = Terminal(env, "approvals", "watch")
    try:
        terminal.until(f"approve {first} (shopper)?")
        second = home.ask("pay 20", agent="bot")  # arrives while the first is asked
        terminal.until(second)
        terminal.until(f"approve {first} (shopper)?")  # still the first: a newcomer waits
        time.sleep(SETTLE)  # a yes sooner than this after a prompt shows is not taken
        terminal.press(b"y")
        terminal.until(f"approved {first}: shopper")
        terminal.until(f"approve {second} (bot)?")
        terminal.press(b"d")
        terminal.until("arguments:")
        time.sleep(SETTLE)
        terminal.press(b"n")
        terminal.until(f"denied {second}: bot")
        terminal.until("nothing to ask")  # (what was typed before this shows is dropped)
        terminal.press(b"q")
    finally:
        code = terminal.close()
    assert code == 0, terminal.screen[-2000:]
    answers = home.answers()
    assert (answers[first], answers[second]) == ("granted", "denied")
    said = notified.read_text()
    assert f"bot asks: fs write_file ({second})" in said
    assert "pay 20" not in said  # argument values never go on a command line


def test_ctrl_c_ends_the_watch_quietly_with_130(home: Home) -> None:
    terminal = Terminal(home.env, "approvals", "watch")
    try:
        terminal.until("waiting for requests")
        terminal.press(b"\x03")
    finally:
        code = terminal.close()
    assert code == 130
    assert "Traceback" not in terminal.screen and "error" not in terminal.screen
