"""The command line's contract: one test per exit code in SPEC.md, and what each prints."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers.support import Cli, MemoryKeyring


def grant(cli: Cli, *args: str) -> str:
    return cli.ok("grant", "reviewer", *args).stdout.strip()


def assert_one_error(stderr: str) -> None:
    """One `error:` line (and an optional `hint:`), never a traceback."""
    lines = stderr.strip().splitlines()
    assert lines[0].startswith("error: "), stderr
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), stderr
    assert len(lines) <= 2, stderr
    assert "Traceback" not in stderr


def ledger_rows(home: Path) -> int:
    if not (home / "ledger.db").exists():
        return 0
    with sqlite3.connect(home / "ledger.db") as db:
        return int(db.execute("SELECT count(*) FROM grants").fetchone()[0])


def audit_lines(home: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (home / "audit.jsonl").read_text().splitlines()]


# -- exit 0 -------------------------------------------------------------------------------


def test_grant_prints_the_token_alone_on_stdout_and_a_summary_on_stderr(ready: Cli) -> None:
    result = ready.ok("grant", "reviewer", "--scope", "repo:read:acme/api", "--ttl", "15m")
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.count(".") == 2
    summary = result.stderr.strip()
    assert summary.startswith("granted g") and "reviewer" in summary
    assert "repo:read:acme/api" in summary and "expires in 15m (" in summary


def test_grant_format_json_adds_the_token_to_the_grant_shape(ready: Cli) -> None:
    result = ready.ok("grant", "reviewer", "--scope", "repo:read:acme/api", "--format", "json")
    data = json.loads(result.stdout)
    for key in (
        "id",
        "agent",
        "scopes",
        "aud",
        "status",
        "issued_at",
        "not_before",
        "expires_at",
        "uses",
        "max_uses",
        "reason",
        "token",
    ):
        assert key in data
    assert data["scopes"] == ["repo:read:acme/api"] and data["status"] == "active"


def test_grant_format_env_prints_an_assignment(ready: Cli) -> None:
    result = ready.ok("grant", "reviewer", "--scope", "repo:read:acme/api", "--format", "env")
    assert result.stdout.startswith("NHIDEL_TOKEN=ey") and result.stdout.count("\n") == 1


def test_verify_reads_the_token_from_stdin_argument_and_environment(ready: Cli) -> None:
    token = grant(ready, "--scope", "repo:read:acme/api")
    assert ready("verify", "-", "--scope", "repo:read:acme/api", input=token).exit_code == 0
    assert ready("verify", token, "--scope", "repo:read:acme/api").exit_code == 0
    result = ready("verify", "--scope", "repo:read:acme/api", env={"NHIDEL_TOKEN": token})
    assert result.exit_code == 0, result.stderr


def test_verify_json_has_the_spec_shape(ready: Cli) -> None:
    token = grant(ready, "--scope", "repo:read:acme/api")
    result = ready("verify", "-", "--any-scope", "--json", input=token)
    data = json.loads(result.stdout)
    assert result.exit_code == 0
    assert data["allowed"] is True and data["reason"] is None
    assert data["grant"]["scopes"] == ["repo:read:acme/api"]


def test_list_shows_active_grants_and_all_adds_revoked(ready: Cli) -> None:
    kept = json.loads(
        ready.ok("grant", "reviewer", "--scope", "repo:read:acme/a", "--format", "json").stdout
    )["id"]
    gone = json.loads(
        ready.ok("grant", "reviewer", "--scope", "repo:read:acme/b", "--format", "json").stdout
    )["id"]
    ready.ok("revoke", gone)
    active = json.loads(ready.ok("list", "--json").stdout)
    everything = json.loads(ready.ok("list", "--all", "--json").stdout)
    assert [g["id"] for g in active] == [kept]
    assert {g["id"]: g["status"] for g in everything} == {kept: "active", gone: "revoked"}
    table = ready.ok("list").stdout
    assert kept[:10] in table and gone[:10] not in table


def test_list_filters_by_agent(ready: Cli) -> None:
    ready.ok("agent", "add", "ci", "--allow", "release:publish")
    ready.ok("grant", "ci", "--scope", "release:publish")
    grant(ready, "--scope", "repo:read:acme/api")
    listed = json.loads(ready.ok("list", "--agent", "ci", "--json").stdout)
    assert [g["agent"] for g in listed] == ["ci"]


def test_show_resolves_a_case_insensitive_prefix(ready: Cli) -> None:
    grant_id = json.loads(
        ready.ok("grant", "reviewer", "--scope", "repo:read:acme/a", "--format", "json").stdout
    )["id"]
    shown = json.loads(ready.ok("show", grant_id[:6].upper(), "--json").stdout)
    assert shown["id"] == grant_id


def test_revoking_twice_is_not_an_error(ready: Cli) -> None:
    grant_id = json.loads(
        ready.ok("grant", "reviewer", "--scope", "repo:read:acme/a", "--format", "json").stdout
    )["id"]
    ready.ok("revoke", grant_id)
    again = ready.ok("revoke", grant_id)
    assert "already revoked" in again.stderr


def test_agent_remove_revokes_its_grants_and_says_how_many(ready: Cli) -> None:
    grant(ready, "--scope", "repo:read:acme/a")
    grant(ready, "--scope", "repo:read:acme/b")
    result = ready.ok("agent", "remove", "reviewer", "--yes")
    assert "revoked 2 grants" in result.stderr
    assert json.loads(ready.ok("list", "--json").stdout) == []
    assert ready("agent", "show", "reviewer").exit_code == 3


def test_version_and_help(cli: Cli) -> None:
    assert cli.ok("--version").stdout.startswith("nhidel ")
    assert "grant" in cli.ok("--help").stdout


# -- exit 1: denied -----------------------------------------------------------------------


def test_verify_denies_an_ungranted_scope_with_its_reason(ready: Cli) -> None:
    token = grant(ready, "--scope", "repo:read:acme/api")
    result = ready("verify", "-", "--scope", "repo:write:acme/api", "--json", input=token)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["reason"] == "scope_not_granted"


def test_verify_denies_a_revoked_grant(ready: Cli) -> None:
    result = ready.ok("grant", "reviewer", "--scope", "repo:read:acme/api", "--format", "json")
    data = json.loads(result.stdout)
    ready.ok("revoke", data["id"][:8])
    denied = ready("verify", "-", "--scope", "repo:read:acme/api", input=data["token"])
    assert denied.exit_code == 1 and "revoked" in denied.stderr


def test_verify_requires_the_audience_a_grant_names(ready: Cli) -> None:
    token = grant(ready, "--scope", "repo:read:acme/api", "--aud", "api.acme.test")
    no_aud = ready("verify", "-", "--scope", "repo:read:acme/api", "--json", input=token)
    assert no_aud.exit_code == 1 and json.loads(no_aud.stdout)["reason"] == "wrong_audience"
    ok = ready(
        "verify", "-", "--scope", "repo:read:acme/api", "--aud", "api.acme.test", input=token
    )
    assert ok.exit_code == 0


def test_consume_counts_one_use_and_plain_verify_spends_none(ready: Cli) -> None:
    token = grant(ready, "--scope", "repo:read:acme/api", "--uses", "1")
    for _ in range(3):
        assert ready("verify", "-", "--any-scope", input=token).exit_code == 0
    assert ready("verify", "-", "--any-scope", "--consume", input=token).exit_code == 0
    spent = ready("verify", "-", "--any-scope", "--json", input=token)
    assert spent.exit_code == 1 and json.loads(spent.stdout)["reason"] == "uses_exhausted"


def test_verify_denies_garbage_as_malformed(ready: Cli) -> None:
    result = ready("verify", "-", "--any-scope", "--json", input="not.a.token")
    assert result.exit_code == 1 and json.loads(result.stdout)["reason"] == "malformed"


# -- exit 2: usage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("grant", "reviewer", "--scope", "Repo:Read"),
        ("grant", "reviewer", "--scope", "repo:read:a b"),
        ("grant", "reviewer", "--scope", "repo:read:acme/x", "--ttl", "-5m"),
        ("grant", "reviewer", "--scope", "repo:read:acme/x", "--ttl", "forever"),
        ("grant", "reviewer", "--scope", "repo:read:acme/x", "--ttl", "400d"),
        ("grant", "reviewer", "--scope", "repo:read:acme/x", "--not-before", "+31d"),
        ("grant", "reviewer", "--scope", "repo:read:acme/x", "--uses", "0"),
        ("grant", "reviewer", "--scope", "repo:read:acme/x", "--format", "xml"),
        ("grant", "reviewer"),
        ("agent", "add", "Bad Name", "--allow", "a:b"),
        ("agent", "add", "x", "--allow", "a:b", "--max-ttl", "10m", "--default-ttl", "1h"),
        ("list", "--bogus"),
        ("show", "gab"),
    ],
)
def test_bad_values_are_usage_errors_and_record_nothing(
    ready: Cli, nhidel_home: Path, args: tuple[str, ...]
) -> None:
    before = audit_lines(nhidel_home)
    result = ready(*args)
    assert result.exit_code == 2, (args, result.stderr)
    assert_one_error(result.stderr)
    assert result.stdout == ""
    assert ledger_rows(nhidel_home) == 0
    assert audit_lines(nhidel_home) == before


def test_verify_without_scope_or_any_scope_is_a_usage_error(ready: Cli) -> None:
    token = grant(ready, "--scope", "repo:read:acme/api")
    result = ready("verify", "-", input=token)
    assert result.exit_code == 2 and "--any-scope" in result.stderr


def test_revoke_all_refuses_without_yes_when_not_on_a_terminal(ready: Cli) -> None:
    token = grant(ready, "--scope", "repo:read:acme/api")
    result = ready("revoke", "--all")
    assert result.exit_code == 2 and "--yes" in result.stderr
    assert ready("verify", token, "--any-scope").exit_code == 0
    ready.ok("revoke", "--all", "--yes")
    assert ready("verify", token, "--any-scope").exit_code == 1


# -- exit 3: not found --------------------------------------------------------------------


def test_grant_for_an_unknown_agent_names_the_command_to_add_it(ready: Cli) -> None:
    result = ready("grant", "nobody", "--scope", "repo:read:acme/api")
    assert result.exit_code == 3
    assert_one_error(result.stderr)
    assert "nhidel agent add nobody" in result.stderr


def test_one_unknown_id_revokes_nothing(ready: Cli) -> None:
    data = json.loads(
        ready.ok("grant", "reviewer", "--scope", "repo:read:acme/a", "--format", "json").stdout
    )
    result = ready("revoke", data["id"], "gzzzzzzz")
    assert result.exit_code == 3
    assert ready("verify", data["token"], "--any-scope").exit_code == 0


def test_an_ambiguous_prefix_lists_the_candidates(ready: Cli, nhidel_home: Path) -> None:
    ids = [
        json.loads(
            ready.ok("grant", "reviewer", "--scope", "repo:read:acme/a", "--format", "json").stdout
        )["id"]
        for _ in range(2)
    ]
    # Two random ids share only "g"; rewrite one so they share a longer prefix.
    with sqlite3.connect(nhidel_home / "ledger.db") as db:
        db.execute("UPDATE grants SET id = ? WHERE id = ?", ("gaaaa" + ids[1][5:], ids[1]))
        db.execute("UPDATE grants SET id = ? WHERE id = ?", ("gaaab" + ids[0][5:], ids[0]))
    result = ready("revoke", "gaaa")
    assert result.exit_code == 3 and "ambiguous" in result.stderr
    assert "gaaaa" in result.stderr and "gaaab" in result.stderr


def test_unknown_agent_for_show_remove_and_revoke(ready: Cli) -> None:
    for args in (
        ("agent", "show", "ghost"),
        ("agent", "remove", "ghost"),
        ("revoke", "--agent", "ghost"),
    ):
        result = ready(*args)
        assert result.exit_code == 3, args
        assert_one_error(result.stderr)


# -- exit 4: keystore ---------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("agent", "add", "reviewer", "--allow", "repo:read:acme/*"),
    ("grant", "reviewer", "--scope", "repo:read:acme/api"),
    ("revoke", "--all", "--yes"),
    ("audit", "verify"),
])  # fmt: skip
def test_commands_before_init_say_to_run_init(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.exit_code == 4, result.stderr
    assert_one_error(result.stderr)
    assert "nhidel init" in result.stderr


def test_verify_with_an_empty_keystore_is_exit_4(ready: Cli, memory_keyring: MemoryKeyring) -> None:
    token = grant(ready, "--scope", "repo:read:acme/api")
    memory_keyring.entries.clear()
    result = ready("verify", token, "--any-scope")
    assert result.exit_code == 4 and "nhidel init" in result.stderr


def test_no_usable_os_keyring_points_to_the_file_keystore(cli: Cli) -> None:
    import keyring
    from keyring.backends import fail

    keyring.set_keyring(fail.Keyring())
    result = cli("init")
    assert result.exit_code == 4
    assert_one_error(result.stderr)
    assert "NHIDEL_KEYSTORE=file" in result.stderr


def test_unknown_keystore_kind_is_a_usage_error(cli: Cli) -> None:
    result = cli("init", env={"NHIDEL_KEYSTORE": "plaintext"})
    assert result.exit_code == 2 and "NHIDEL_KEYSTORE" in result.stderr


# -- exit 5: integrity --------------------------------------------------------------------


def test_a_corrupt_ledger_is_an_integrity_failure(ready: Cli, nhidel_home: Path) -> None:
    grant(ready, "--scope", "repo:read:acme/api")
    for suffix in ("", "-wal", "-shm"):
        path = nhidel_home / f"ledger.db{suffix}"
        if path.exists():
            path.write_bytes(b"this is not a database" * 200)
    result = ready("list")
    assert result.exit_code == 5
    assert_one_error(result.stderr)


def test_a_corrupt_config_is_an_integrity_failure(ready: Cli, nhidel_home: Path) -> None:
    (nhidel_home / "config.toml").write_text("[agents.reviewer\nallow = ")
    result = ready("agent", "list")
    assert result.exit_code == 5
    assert_one_error(result.stderr)


# -- exit 6: policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--scope", "repo:write:acme/api"),
        ("--scope", "repo:read:other/api"),
        ("--scope", "repo:*:acme/api"),
        ("--scope", "repo:read:acme/api", "--ttl", "2h"),
    ],
)
def test_grants_beyond_the_ceiling_are_refused_and_record_nothing(
    ready: Cli, nhidel_home: Path, args: tuple[str, ...]
) -> None:
    before = audit_lines(nhidel_home)
    result = ready("grant", "reviewer", *args)
    assert result.exit_code == 6, result.stderr
    assert_one_error(result.stderr)
    assert result.stdout == ""
    assert ledger_rows(nhidel_home) == 0
    assert audit_lines(nhidel_home) == before


def test_init_refuses_to_overwrite_a_key(ready: Cli, memory_keyring: MemoryKeyring) -> None:
    before = dict(memory_keyring.entries)
    result = ready("init", "--principal", "mallory")
    assert result.exit_code == 6 and "already exists" in result.stderr
    assert memory_keyring.entries == before


def test_audience_outside_the_agents_audiences_is_refused(cli: Cli) -> None:
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "bot", "--allow", "a:b", "--aud", "one.test", "--aud", "two.test")
    assert cli("grant", "bot", "--scope", "a:b", "--aud", "three.test").exit_code == 6
    assert cli("grant", "bot", "--scope", "a:b").exit_code == 6
    assert cli("grant", "bot", "--scope", "a:b", "--aud", "two.test").exit_code == 0


# -- text from users is escaped -----------------------------------------------------------


def test_reasons_cannot_inject_terminal_control_or_markup(ready: Cli) -> None:
    hostile = "ok\x1b[2J\x1b]0;pwned\x07 [bold red]x[/bold red] \u202egnp.exe\nforged line"
    data = json.loads(
        ready.ok(
            "grant",
            "reviewer",
            "--scope",
            "repo:read:acme/a",
            "--reason",
            hostile,
            "--format",
            "json",
        ).stdout
    )
    shown = ready.ok("show", data["id"]).stdout
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "forged line" in shown and "\nforged line" not in shown
    assert "[bold red]x[/bold red]" in shown  # shown literally, not interpreted
    revoked = ready.ok("revoke", data["id"], "--reason", hostile)
    assert "\x1b" not in revoked.stderr
