"""Shell completion: the fast path's answers, its imports, the shipped scripts in real shells."""

from __future__ import annotations

import hashlib
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
from typing import Any

import pytest
from helpers.support import Cli

from nhidel import names
from nhidel.actions.approvals import Choice, Desk, answer, listed, new_approval_id
from nhidel.audit import AuditKeys
from nhidel.audit.records import EVENTS
from nhidel.cli import complete
from nhidel.cli.shell_scripts import FILES, script
from nhidel.integrity.approvals import Call
from nhidel.keys.keystore import open_keystore
from nhidel.ledger.columns import LIVE_GRANT_SQL
from nhidel.ledger.store import Ledger
from nhidel.paths import Paths

ROOT = Path(__file__).resolve().parents[2]
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
    ["grant", ""], ["agent", "show", ""], ["agent", "update", ""], ["agent", "remove", ""],
    ["revoke", "--agent", ""],
    ["list", "--agent", ""], ["list", "--agent="], ["audit", "tail", "--agent", ""],
    ["review", "--agent", ""],
])  # fmt: skip
def test_agent_names_complete_where_an_agent_is_expected(ready: Cli, words: list[str]) -> None:
    ready.ok("agent", "add", "release-bot", "--allow", "release:publish")
    expected = ["reviewer", "release-bot"]
    if words[-1].startswith("--agent="):
        expected = [f"--agent={name}" for name in expected]
    assert values(words) == expected


def test_grant_scope_completes_that_agents_ceiling_wildcards_up_to_the_star(ready: Cli) -> None:
    assert values(["grant", "reviewer", "--scope", ""]) == [
        "repo:read:acme/",
        "ticket:create:queue/",
    ]
    assert values(["grant", "reviewer", "--ttl", "5m", "--scope", "tic"]) == [
        "ticket:create:queue/"
    ]
    assert values(["grant", "reviewer", "--scope", "repo:read:acme/ap"]) == []  # typing on
    assert values(["grant", "nobody", "--scope", ""]) == []


def test_agent_update_disallow_completes_the_entries_of_that_agents_ceiling(ready: Cli) -> None:
    assert values(["agent", "update", "reviewer", "--disallow", ""]) == [
        "repo:read:acme/*",
        "ticket:create:queue/*",
    ]


def test_exact_ceiling_scopes_complete_whole_and_wildcards_once(ready: Cli) -> None:
    ready.ok("agent", "add", "ci", "--allow", "release:publish", "--allow", "build:*:jobs/*",
             "--allow", "build:*")  # fmt: skip
    assert complete.candidates(["grant", "ci", "--scope", ""], now=0) == [
        ("release:publish", "allowed for ci"),
        ("build:", "within build:*:jobs/*, for ci"),  # build:* gives the same prefix: once
    ]


def test_audit_tail_event_completes_every_event_name() -> None:
    assert values(["audit", "tail", "--event", ""]) == list(EVENTS)


def test_commands_options_and_choices_come_from_the_command_table() -> None:
    assert values(["ag"]) == ["agent"]
    assert values(["agent", ""]) == ["add", "list", "show", "update", "remove"]
    assert "--scope" in values(["grant", "reviewer", "--"])
    assert values(["grant", "reviewer", "--format", ""]) == ["token", "json", "env", "export"]
    assert values(["--ver"]) == ["--version"]


def test_bash_gets_words_split_at_colons_rejoined_and_answers_trimmed(ready: Cli) -> None:
    # Bash splits `repo:re` into `repo`, `:`, `re` and replaces only the text after the colon.
    assert run("bash", "grant", "reviewer", "--scope", "repo", ":", "") == "read:acme/\n"
    assert run("bash", "grant", "reviewer", "--scope", "ticket", ":", "cre") == "create:queue/\n"
    assert run("bash", "list", "--agent", "=", "rev") == "reviewer\n"


