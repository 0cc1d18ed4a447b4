"""Colour where people would rather look than read, and nowhere else.

Each grant status in `list` and `show` has its colour (an active grant with a minute or less left
is yellow), and a denial in `audit tail` is bold red: on a terminal only. NO_COLOR (any value,
even empty), a pipe or --json means no escape code at all.

The commands run as processes whose stdout is a real pseudo-terminal (or a pipe), with the clock
fixed: the ledger is made in-process, and each process reads it 40 s later.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.processes import REPO, TIMEOUT, isolated_env
from helpers.support import Cli

from nhidel.cli import common

# Runs one command with `nhidel.cli.common.now` fixed at argv[1].
PROBE = """
import sys
import nhidel.cli.common as common
common.now = lambda: int(sys.argv[1])
from nhidel.cli import main
sys.exit(main(sys.argv[2:]))
"""
LATER = 40  # seconds after the grants were made, when the commands read them


@dataclass(frozen=True)
class Scene:
    ids: dict[str, str]  # a grant id by the status it has at `later`
    later: int


@pytest.fixture
def scene(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Scene:
    """Grants that, at `later`, are in every status; and a denied verify in the audit log.

    Made at the real time (verify, which spends the use, checks against the real clock), with
    the commands' clock held at that second."""
    made = int(time.time())
    monkeypatch.setattr(common, "now", lambda: made)
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")

    def grant(*args: str) -> tuple[str, str]:
        result = cli.ok(
            "grant", "reviewer", "--scope", "repo:read:acme/api", "--format", "json", *args
        )
        minted = json.loads(result.stdout)
        return str(minted["id"]), str(minted["token"])

    ids = {
        "active": grant("--ttl", "15m")[0],
        "expiring": grant("--ttl", "90s")[0],  # 50 s left at `later`
        "expired": grant("--ttl", "30s")[0],
        "pending": grant("--not-before", "+5m")[0],
        "revoked": grant()[0],
    }
    ids["exhausted"], token = grant("--uses", "1")
    cli.ok("revoke", ids["revoked"])
    cli.ok("verify", "-", "--any-scope", "--consume", input=token)
    assert cli("verify", "-", "--any-scope", input="not.a.token").exit_code == 1
    return Scene(ids, made + LATER)


def run(scene: Scene, tmp: Path, *args: str, terminal: bool = True, **env: str) -> str:
    """One nhidel command at `scene.later`, its stdout a terminal (or a pipe): what it wrote."""
    environ = isolated_env(tmp / "process", NHIDEL_HOME=os.environ["NHIDEL_HOME"])
    del environ["NO_COLOR"]  # isolated_env sets it; these tests decide
    environ.update(COLUMNS="200", TERM="xterm-256color", **env)
    argv = [sys.executable, "-c", PROBE, str(scene.later), *args]
    if not terminal:
        done = subprocess.run(argv, capture_output=True, text=True, env=environ, cwd=REPO,
                              timeout=TIMEOUT, check=True)  # fmt: skip
        return done.stdout
    leader, follower = os.openpty()
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower,
                             stderr=subprocess.PIPE, env=environ, cwd=REPO)  # fmt: skip
    os.close(follower)
    out = b""
    try:
        while chunk := os.read(leader, 1 << 16):
            out += chunk
    except OSError:  # EIO: the child has closed the terminal
        pass
    finally:
        os.close(leader)
    assert child.wait(timeout=TIMEOUT) == 0, child.stderr.read() if child.stderr else ""
    return out.decode().replace("\r\n", "\n")


def painted(text: str, sgr: str) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m"


def line_of(output: str, grant_id: str) -> str:
    (line,) = [line for line in output.splitlines() if grant_id[:10] in line]
    return line


# What each status looks like: green, yellow (a minute or less left), cyan, faint, red, magenta.
STATUS_LOOKS = {
    "active": ("active", "32"),
    "expiring": ("active", "33"),
    "pending": ("pending, starts in 4m 20s", "36"),
    "expired": ("expired", "2"),
    "revoked": ("revoked", "31"),
    "exhausted": ("exhausted", "35"),
}


def test_list_colours_each_status_on_a_terminal(scene: Scene, tmp_path: Path) -> None:
    output = run(scene, tmp_path, "list", "--all")
    assert output.startswith("\x1b[1mID ")  # the header, bold
    for name, (text, sgr) in STATUS_LOOKS.items():
        assert line_of(output, scene.ids[name]).endswith("  " + painted(text, sgr)), name
    live = run(scene, tmp_path, "list")
    assert line_of(live, scene.ids["pending"]).endswith(painted("pending, starts in 4m 20s", "36"))


def test_show_colours_the_status_on_a_terminal(scene: Scene, tmp_path: Path) -> None:
    for name in ("expiring", "revoked", "exhausted"):
        text, sgr = STATUS_LOOKS[name]
        output = run(scene, tmp_path, "show", scene.ids[name])
        assert f"\nstatus         {painted(text, sgr)}\n" in output, name
        assert output.count("\x1b[") == 2  # the status alone


def test_audit_tail_colours_denials_and_nothing_else(scene: Scene, tmp_path: Path) -> None:
    lines = run(scene, tmp_path, "audit", "tail", "-n", "100").splitlines()
    denied = [line for line in lines if "verify.denied" in line]
    assert len(denied) == 1 and denied[0].startswith("\x1b[1;31m")
    assert denied[0].endswith("-> malformed\x1b[0m")
    assert all("\x1b" not in line for line in lines if line not in denied)
    assert any("verify.allowed" in line for line in lines)  # the consumed use: not coloured


@pytest.mark.parametrize("no_color", ["1", ""])
def test_no_colour_on_a_terminal_with_no_color_set_to_any_value(
    scene: Scene, tmp_path: Path, no_color: str
) -> None:
    for args in (("list", "--all"), ("list",), ("show", scene.ids["pending"]), ("audit", "tail")):
        output = run(scene, tmp_path, *args, NO_COLOR=no_color)
        assert "\x1b" not in output and scene.ids["pending"][:10] in output, args


def test_no_colour_through_a_pipe_or_in_json(scene: Scene, tmp_path: Path) -> None:
    for args in (("list", "--all"), ("show", scene.ids["revoked"]), ("audit", "tail")):
        output = run(scene, tmp_path, *args, terminal=False)
        assert "\x1b" not in output and scene.ids["revoked"][:10] in output, args
    for args in (("list", "--all", "--json"), ("show", scene.ids["revoked"], "--json"),
                 ("audit", "tail", "--json")):  # fmt: skip
        output = run(scene, tmp_path, *args)  # a terminal, and still plain JSON
        assert "\x1b" not in output and scene.ids["revoked"] in output, args
