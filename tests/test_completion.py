"""Shell completion: the fast path's answers, its imports, the shipped scripts in real shells."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from support import Cli

from nhidel.audit.records import EVENTS
from nhidel.cli import complete
from nhidel.cli.shell_scripts import FILES, script
from nhidel.config import Paths
from nhidel.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
COMPLETIONS = ROOT / "completions"


def grant(cli: Cli, *args: str) -> str:
    """Mint a grant for reviewer; return its full id."""
    result = cli.ok("grant", "reviewer", "--format", "json", *args)
    return str(json.loads(result.stdout)["id"])


def values(words: list[str], now: int | None = None) -> list[str]:
    found = complete.candidates(words, now=int(time.time()) if now is None else now)
    return [value for value, _ in found]


def run(shell: str, *words: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert complete.run(shell, list(words)) == 0
    return out.getvalue()


@pytest.fixture
def live(ready: Cli) -> dict[str, str]:
    """Grants in every state: two active, one pending; one revoked, one used up, one short."""
    ids = {
        "active": grant(ready, "--scope", "repo:read:acme/api", "--ttl", "30m"),
        "other": grant(ready, "--scope", "ticket:create:queue/support", "--ttl", "20m"),
        "pending": grant(ready, "--scope", "repo:read:acme/web", "--not-before", "+5m"),
        "revoked": grant(ready, "--scope", "repo:read:acme/api"),
        "short": grant(ready, "--scope", "repo:read:acme/api", "--ttl", "1m"),
    }
    ready.ok("revoke", ids["revoked"])
    token = ready.ok("grant", "reviewer", "--scope", "repo:read:acme/api", "--uses", "1").stdout
    ready.ok("verify", "-", "--any-scope", "--consume", input=token)
    return ids


# -- what is offered ----------------------------------------------------------------------


def test_revoke_and_show_offer_only_live_grants_soonest_to_expire_first(
    live: dict[str, str],
) -> None:
    later = int(time.time()) + 120  # the 1-minute grant has expired by then
    expected = [live["other"], live["active"]]
    for command in ("revoke", "show"):
        offered = values([command, ""], now=later)
        assert set(offered) == {live["active"], live["other"], live["pending"]}
        assert [g for g in offered if g in expected] == expected
    assert live["short"] in values(["revoke", ""])


def test_grant_descriptions_name_the_agent_scopes_and_relative_expiry(
    live: dict[str, str],
) -> None:
    described = dict(complete.candidates(["revoke", ""], now=int(time.time())))
    assert described[live["active"]] == "reviewer repo:read:acme/api, expires in 30m"
    assert described[live["pending"]].startswith("reviewer repo:read:acme/web, pending, starts in")


def test_revoke_completes_a_typed_prefix_and_skips_ids_already_given(
    live: dict[str, str],
) -> None:
    assert values(["revoke", live["active"][:6]]) == [live["active"]]
    assert live["active"] not in values(["revoke", live["active"], ""])
    assert values(["show", live["active"], ""]) == []  # show takes one id


@pytest.mark.parametrize("words", [
    ["grant", ""], ["agent", "show", ""], ["agent", "remove", ""], ["revoke", "--agent", ""],
    ["list", "--agent", ""], ["list", "--agent="], ["audit", "tail", "--agent", ""],
])  # fmt: skip
def test_agent_names_complete_where_an_agent_is_expected(ready: Cli, words: list[str]) -> None:
    ready.ok("agent", "add", "release-bot", "--allow", "release:publish")
    expected = ["reviewer", "release-bot"]
    if words[-1].startswith("--agent="):
        expected = [f"--agent={name}" for name in expected]
    assert values(words) == expected


def test_grant_scope_completes_the_scopes_of_that_agents_ceiling(ready: Cli) -> None:
    assert values(["grant", "reviewer", "--scope", ""]) == [
        "repo:read:acme/*",
        "ticket:create:queue/*",
    ]
    assert values(["grant", "reviewer", "--ttl", "5m", "--scope", "tic"]) == [
        "ticket:create:queue/*"
    ]
    assert values(["grant", "nobody", "--scope", ""]) == []


def test_audit_tail_event_completes_every_event_name() -> None:
    assert values(["audit", "tail", "--event", ""]) == list(EVENTS)


def test_commands_options_and_choices_come_from_the_command_table() -> None:
    assert values(["ag"]) == ["agent"]
    assert values(["agent", ""]) == ["add", "list", "show", "remove"]
    assert "--scope" in values(["grant", "reviewer", "--"])
    assert values(["grant", "reviewer", "--format", ""]) == ["token", "json", "env"]
    assert values(["--ver"]) == ["--version"]


def test_bash_gets_words_split_at_colons_rejoined_and_answers_trimmed(ready: Cli) -> None:
    # Bash splits `repo:re` into `repo`, `:`, `re` and replaces only the text after the colon.
    assert run("bash", "grant", "reviewer", "--scope", "repo", ":", "") == "read:acme/*\n"
    assert run("bash", "grant", "reviewer", "--scope", "ticket", ":", "cre") == "create:queue/*\n"
    assert run("bash", "list", "--agent", "=", "rev") == "reviewer\n"


def test_zsh_and_fish_get_descriptions_with_zsh_colons_escaped(ready: Cli) -> None:
    assert run("zsh", "grant", "reviewer", "--scope", "rep") == (
        "repo\\:read\\:acme/*:allowed for reviewer\n"
    )
    assert run("fish", "grant", "reviewer", "--scope", "rep") == (
        "repo:read:acme/*\tallowed for reviewer\n"
    )


def test_hostile_ledger_text_cannot_reach_the_terminal_or_break_lines(
    ready: Cli, paths: Paths
) -> None:
    Ledger(paths).close()  # the schema
    db = sqlite3.connect(paths.ledger_file)
    with db:
        db.execute(
            "INSERT INTO grants (id, agent, scope, issued_at, not_before, expires_at, kid, "
            "token_sha256) VALUES (?, ?, ?, 0, 0, ?, 'k', 'h')",
            ("g" + "a" * 26, "evil\x1b]0;pwned\x07\nagent", "x:y\u202e\r", int(time.time()) + 60),
        )
    db.close()
    for shell in ("bash", "zsh", "fish"):
        out = run(shell, "revoke", "")
        assert out.count("\n") == 1
        assert not any(ch in out for ch in "\x1b\x07\r\u202e")


def test_a_missing_or_corrupt_home_offers_nothing_and_creates_nothing(
    nhidel_home: Path,
) -> None:
    assert run("bash", "revoke", "") == ""
    assert not nhidel_home.exists()
    nhidel_home.mkdir()
    (nhidel_home / "ledger.db").write_bytes(b"not a database" * 100)
    (nhidel_home / "config.toml").write_text("[agents\n")
    assert run("bash", "revoke", "") == ""
    assert run("zsh", "grant", "") == ""
    assert sorted(p.name for p in nhidel_home.iterdir()) == ["config.toml", "ledger.db"]


@pytest.mark.parametrize("env", [
    {"NHIDEL_HOME": "/srv/nh"},
    {"HOME": "/home/u"},
    {"HOME": "/home/u", "XDG_CONFIG_HOME": "/cfg", "XDG_STATE_HOME": "/state"},
    {"HOME": "/home/u", "XDG_CONFIG_HOME": "relative", "XDG_STATE_HOME": ""},
])  # fmt: skip
def test_the_fast_path_finds_the_same_files_as_nhidel_config(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NHIDEL_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    paths = Paths.from_env()
    assert complete._dirs() == (paths.config_dir, paths.state_dir)


# -- the process: fast, light, and Typer's completion still there -------------------------


def completion_env(shell: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "_NHIDEL_COMPLETE": shell, **extra}


def test_the_completion_path_imports_no_heavy_module(live: dict[str, str]) -> None:
    probe = (
        "import sys\n"
        "from nhidel.cli import main\n"
        "main(['revoke', ''])\n"
        "main(['grant', 'reviewer', '--scope', ''])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=completion_env("fish"), timeout=60, check=True)  # fmt: skip
    *answers, modules = result.stdout.splitlines()
    assert any(line.startswith(live["active"]) for line in answers)
    assert "repo:read:acme/*\tallowed for reviewer" in answers
    loaded = set(eval(modules))  # noqa: S307 - our own probe's repr of a list of names
    assert loaded.isdisjoint({"cryptography", "jwt", "keyring", "rich", "typer", "click"})


def test_typers_own_completion_instructions_still_work() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nhidel"], capture_output=True, text=True, timeout=60, check=True,
        env=completion_env("complete_bash", COMP_WORDS="nhidel gr", COMP_CWORD="1"),
    )  # fmt: skip
    assert result.stdout.split() == ["grant"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_and_install_completion_give_the_shipped_script(shell: str, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = subprocess.run(
        [sys.executable, "-m", "nhidel", "--show-completion", shell],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    shipped = (COMPLETIONS / FILES[shell]).read_text()
    assert shipped == script(shell)
    assert shown.stdout.strip() == shipped.strip()
    subprocess.run(
        [sys.executable, "-m", "nhidel", "--install-completion", shell],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    installed = {
        "bash": tmp_path / ".bash_completions" / "nhidel.sh",
        "zsh": tmp_path / ".zfunc" / "_nhidel",
        "fish": tmp_path / ".config" / "fish" / "completions" / "nhidel.fish",
    }[shell]
    assert installed.read_text().strip() == shipped.strip()


# -- the shipped scripts in real shells ---------------------------------------------------


@pytest.fixture
def shell_env(tmp_path: Path, nhidel_home: Path) -> dict[str, str]:
    """`nhidel` on PATH running this checkout, and the test's NHIDEL_HOME."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "nhidel"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m nhidel "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "NHIDEL_HOME": str(nhidel_home), "HOME": str(tmp_path)}  # fmt: skip


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (tests/run.sh installs it with apt-get as root)")
    return path