def test_zsh_and_fish_get_descriptions_with_zsh_colons_escaped(ready: Cli) -> None:
    # For zsh, values typed on after (no space) come after an empty line.
    assert run("zsh", "grant", "reviewer", "--scope", "rep") == (
        "\nrepo\\:read\\:acme/:within repo:read:acme/*, for reviewer\n"
    )
    assert run("fish", "grant", "reviewer", "--scope", "rep") == (
        "repo:read:acme/\twithin repo:read:acme/*, for reviewer\n"
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


@pytest.mark.parametrize("xdg", [False, True])
def test_the_fast_path_reads_the_files_where_paths_puts_them(
    xdg: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NHIDEL_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        if xdg:
            monkeypatch.setenv(name, str(tmp_path / name.lower()))
    paths = Paths.from_env()
    assert paths.config_dir != paths.state_dir  # two directories: each file must be found
    paths.config_dir.mkdir(parents=True)
    (paths.config_dir / "config.toml").write_text('[agents.reviewer]\nallow = ["a:b"]\n')
    paths.state_dir.mkdir(parents=True)
    insert_grant(paths, "g" + "c" * 26, expires_in=60)
    assert run("bash", "revoke", "") == "g" + "c" * 26 + "\n"
    assert run("bash", "grant", "") == "reviewer\n"


@pytest.mark.parametrize("name", ["plain", "a b", "q?x#y%z&mode=rw", "caf\u00e9", "back\\slash"])
def test_the_fast_path_finds_a_ledger_whatever_its_directory_is_called(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ledger is opened by URI: nothing in the path may read as a URI parameter.
    home = tmp_path / name / "home"
    home.mkdir(parents=True)
    monkeypatch.setenv("NHIDEL_HOME", str(home))
    insert_grant(Paths(home, home), "g" + "d" * 26, expires_in=60)
    assert run("bash", "revoke", "") == "g" + "d" * 26 + "\n"
    ledger = str(home / "ledger.db")
    assert complete._file_uri(ledger) == Path(ledger).as_uri()


def test_the_fast_path_holds_values_to_the_shared_patterns() -> None:
    # complete.py restates neither: a name or id nhidel would refuse is never offered.
    # (names.py holds its checks to its patterns: tests/unit/test_names.py.)
    assert complete.is_agent_name is names.is_agent_name
    assert complete.is_grant_id is names.is_grant_id


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
    assert "repo:read:acme/\twithin repo:read:acme/*, for reviewer" in answers
    loaded = set(eval(modules))  # noqa: S307 - our own probe's repr of a list of names
    assert loaded.isdisjoint({"cryptography", "jwt", "keyring", "rich", "typer", "click"})


# Completion's own modules: all that it may import besides what the standard library's readers
# it uses import themselves.
COMPLETION_MODULES = {
    "nhidel", "nhidel.cli", "nhidel.cli.complete", "nhidel.cli.command_table", "nhidel.ledger",
    "nhidel.ledger.columns", "nhidel.locations", "nhidel.names", "nhidel.relative_time",
}  # fmt: skip
# What each TAB runs on: a stdlib `sqlite3` read (the ledger), and where agents are named, a
# `tomllib` read of config.toml; for a ceiling's scopes, the scope grammar too. (`os` is what
# `site` imports at every start; the probes run without it.)
LEDGER = "import os, sqlite3"
CONFIG = "import os, sqlite3, tomllib"
SCOPES = "import os, tomllib, nhidel.scopes"
FLOORS = [
    (["revoke", ""], LEDGER), (["show", "g"], LEDGER), (["revoke", "g", ""], LEDGER),
    (["gr"], LEDGER), (["grant", "--"], LEDGER), (["grant", "reviewer", "--format", ""], LEDGER),
    (["audit", "tail", "--event", ""], LEDGER),
    (["grant", ""], CONFIG), (["revoke", "--agent", ""], CONFIG),
    (["agent", "show", ""], CONFIG),
    (["grant", "reviewer", "--scope", ""], SCOPES),
]  # fmt: skip


def loaded_after(code: str, env: dict[str, str]) -> tuple[list[str], set[str]]:
    """Run `code` in this interpreter without `site` (whose .pth files import what they like),
    this checkout first on the path: what it printed, and every module loaded at the end."""
    probe = f"import sys\n{code}\nsys.stdout.write(' '.join(sorted(sys.modules)))\n"
    env = {**env, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                            env=env, timeout=60, check=True)  # fmt: skip
    *printed, modules = result.stdout.splitlines()
    return printed, set(modules.split())


def test_each_tab_imports_nothing_its_standard_library_read_does_not(
    live: dict[str, str],
) -> None:
    # Measured against this very interpreter, so the test holds on any machine; and without
    # site-packages, so completion needs nothing but the standard library.
    env = completion_env("bash", _NHIDEL_COMP_TYPE="9")
    floors = {code: loaded_after(code, env)[1] for code in {LEDGER, CONFIG, SCOPES}}
    for words, floor in FLOORS:
        offered, modules = loaded_after(f"from nhidel.cli import main\nmain({words!r})", env)
        assert offered, f"{words}: nothing offered, so the branch was not exercised"
        extra = modules - floors[floor] - COMPLETION_MODULES
        assert not extra, f"{words} imports what `{floor}` does not: {sorted(extra)}"
    offered, _ = loaded_after("from nhidel.cli import main\nmain(['revoke', ''])", env)
    assert any(line.startswith(live["active"]) for line in offered)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_typers_source_instruction_gives_the_shipped_script(shell: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nhidel"], capture_output=True, text=True, timeout=60,
        check=True, env=completion_env(f"source_{shell}"),
    )  # fmt: skip
    assert result.stdout.strip() == script(shell).strip()
    assert f"complete_{shell}" not in result.stdout  # not Typer's own script


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
    assert installed.read_text() == shipped  # whole, down to the final newline


# -- the shipped scripts in real shells ---------------------------------------------------


@pytest.fixture
def shell_env(tmp_path: Path, nhidel_home: Path) -> dict[str, str]:
    """`nhidel` on PATH running this checkout, and the test's NHIDEL_HOME."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "nhidel"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m nhidel "$@"\n')
    wrapper.chmod(0o755)
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "NHIDEL_HOME": str(nhidel_home), "HOME": str(tmp_path),
            "PYTHONPATH": python_path}  # fmt: skip


def need(program: str) -> str:
    """The program's path; a skip if it is missing, or a failure under NHIDEL_REQUIRE_SHELLS=1
    (tests/run.sh sets it in CI, where a silent skip would hide a broken script)."""
    path = shutil.which(program)
    if path is None:
        reason = f"{program} is not installed (tests/run.sh installs it with apt-get as root)"
        if os.environ.get("NHIDEL_REQUIRE_SHELLS") == "1":
            pytest.fail(f"{reason}; NHIDEL_REQUIRE_SHELLS=1 forbids skipping")
        pytest.skip(reason)
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
    assert lines[-2:] == ["scope read:acme/", "complete -F _nhidel_completion nhidel"]


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


# zsh completes only inside its line editor: drive an interactive zsh on a pseudo-terminal:
# set up ($1), type a line ($3), TAB, any keys after it ($4), until the screen shows $2.
ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty -b z zsh -f -i
zpty -w z "PS1='> '; $1; print READY"
zpty -r -m z out '*READY*'
zpty -w -n z "$3"$'\t'"$4"
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
        [zsh, "-f", str(driver), ZSH_SETUPS[setup], "expires in 30m", "nhidel revoke "],
        capture_output=True, text=True, env=shell_env, timeout=60, check=True,
    )  # fmt: skip
    screen = result.stdout.replace("\r", "")
    for grant_id in live_ids(live):
        assert grant_id in screen
    assert f"{live['active']}  -- reviewer repo:read:acme/api, expires in 30m" in screen
    assert live["revoked"] not in screen


# -- issue 4: hostile values, word breaks, case, quotes, side effects, cost, order ---------

HOSTILE_ID = "gz$(touch${IFS}/tmp/PWNED3)"


def insert_grant(paths: Paths, grant_id: str, *, expires_in: int, agent: str = "reviewer") -> None:
    """A row written straight into the ledger, as a hostile or hand-edited one would be."""
    Ledger(paths).close()  # the schema
    db = sqlite3.connect(paths.ledger_file)
    with db:
        db.execute(
            "INSERT INTO grants (id, agent, scope, issued_at, not_before, expires_at, kid, "
            "token_sha256) VALUES (?, ?, 'repo:read:acme/api', 0, 0, ?, 'k', 'h')",
            (grant_id, agent, int(time.time()) + expires_in),
        )
    db.close()


def add_to_config(paths: Paths, text: str) -> None:
    config = paths.config_dir / "config.toml"
    config.write_text(config.read_text() + text)


def test_values_outside_their_grammar_are_never_offered(ready: Cli, paths: Paths) -> None:
    insert_grant(paths, HOSTILE_ID, expires_in=60)
    insert_grant(paths, "G" + "A" * 26, expires_in=60)  # upper case: not an id nhidel mints
    good = "g" + "b" * 26
    insert_grant(paths, good, expires_in=60)
    add_to_config(paths, '\n[agents."x$(reboot)"]\nallow = ["repo:read:*"]\n'
                         '[agents.Upper]\nallow = ["repo:read:*"]\n')  # fmt: skip
    for shell in ("bash", "zsh", "fish"):
        assert [line.split("\t")[0].split(":")[0] for line in
                run(shell, "revoke", "").splitlines()] == [good]  # fmt: skip
        assert run(shell, "grant", "").split("\n")[0].split("\t")[0].split(":")[0] == "reviewer"
        assert len(run(shell, "grant", "").splitlines()) == 1


def test_hand_edited_ceiling_scopes_are_checked_and_escaped_for_bash(
    ready: Cli, paths: Paths
) -> None:
    config = paths.config_dir / "config.toml"
    config.write_text(config.read_text().replace(
        '"ticket:create:queue/*"', '"ticket:create:queue/*", "x:y:$(touch)", "bad scope", "a"'
    ))  # fmt: skip
    assert values(["grant", "reviewer", "--scope", ""]) == [
        "repo:read:acme/", "ticket:create:queue/", "x:y:$(touch)",
    ]  # fmt: skip
    assert run("bash", "grant", "reviewer", "--scope", "") == (
        "repo:read:acme/\nticket:create:queue/\nx:y:\\$\\(touch\\)\n"
    )


def test_bash_inserts_hostile_text_literally(
    ready: Cli, paths: Paths, shell_env: dict[str, str], tmp_path: Path
) -> None:
    """Type what bash completes, press Enter (eval): the value arrives as one literal word."""
    insert_grant(paths, HOSTILE_ID, expires_in=60)
    config = paths.config_dir / "config.toml"
    marker = tmp_path / "PWNED"
    config.write_text(config.read_text().replace(
        '"ticket:create:queue/*"', f'"x:y:a;touch${{IFS}}{marker}"'
    ))  # fmt: skip
    driver = (
        f"source {COMPLETIONS / 'nhidel.bash'}\n"
        'COMP_WORDS=(nhidel revoke ""); COMP_CWORD=2\n'
        "_nhidel_completion nhidel\n"
        'echo "ids ${#COMPREPLY[@]}"\n'
        'COMP_WORDS=(nhidel grant reviewer --scope ""); COMP_CWORD=4\n'
        "_nhidel_completion nhidel\n"
        'for reply in "${COMPREPLY[@]}"; do eval "printf \'%s\\n\' $reply"; done\n'
    )
    result = subprocess.run([need("bash"), "--norc", "--noprofile", "-c", driver],
                            capture_output=True, text=True, env=shell_env, timeout=60,
                            check=True, cwd=tmp_path)  # fmt: skip
    assert result.stdout.splitlines() == [
        "ids 0",
        "repo:read:acme/",
        f"x:y:a;touch${{IFS}}{marker}",
    ]
    assert not marker.exists()


@pytest.mark.parametrize("wordbreaks", ["\"'><;|&(", "\"'><;|&(:"])  # without ':', then '='
def test_bash_rejoins_and_trims_only_at_its_actual_word_breaks(
    ready: Cli, wordbreaks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_NHIDEL_WORDBREAKS", wordbreaks)
    if ":" in wordbreaks:
        assert run("bash", "grant", "reviewer", "--scope", "repo", ":", "re") == "read:acme/\n"
    else:
        assert run("bash", "grant", "reviewer", "--scope", "repo:re") == "repo:read:acme/\n"
    assert run("bash", "list", "--agent=rev") == "--agent=reviewer\n"


@pytest.mark.parametrize("remove", [":", "="])
def test_bash_script_passes_comp_wordbreaks(
    ready: Cli, shell_env: dict[str, str], remove: str
) -> None:
    driver = (
        f"source {COMPLETIONS / 'nhidel.bash'}\n"
        f"COMP_WORDBREAKS=${{COMP_WORDBREAKS//{remove}/}}\n"
        "COMP_WORDS=(nhidel grant reviewer --scope repo:re); COMP_CWORD=4\n"
        "_nhidel_completion nhidel\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
        "COMP_WORDS=(nhidel list --agent=rev); COMP_CWORD=2\n"
        "_nhidel_completion nhidel\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run([need("bash"), "--norc", "--noprofile", "-c", driver],
                            capture_output=True, text=True, env=shell_env, timeout=60,
                            check=True)  # fmt: skip
    if remove == ":":  # `repo:re` is one word to bash: all of it is replaced
        assert result.stdout.splitlines() == ["repo:read:acme/", "reviewer"]
    else:  # `--agent=rev` is one word to bash
        assert result.stdout.splitlines() == ["read:acme/", "--agent=reviewer"]


def test_upper_case_id_prefixes_complete(live: dict[str, str]) -> None:
    assert values(["revoke", live["active"][:6].upper()]) == [live["active"]]
    assert values(["revoke", live["active"][:2].upper()]) == values(["revoke", live["active"][:2]])
    assert run("bash", "revoke", live["active"][:8].upper()) == live["active"] + "\n"


def test_bash_completes_a_word_opened_with_a_quote(ready: Cli) -> None:
    assert run("bash", "grant", "reviewer", "--scope", "'rep") == "repo:read:acme/\n"
    assert run("bash", "grant", "reviewer", "--scope", "'repo:re") == "repo:read:acme/\n"
    assert run("bash", "grant", "reviewer", "--scope", '"tic') == "ticket:create:queue/\n"


def test_fish_completes_a_word_opened_with_a_quote(ready: Cli, shell_env: dict[str, str]) -> None:
    driver = (f"source {COMPLETIONS / 'nhidel.fish'}; "
              "complete -C \"nhidel grant reviewer --scope 'rep\"")  # fmt: skip
    result = subprocess.run([need("fish"), "--no-config", "-c", driver], capture_output=True,
                            text=True, env=shell_env, timeout=60, check=True)  # fmt: skip
    assert result.stdout == "repo:read:acme/\twithin repo:read:acme/*, for reviewer\n"


def test_completion_leaves_the_ledger_directory_as_it_was(
    live: dict[str, str], paths: Paths
) -> None:
    ledger_dir = paths.ledger_file.parent
    assert not Path(f"{paths.ledger_file}-wal").exists()
    before = sorted(p.name for p in ledger_dir.iterdir())
    assert run("bash", "revoke", "")
    assert run("fish", "revoke", live["active"][:6])
    assert sorted(p.name for p in ledger_dir.iterdir()) == before


def test_short_prefixes_walk_the_expiry_index_not_expired_history(
    live: dict[str, str], paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db: sqlite3.Connection = connect(*args, **kwargs)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(sqlite3, "connect", traced)
    plans = {}
    for prefix in ("", "g", live["active"][:3], live["active"][:6]):
        statements.clear()
        assert live["active"] in values(["revoke", prefix])
        (sql,) = [s for s in statements if s.startswith("SELECT")]
        assert LIVE_GRANT_SQL in sql  # the ledger's own words for a live grant
        db = connect(paths.ledger_file)
        plans[prefix] = " ".join(str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        db.close()
    for prefix, plan in plans.items():
        # An expiry index: since schema 3, grants_live, which holds the live grants alone.
        index = "grants_live" if len(prefix) < complete.RANGE_PREFIX else "autoindex"
        assert index in plan, (prefix, plan)


# Bash lists candidates in the order given only when told not to sort: drive it interactively:
# the script ($2), the line typed ($3) and TAB, until the screen shows $4; more setup in $5.
BASH_PTY = r"""
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], [sys.argv[1], "--norc", "--noprofile", "-i"])
def read(seconds):
    out, end = b"", time.time() + seconds
    while time.time() < end:
        if select.select([fd], [], [], 0.05)[0]:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
    return out
setup = ["PS1='> '", "bind 'set completion-display-width 0'", "bind 'set page-completions off'",
         "bind 'set show-all-if-ambiguous on'", *sys.argv[5:], "source " + sys.argv[2],
         "echo READY"]
os.write(fd, ("; ".join(setup) + "\n").encode())
seen = b""
for _ in range(100):
    seen += read(0.1)
    if seen.count(b"READY") >= 2:
        break
os.write(fd, sys.argv[3].encode() + b"\t")  # the line typed, then TAB
out = b""
for _ in range(100):
    out += read(0.1)
    if sys.argv[4].encode() in out:  # what the completion should bring up
        break
sys.stdout.write(out.decode(errors="replace"))
os.kill(pid, 9)
"""


def test_bash_lists_grants_soonest_to_expire_first(
    paths: Paths, shell_env: dict[str, str], tmp_path: Path
) -> None:
    soonest_last_alphabetically = ["gz" + "a" * 25, "gm" + "a" * 25, "ga" + "a" * 25]
    for n, grant_id in enumerate(soonest_last_alphabetically):
        insert_grant(paths, grant_id, expires_in=600 * (n + 1))
    probe = tmp_path / "drive_bash.py"
    probe.write_text(BASH_PTY)
    result = subprocess.run(
        [sys.executable, str(probe), need("bash"), str(COMPLETIONS / "nhidel.bash"),
         "nhidel revoke ", soonest_last_alphabetically[-1] + "\r\n"],
        capture_output=True, text=True, env=shell_env, timeout=60, check=True,
    )  # fmt: skip
    listed = [line.split() for line in result.stdout.replace("\r", "").splitlines()]
    assert [w[0] for w in listed if w and w[0] in soonest_last_alphabetically] == (
        soonest_last_alphabetically
    )


def test_a_missing_shell_fails_when_shells_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NHIDEL_REQUIRE_SHELLS", "1")
    with pytest.raises(pytest.fail.Exception):
        need("no-such-shell-nhidel")
    monkeypatch.delenv("NHIDEL_REQUIRE_SHELLS")
    with pytest.raises(pytest.skip.Exception):
        need("no-such-shell-nhidel")


def test_zsh_completes_a_word_opened_with_a_quote(
    ready: Cli, shell_env: dict[str, str], tmp_path: Path
) -> None:
    zsh = need("zsh")
    driver = tmp_path / "drive.zsh"
    driver.write_text(ZSH_DRIVER)
    line = "nhidel grant reviewer --scope 'rep"
    result = subprocess.run(
        [zsh, "-f", str(driver), ZSH_SETUPS["sourced"], "acme/", line],
        capture_output=True, text=True, env=shell_env, timeout=60, check=True,
    )  # fmt: skip
    assert "'repo:read:acme/" in result.stdout.replace("\r", "")


def test_zsh_completes_an_upper_case_id_prefix(
    live: dict[str, str], shell_env: dict[str, str], tmp_path: Path
) -> None:
    zsh = need("zsh")
    driver = tmp_path / "drive.zsh"
    driver.write_text(ZSH_DRIVER)
    wanted = live["active"]
    line = f"nhidel revoke {wanted[:8].upper()}"
    result = subprocess.run(
        [zsh, "-f", str(driver), ZSH_SETUPS["sourced"], wanted, line],
        capture_output=True, text=True, env=shell_env, timeout=60, check=True,
    )  # fmt: skip
    assert wanted in result.stdout.replace("\r", "")


def test_fish_completes_an_upper_case_id_prefix(
    live: dict[str, str], shell_env: dict[str, str]
) -> None:
    typed = live["active"][:8].upper()
    driver = f"source {COMPLETIONS / 'nhidel.fish'}; complete -C 'nhidel revoke {typed}'"
    result = subprocess.run([need("fish"), "--no-config", "-c", driver], capture_output=True,
                            text=True, env=shell_env, timeout=60, check=True)  # fmt: skip
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [live["active"]]


@pytest.mark.parametrize(("typed", "completed"), [
    # Bash closes the quote it was given; `'repo:read:acme/'api` is still one word.
    ("'rep", "'repo:read:acme/'"),
    ("repo:read:ac", "repo:read:acme/"),  # after the last ':', and no space: type on
])  # fmt: skip
def test_bash_completes_scopes_interactively(
    ready: Cli, shell_env: dict[str, str], tmp_path: Path, typed: str, completed: str
) -> None:
    probe = tmp_path / "drive_bash.py"
    probe.write_text(BASH_PTY)
    result = subprocess.run(
        [sys.executable, str(probe), need("bash"), str(COMPLETIONS / "nhidel.bash"),
         f"nhidel grant reviewer --scope {typed}", f"--scope {completed}"],
        capture_output=True, text=True, env=shell_env, timeout=60, check=True,
    )  # fmt: skip
    assert f"nhidel grant reviewer --scope {completed}" in result.stdout


# -- issue 13: bash descriptions, audiences, wildcards typed on, zsh settings left alone ----


def bash_pty(shell_env: dict[str, str], tmp_path: Path, line: str, until: str, *setup: str) -> str:
    """The screen of an interactive bash after `line` and TAB (BASH_PTY), carriage returns
    and bells dropped."""
    probe = tmp_path / "drive_bash.py"
    probe.write_text(BASH_PTY)
    result = subprocess.run(
        [sys.executable, str(probe), need("bash"), str(COMPLETIONS / "nhidel.bash"), line, until,
         *setup],
        capture_output=True, text=True, env=shell_env, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.replace("\r", "").replace("\x07", "")


# Ctrl-T shows the line being edited as `BUF[...]`, plain text under the prompt.
ZSH_SHOW_LINE = "show-line() { zle -M \"BUF[$BUFFER]\" }; zle -N show-line; bindkey '^T' show-line"


def zsh_line(shell_env: dict[str, str], tmp_path: Path, line: str, keys: str = "") -> str:
    """The line an interactive zsh holds after `line`, TAB and `keys` (ZSH_DRIVER)."""
    driver = tmp_path / "drive.zsh"
    driver.write_text(ZSH_DRIVER)
    setup = f"{ZSH_SETUPS['sourced']}; {ZSH_SHOW_LINE}"
    result = subprocess.run(
        [need("zsh"), "-f", str(driver), setup, "]", line, keys + "\x14"],
        capture_output=True, text=True, env=shell_env, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.split("BUF[", 1)[1].split("]", 1)[0]


def fish_offers(shell_env: dict[str, str], line: str) -> list[str]:
    """What fish's `complete -C` offers for `line`, as `value<TAB>description` lines."""
    driver = f"source {COMPLETIONS / 'nhidel.fish'}; complete -C '{line}'"
    result = subprocess.run([need("fish"), "--no-config", "-c", driver], capture_output=True,
                            text=True, env=shell_env, timeout=60, check=True)  # fmt: skip
    return result.stdout.splitlines()


@pytest.mark.parametrize("comp_type", ["9", "33", "63", "64"])  # TAB, and the listing kinds
def test_bash_lists_several_candidates_with_their_descriptions_aligned(
    live: dict[str, str], monkeypatch: pytest.MonkeyPatch, comp_type: str
) -> None:
    monkeypatch.setenv("_NHIDEL_COMP_TYPE", comp_type)
    monkeypatch.setenv("_NHIDEL_COLUMNS", "120")
    lines = run("bash", "revoke", "").splitlines()
    assert f"{live['active']}  (reviewer repo:read:acme/api, expires in 30m)" in lines
    assert len(lines) == len(live_ids(live))
    assert all(line.index("  (") == len(live["active"]) for line in lines)


@pytest.mark.parametrize("words", [
    ["revoke", ""], ["grant", "reviewer", "--scope", ""], ["agent", ""], ["--"],
])  # fmt: skip
def test_what_bash_inserts_from_a_listing_never_reaches_a_description(
    live: dict[str, str], monkeypatch: pytest.MonkeyPatch, words: list[str]
) -> None:
    """Bash inserts what all the candidates it lists share: never past the end of a value."""
    monkeypatch.setenv("_NHIDEL_COMP_TYPE", "9")
    listed = run("bash", *words).splitlines()
    offered = [value for value, _ in complete.candidates(words, now=int(time.time()))]
    assert len(listed) > 1 and any("  (" in line for line in listed)
    shared = os.path.commonprefix(listed)
    assert all(value.startswith(shared) for value in offered), (shared, offered)


@pytest.mark.parametrize("comp_type", ["37", "42", ""])  # menu-complete, insert-completions, none
def test_bash_gets_values_alone_when_it_inserts_them_one_by_one(
    live: dict[str, str], monkeypatch: pytest.MonkeyPatch, comp_type: str
) -> None:
    monkeypatch.setenv("_NHIDEL_COMP_TYPE", comp_type)
    assert set(run("bash", "revoke", "").splitlines()) == live_ids(live)


def test_bash_inserts_a_single_candidate_without_its_description(
    live: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_NHIDEL_COMP_TYPE", "9")
    assert run("bash", "revoke", live["active"][:8]) == live["active"] + "\n"


def test_bash_descriptions_are_cut_to_the_terminal_and_dropped_when_none_fits(
    live: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_NHIDEL_COMP_TYPE", "63")
    monkeypatch.setenv("_NHIDEL_COLUMNS", "50")
    lines = run("bash", "revoke", "").splitlines()
    assert all(len(line) == 50 and line.endswith("...)") for line in lines), lines
    monkeypatch.setenv("_NHIDEL_COLUMNS", "30")
    assert set(run("bash", "revoke", "").splitlines()) == live_ids(live)


def test_bash_lists_descriptions_and_inserts_only_what_the_grants_share(
    live: dict[str, str], shell_env: dict[str, str], tmp_path: Path
) -> None:
    screen = bash_pty(shell_env, tmp_path, "nhidel revoke ", "expires in 30m)")
    assert f"{live['active']}  (reviewer repo:read:acme/api, expires in 30m)" in screen
    prompt = [line for line in screen.splitlines() if line.startswith("> nhidel revoke")]
    assert prompt and all("(" not in line for line in prompt), screen


def test_bash_menu_complete_inserts_a_grant_id_alone(
    live: dict[str, str], shell_env: dict[str, str], tmp_path: Path
) -> None:
    screen = bash_pty(shell_env, tmp_path, "nhidel revoke ", "nhidel revoke g",
                      "bind 'TAB: menu-complete'")  # fmt: skip
    inserted = screen.rsplit("nhidel revoke ", 1)[1]
    assert inserted.strip() in live_ids(live) and "(" not in screen, screen


@pytest.fixture
def audiences(ready: Cli) -> Cli:
    """Agents with audiences: ci (one), bot (two, one of them shared with ci)."""
    ready.ok("agent", "add", "ci", "--allow", "release:publish", "--aud", "api.example.com")
    ready.ok("agent", "add", "bot", "--allow", "repo:read:*", "--aud", "api.example.com",
             "--aud", "hooks")  # fmt: skip
    return ready


def test_aud_completes_the_audiences_agents_may_be_granted_for(audiences: Cli) -> None:
    now = int(time.time())
    everyone = [("api.example.com", "for ci, bot"), ("hooks", "for bot")]
    assert complete.candidates(["verify", "-", "--aud", ""], now=now) == everyone
    assert complete.candidates(["agent", "add", "x", "--aud", ""], now=now) == everyone
    assert complete.candidates(["grant", "--aud", ""], now=now) == everyone  # no agent yet
    assert values(["grant", "bot", "--aud", "h"]) == ["hooks"]
    assert values(["grant", "ci", "--scope", "release:publish", "--aud", ""]) == ["api.example.com"]
    assert values(["grant", "reviewer", "--aud", ""]) == []  # no audiences: any, typed
    assert values(["grant", "nobody", "--aud", ""]) == []
    assert values(["grant", "ci", "--aud=a"]) == ["--aud=api.example.com"]


def test_aud_offers_no_audience_nhidel_would_refuse(audiences: Cli, paths: Paths) -> None:
    add_to_config(paths, '\n[agents.odd]\nallow = ["a:b"]\n'
                         f'aud = ["ok", "{"x" * 257}", "has space", ""]\n')  # fmt: skip
    assert values(["grant", "odd", "--aud", ""]) == ["ok"]


def test_aud_completes_in_real_shells(
    audiences: Cli, shell_env: dict[str, str], tmp_path: Path
) -> None:
    line = "nhidel grant ci --scope release:publish --aud "
    assert zsh_line(shell_env, tmp_path, line, "Z") == line + "api.example.com Z"
    assert line + "api.example.com " in bash_pty(shell_env, tmp_path, line, "example.com ")
    assert fish_offers(shell_env, "nhidel verify --aud ") == [
        "api.example.com\tfor ci, bot",
        "hooks\tfor bot",
    ]


def test_a_wildcard_scope_completes_to_where_the_user_types_on_in_real_shells(
    ready: Cli, shell_env: dict[str, str], tmp_path: Path
) -> None:
    """`--scope rep<TAB>` gives `repo:read:acme/` and no space after it: no escaped `\\*`."""
    line = "nhidel grant reviewer --scope rep"
    screen = bash_pty(shell_env, tmp_path, line + "\t" + "api", "acme/api")
    assert "--scope repo:read:acme/api" in screen and "\\*" not in screen
    assert zsh_line(shell_env, tmp_path, line, "api") == line + "o:read:acme/api"
    assert fish_offers(shell_env, line) == [
        "repo:read:acme/\twithin repo:read:acme/*, for reviewer"
    ]
    # Nothing to add once the prefix is typed: the line stays as it is.
    screen = bash_pty(shell_env, tmp_path, "nhidel grant reviewer --scope repo:read:acme/", "/")
    assert "*" not in screen.rsplit("--scope", 1)[1]


def test_zsh_install_adds_no_completion_style_to_zshrc(tmp_path: Path) -> None:
    zshrc = tmp_path / ".zshrc"
    zshrc.write_text("setopt autocd\n")
    env = {**os.environ, "HOME": str(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    subprocess.run([sys.executable, "-m", "nhidel", "--install-completion", "zsh"],
                   capture_output=True, text=True, env=env, timeout=60, check=True)  # fmt: skip
    lines = zshrc.read_text().splitlines()
    assert "setopt autocd" in lines
    assert not any(line.lstrip().startswith("zstyle") for line in lines), lines
    assert (tmp_path / ".zfunc" / "_nhidel").read_text() == script("zsh")


def test_zsh_says_it_found_matches_so_no_further_completer_runs(
    live: dict[str, str], shell_env: dict[str, str], tmp_path: Path
) -> None:
    """With `completer _complete _next`, zsh runs _next only when _complete found nothing."""
    marker = tmp_path / "next-ran"
    driver = tmp_path / "drive.zsh"
    driver.write_text(ZSH_DRIVER)
    setup = (f"{ZSH_SETUPS['sourced']}; _next() {{ print ran > {marker} }}; "
             "zstyle ':completion:*' completer _complete _next")  # fmt: skip
    result = subprocess.run(
        [need("zsh"), "-f", str(driver), setup, live["active"], "nhidel revoke "],
        capture_output=True, text=True, env=shell_env, timeout=60, check=True,
    )  # fmt: skip
    assert live["active"] in result.stdout
    assert not marker.exists()


# -- issue 19: approval ids for approve, deny and approvals show ---------------------------


@pytest.fixture
def asked(ready: Cli, paths: Paths) -> dict[str, str]:
    """Approval requests as an enforcement point (`Desk`) and the human's answers leave them:
    two pending (`soon` lapses first), one approved, one denied, one lapsed."""
    store = open_keystore(paths, prompt=None)
    keys = AuditKeys.of(store)
    now = int(time.time())

    def ask(content: str, *, timeout: int = 600, ago: int = 0) -> str:
        arguments = {"path": "/tmp/pay", "content": content}
        call = Call("shopper", "g" + "q" * 26, "fs", "write_file", ("/tmp/pay",),
                    hashlib.sha256(content.encode()).hexdigest())  # fmt: skip
        with Ledger(paths) as ledger:
            desk = Desk(paths, keys, ledger, clock=lambda: now - ago, timeout=timeout)
            verdict = desk.consider(call, via="mcp", mark="fs:write_file:*", arguments=arguments)
        assert verdict.request is not None
        return verdict.request.id

    # Past 10 minutes a time is told in whole minutes: the descriptions hold while a test runs.
    ids = {"later": ask("pay 10", timeout=1800), "soon": ask("pay 20", timeout=1200),
           "approved": ask("pay 30"),
           "denied": ask("pay 40"), "lapsed": ask("pay 50", ago=700)}  # fmt: skip
    answer(paths, store, ids["approved"], Choice(True), now=now)
    answer(paths, store, ids["denied"], Choice(False), now=now)
    listed(paths, store, now=now)  # records the overdue one as lapsed
    return ids


SOON_DESCRIPTION = 'shopper: fs write_file: path="/tmp/pay" content="pay 20", lapses in 20m'
LATER_DESCRIPTION = 'shopper: fs write_file: path="/tmp/pay" content="pay 10", lapses in 30m'


@pytest.mark.parametrize("command", [["approve"], ["deny"], ["approvals", "show"]])
def test_approval_ids_complete_pending_ones_soonest_to_lapse_first(
    asked: dict[str, str], command: list[str]
) -> None:
    found = complete.candidates([*command, ""], now=int(time.time()))
    assert [value for value, _ in found] == [asked["soon"], asked["later"]]
    assert found[0][1] == SOON_DESCRIPTION


def test_approval_ids_complete_a_typed_prefix_in_either_case(asked: dict[str, str]) -> None:
    prefix = asked["later"][:5]
    assert asked["later"] in values(["approve", prefix])
    assert asked["later"] in values(["deny", prefix.upper()])
    assert all(value.startswith(prefix) for value in values(["approve", prefix]))
    assert values(["approve", asked["soon"], ""]) == []  # one id a command


def test_hostile_approval_rows_cannot_reach_the_terminal_or_a_command_line(
    ready: Cli, paths: Paths
) -> None:
    Ledger(paths).close()  # the schema
    now = int(time.time())
    db = sqlite3.connect(paths.ledger_file)
    with db:
        for approval_id, summary in (("a" + "b" * 16, "x\x1b]0;pwned\x07\tshown:\nlast\u202e\r"),
                                     ("a$(touch${IFS}/tmp/PWNED4)", "hostile id"),
                                     ("A" + "B" * 16, "upper case")):  # fmt: skip
            db.execute(
                "INSERT INTO approvals (id, kind, agent, summary, created_at, lapses_at, status,"
                " body, seal) VALUES (?, 'call', 'bot', ?, ?, ?, 'pending', '{}', 'x')",
                (approval_id, summary, now, now + 60),
            )
    db.close()
    for shell in ("bash", "zsh", "fish"):
        out = run(shell, "approve", "")
        assert out.count("\n") == 1 and out.startswith("a" + "b" * 16)
        assert not any(ch in out.rstrip("\n") for ch in "\x1b\x07\r\n\u202e")
    assert run("fish", "deny", "").count("\t") == 1  # the one between value and description


def test_approval_completion_imports_nothing_the_ledger_read_does_not(
    asked: dict[str, str],
) -> None:
    env = completion_env("bash", _NHIDEL_COMP_TYPE="9")
    floor = loaded_after(LEDGER, env)[1]
    offered, modules = loaded_after("from nhidel.cli import main\nmain(['approve', ''])", env)
    assert any(line.startswith(asked["soon"]) for line in offered)
    assert not modules - floor - COMPLETION_MODULES


def test_approval_ids_are_what_the_desk_makes() -> None:
    assert complete.is_approval_id is names.is_approval_id
    assert names.is_approval_id(new_approval_id())


def test_bash_completes_pending_approval_ids(
    asked: dict[str, str], shell_env: dict[str, str]
) -> None:
    driver = (
        f"source {COMPLETIONS / 'nhidel.bash'}\n"
        'COMP_WORDS=(nhidel approve ""); COMP_CWORD=2; COMP_TYPE=9; COLUMNS=120\n'
        "_nhidel_completion nhidel\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run([need("bash"), "--norc", "--noprofile", "-c", driver],
                            capture_output=True, text=True, env=shell_env, timeout=60,
                            check=True)  # fmt: skip
    assert result.stdout.splitlines() == [
        f"{asked['soon']}  ({SOON_DESCRIPTION})",
        f"{asked['later']}  ({LATER_DESCRIPTION})",
    ]


def test_fish_completes_pending_approval_ids_with_descriptions(
    asked: dict[str, str], shell_env: dict[str, str]
) -> None:
    offered = fish_offers(shell_env, "nhidel approvals show ")
    assert offered[0] == f"{asked['soon']}\t{SOON_DESCRIPTION}"
    assert [line.split("\t")[0] for line in offered] == [asked["soon"], asked["later"]]


def test_zsh_lists_pending_approval_ids_with_descriptions(
    asked: dict[str, str], shell_env: dict[str, str], tmp_path: Path
) -> None:
    driver = tmp_path / "drive.zsh"
    driver.write_text(ZSH_DRIVER)
    # zsh cuts a description to the (80-column) terminal: its start is what shows. The later
    # request is listed last: once it shows, the listing is whole.
    soon = f"{asked['soon']}  -- {SOON_DESCRIPTION[:40]}"
    later = f"{asked['later']}  -- {LATER_DESCRIPTION[:40]}"
    result = subprocess.run(
        [need("zsh"), "-f", str(driver), ZSH_SETUPS["sourced"], later, "nhidel deny "],
        capture_output=True, text=True, env=shell_env, timeout=60, check=True,
    )  # fmt: skip
    screen = result.stdout.replace("\r", "")
    assert soon in screen and later in screen
    assert screen.index(soon) < screen.index(later)
    for answered in ("approved", "denied", "lapsed"):
        assert asked[answered] not in screen


def test_zsh_shows_a_backslash_in_a_description_as_it_is() -> None:
    # _describe reads `\u202e` as an escaped `u`: the summary's own escapes would vanish.
    line = complete._format("zsh", "a" + "b" * 16, 'text="\\u202e"', "", "", "")
    assert line == "a" + "b" * 16 + ':text="\\\\u202e"'