def live_ids(live: dict[str, str]) -> set[str]:
    return {live["active"], live["other"], live["pending"], live["short"]}


def test_bash_script_completes_revoke_with_the_live_grant_ids(
    live: dict[str, str], shell_env: dict[str, str]
) -> None:
    driver = (
        f"source {COMPLETIONS / 'nhidel.bash'}\n"
        'COMP_WORDS=(nhidel revoke ""); COMP_CWORD=2\n'
        "_nhidel_completion nhidel\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
        'COMP_WORDS=(nhidel grant reviewer --scope repo : ""); COMP_CWORD=6\n'
        "_nhidel_completion nhidel\n"
        'printf "scope %s\\n" "${COMPREPLY[@]}"\n'
        "complete -p nhidel\n"
    )
    result = subprocess.run(
        [need("bash"), "--norc", "--noprofile", "-c", driver],
        capture_output=True,
        text=True,
        env=shell_env,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert set(lines[:-2]) == live_ids(live)
    assert lines[-2:] == ["scope read:acme/*", "complete -F _nhidel_completion nhidel"]


def test_fish_script_completes_revoke_with_ids_and_descriptions(
    live: dict[str, str], shell_env: dict[str, str]
) -> None:
    fish = need("fish")
    driver = f"source {COMPLETIONS / 'nhidel.fish'}; complete -C 'nhidel revoke '"
    result = subprocess.run([fish, "--no-config", "-c", driver], capture_output=True, text=True,
                            env=shell_env, timeout=60, check=True)  # fmt: skip
    offered = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert set(offered) == live_ids(live)
    assert offered[live["active"]] == "reviewer repo:read:acme/api, expires in 30m"


# zsh completes only inside its line editor: drive an interactive zsh on a pseudo-terminal.
ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty -b z zsh -f -i
zpty -w z "PS1='> '; $1; print READY"
zpty -r -m z out '*READY*'
zpty -w -n z $'nhidel revoke \t'
local all=""
for i in {1..150}; do
    zpty -r -t z chunk && all+=$chunk
    [[ $all == *"$2"* ]] && break
    (( i % 10 )) || zpty -w -n z $'\t'
    sleep 0.1
done
print -r -- "$all"
zpty -d z
"""
ZSH_SETUPS = {
    "sourced": f"autoload -Uz compinit; compinit -u -D; source {COMPLETIONS / '_nhidel'}",
    "autoloaded": f"fpath=({COMPLETIONS} $fpath); autoload -Uz compinit; compinit -u -D",
}


@pytest.mark.parametrize("setup", sorted(ZSH_SETUPS))
def test_zsh_script_lists_revoke_candidates_with_descriptions(
    setup: str, live: dict[str, str], shell_env: dict[str, str], tmp_path: Path
) -> None:
    zsh = need("zsh")
    driver = tmp_path / "drive.zsh"
    driver.write_text(ZSH_DRIVER)
    result = subprocess.run(
        [zsh, "-f", str(driver), ZSH_SETUPS[setup], "expires in 30m"],
        capture_output=True, text=True, env=shell_env, timeout=60, check=True,
    )  # fmt: skip
    screen = result.stdout.replace("\r", "")
    for grant_id in live_ids(live):
        assert grant_id in screen
    assert f"{live['active']}  -- reviewer repo:read:acme/api, expires in 30m" in screen
    assert live["revoked"] not in screen
