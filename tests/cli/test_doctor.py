"""`nhidel doctor`: every check named, each problem with its fix and its exit status, and the
home left exactly as it was (doctor only reads)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path
from typing import Any

import keyring
import keyring.errors
import pytest
from helpers.crashed_change import crash_after_writing
from helpers.processes import claims_of, isolated_env, run
from helpers.support import Cli, MemoryKeyring
from keyring.backends import fail

from nhidel.actions import doctor
from nhidel.audit import event
from nhidel.cli import common
from nhidel.fsutil import exclusive_lock
from nhidel.keys import keystore
from nhidel.paths import Paths

CHECKS = ["home", "keystore", "key", "files", "audit", "ledger", "config", "registrations",
          "residue", "status-list", "daemon"]  # fmt: skip
SCOPE = "repo:read:acme/api"


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under `root` (itself included): its mode and, for a file, its bytes."""
    if not os.path.lexists(root):
        return {}
    found: dict[str, tuple[int, bytes | None]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path.relative_to(root))] = (info.st_mode, data)
    return found


def checks(cli: Cli) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """`doctor --json`: its exit status and its checks by name (a name may come more than once)."""
    result = cli("doctor", "--json")
    assert result.stderr == "", result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is (result.exit_code == 0)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for check in report["checks"]:
        by_name.setdefault(check["name"], []).append(check)
    return result.exit_code, by_name


def failing(found: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [check for named in found.values() for check in named if check["ok"] is False]


def issue(cli: Cli, *extra: str) -> str:
    token = cli.ok("grant", "reviewer", "--scope", SCOPE, *extra).stdout.strip()
    return str(claims_of(token)["jti"])


# -- healthy ------------------------------------------------------------------------------


def test_a_healthy_home_passes_every_check_and_exits_0(
    ready: Cli, paths: Paths, memory_keyring: MemoryKeyring
) -> None:
    issue(ready)
    issue(ready, "--not-before", "+10m")
    result = ready("doctor")
    assert result.exit_code == 0, result.stdout
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["ok", name] for name in CHECKS]
    assert lines[-1] == "no problems found"
    text = result.stdout
    assert f"entries under {paths.keyring_service}" in text  # which keystore, and where
    trust = json.loads(memory_keyring.entries[(paths.keyring_service, "trust")])
    assert f"active key {next(iter(trust['keys']))}" in text
    assert "2 live grant(s), 1 of them pending" in text
    assert "1 agent(s): reviewer" in text
    mark = json.loads(memory_keyring.entries[(paths.keyring_service, "audit-mark")])
    assert f"head seq {mark['seq']} {mark['hash']}" in text  # the audit head, at the mark
    assert "nhidel audit verify" in text  # what the quick check leaves to the full one


@pytest.fixture
def file_home(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home initialised with the file keystore; returns the passphrase file."""
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("doctor passphrase\n")
    monkeypatch.setenv("NHIDEL_KEYSTORE", "file")
    monkeypatch.setenv("NHIDEL_PASSPHRASE_FILE", str(passphrase))
    monkeypatch.setitem(keystore._SCRYPT, "n", 2**14)
    monkeypatch.setattr(keystore, "_passphrase_taken", None)
    cli.ok("init", "--principal", "alice")
    return passphrase


def test_a_healthy_file_keystore_home_names_its_file(
    file_home: Path, cli: Cli, paths: Paths
) -> None:
    status, found = checks(cli)
    assert status == 0, failing(found)
    assert list(found) == CHECKS
    assert found["keystore"][0]["detail"] == f"the encrypted keystore {paths.keystore_file}: opens"


def test_a_wrong_passphrase_is_exit_4_and_an_edited_keystore_file_exit_5(
    file_home: Path, cli: Cli, paths: Paths
) -> None:
    file_home.write_text("not the passphrase\n")
    status, found = checks(cli)
    assert status == 4
    assert found["keystore"][0]["detail"].startswith(f"wrong passphrase for {paths.keystore_file}")
    file_home.write_text("doctor passphrase\n")
    document = json.loads(paths.keystore_file.read_text())
    sealed = document["sealed"]["ciphertext"]
    document["sealed"]["ciphertext"] = ("A" if sealed[0] != "A" else "B") + sealed[1:]
    paths.keystore_file.write_text(json.dumps(document))
    status, found = checks(cli)
    assert status == 5
    assert found["keystore"][0]["detail"] == (
        f"{paths.keystore_file}: its entries were altered, removed or spliced from another copy"
    )


def test_a_retired_key_is_shown_with_when_its_grants_expire(ready: Cli) -> None:
    issue(ready)
    ready.ok("key", "rotate")
    status, found = checks(ready)
    assert status == 0, failing(found)
    assert "retired, verifies its grants until they expire, in 1" in found["key"][0]["detail"]


def test_doctor_changes_nothing_in_the_home_or_the_keyring(
    ready: Cli, paths: Paths, memory_keyring: MemoryKeyring
) -> None:
    issue(ready)
    before, entries = snapshot(paths.state_dir), dict(memory_keyring.entries)
    ready.ok("doctor")
    ready.ok("doctor", "--json")
    assert snapshot(paths.state_dir) == before
    assert memory_keyring.entries == entries


def test_doctor_writes_nothing_even_when_it_finds_problems(ready: Cli, paths: Paths) -> None:
    issue(ready)
    crash_after_writing(paths, event("grant.revoked", grant="g" + "a" * 26, reason="crashed"))
    paths.config_file.chmod(0o644)
    before = snapshot(paths.state_dir)
    assert ready("doctor").exit_code == 1
    assert snapshot(paths.state_dir) == before


def test_doctor_waits_for_a_writer_only_so_long(
    ready: Cli, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor, "LOCK_WAIT", 0.05)
    with exclusive_lock(paths.audit_lock):  # a writer that takes its time
        result = ready("doctor")
    assert result.exit_code == 0, result.stdout


def test_a_wal_without_its_shm_is_left_unread_rather_than_a_file_created(
    ready: Cli, paths: Paths
) -> None:
    issue(ready)
    wal = Path(f"{paths.ledger_file}-wal")
    wal.write_bytes(b"")
    wal.chmod(0o600)
    before = snapshot(paths.state_dir)
    status, found = checks(ready)
    assert status == 0, failing(found)
    assert found["ledger"][0]["ok"] is None
    assert snapshot(paths.state_dir) == before


# -- no home ------------------------------------------------------------------------------


def test_on_a_fresh_machine_doctor_says_to_run_init_and_creates_nothing(
    cli: Cli, nhidel_home: Path, memory_keyring: MemoryKeyring
) -> None:
    result = cli("doctor")
    assert result.exit_code == 4
    assert result.stdout.splitlines()[0] == (
        f"problem  home         no nhidel home at {nhidel_home}: nothing set up yet; "
        "fix: nhidel init"
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert not os.path.lexists(nhidel_home)
    assert memory_keyring.entries == {}


def test_on_a_fresh_machine_without_a_keyring_doctor_also_says_how_to_get_one(
    cli: Cli, nhidel_home: Path
) -> None:
    keyring.set_keyring(fail.Keyring())
    status, found = checks(cli)
    assert status == 4
    assert found["home"][0]["fix"] == "nhidel init"
    assert "NHIDEL_KEYSTORE=file" in found["keystore"][0]["fix"]
    assert not os.path.lexists(nhidel_home)


def test_with_real_processes_and_no_home_nothing_is_created(tmp_path: Path) -> None:
    env = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE="unused")
    before = snapshot(tmp_path)
    result = run(env, "doctor")
    assert result.code == 4, str(result)
    assert "fix: nhidel init" in result.stdout
    assert snapshot(tmp_path) == before


# -- the keystore -------------------------------------------------------------------------


class LockedKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("locked")


def test_a_locked_keyring_is_exit_4_with_how_to_unlock_it(ready: Cli) -> None:
    keyring.set_keyring(LockedKeyring())
    status, found = checks(ready)
    assert status == 4
    (keystore_check,) = found["keystore"]
    assert keystore_check["ok"] is False
    assert "the OS keyring is locked" in keystore_check["detail"]
    assert "unlock it" in keystore_check["fix"]
    # What needs the keystore is said to be unchecked, not failed.
    for name in ("key", "audit", "ledger", "residue"):
        assert found[name][0]["ok"] is None, name
    assert found["files"][0]["ok"] is True


def test_an_empty_keystore_says_to_run_init(ready: Cli, memory_keyring: MemoryKeyring) -> None:
    memory_keyring.entries.clear()
    status, found = checks(ready)
    assert status == 4
    assert found["key"][0]["fix"] == "nhidel init"


def test_a_file_keystore_without_a_passphrase_reports_it_instead_of_prompting(
    tmp_path: Path,
) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("doctor passphrase\n")
    env = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE_FILE=str(passphrase))
    assert run(env, "init", "--principal", "alice").code == 0
    del env["NHIDEL_PASSPHRASE_FILE"]
    result = run(env, "doctor", timeout=30)  # no terminal: it must not wait for one
    assert result.code == 4, str(result)
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("problem")]
    assert "keystore" in line and "needs a passphrase" in line
    assert "fix: set NHIDEL_PASSPHRASE_FILE" in line


# -- files and permissions ----------------------------------------------------------------


def test_a_file_others_may_read_is_reported_with_the_chmod_to_run(ready: Cli, paths: Paths) -> None:
    paths.config_file.chmod(0o644)
    status, found = checks(ready)
    assert status == 1
    (problem,) = failing(found)
    assert problem["name"] == "files"
    assert problem["detail"] == f"{paths.config_file} is readable by group or others (mode 644)"
    assert problem["fix"] == f"chmod 600 {paths.config_file}"
    human = ready("doctor").stdout
    assert f"fix: chmod 600 {paths.config_file}" in human
    assert human.splitlines()[-1] == "1 problem found"


def test_a_directory_others_may_read_is_reported_with_the_chmod_to_run(
    ready: Cli, paths: Paths
) -> None:
    paths.state_dir.chmod(0o755)
    status, found = checks(ready)
    assert status == 1
    (problem,) = failing(found)
    assert problem["fix"] == f"chmod 700 {paths.state_dir}"


def test_a_file_others_may_write_or_a_planted_link_is_an_integrity_problem(
    ready: Cli, paths: Paths, tmp_path: Path
) -> None:
    paths.ledger_file.chmod(0o666)
    paths.audit_lock.unlink()
    paths.audit_lock.symlink_to(tmp_path / "elsewhere")
    status, found = checks(ready)
    assert status == 5
    details = {p["detail"]: p["fix"] for p in failing(found)}
    assert details[f"{paths.ledger_file} is writable by group or others"] == (
        f"chmod 600 {paths.ledger_file}"
    )
    assert f"{paths.audit_lock} is a symbolic link" in details


# -- a crash's residue --------------------------------------------------------------------


def test_an_interrupted_change_is_reported_with_nhidel_repair_and_repair_clears_it(
    ready: Cli, paths: Paths
) -> None:
    grant_id = issue(ready)
    crash_after_writing(paths, event("grant.revoked", grant=grant_id, reason="crashed"))
    status, found = checks(ready)
    assert status == 1
    (problem,) = failing(found)
    assert problem["name"] == "residue" and problem["fix"] == "nhidel repair"
    assert "grant.revoked" in problem["detail"]
    assert found["audit"][0]["ok"] is True  # a crash is not tampering
    ready.ok("repair")
    assert checks(ready)[0] == 0


# -- tampering ----------------------------------------------------------------------------


def test_an_edited_audit_record_is_an_integrity_problem_naming_the_log(
    ready: Cli, paths: Paths
) -> None:
    issue(ready)
    lines = paths.audit_file.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"reviewer"', b'"reviewe2"')
    paths.audit_file.write_bytes(b"".join(lines))
    status, found = checks(ready)
    assert status == 5
    (problem,) = failing(found)
    assert problem["name"] == "audit"
    assert f"{paths.audit_file} (seq 2): edited or forged" in problem["detail"]
    assert "nhidel audit verify" in problem["fix"]


def test_a_truncated_audit_log_is_an_integrity_problem(ready: Cli, paths: Paths) -> None:
    issue(ready)
    lines = paths.audit_file.read_bytes().splitlines(keepends=True)
    paths.audit_file.write_bytes(b"".join(lines[:-1]))
    status, found = checks(ready)
    assert status == 5
    assert "truncated" in found["audit"][0]["detail"]


def test_an_edited_config_is_an_integrity_problem_naming_config_toml(
    ready: Cli, paths: Paths
) -> None:
    text = paths.config_file.read_text()
    paths.config_file.write_text(text.replace('max_ttl = "1h"', 'max_ttl = "1d"'))
    status, found = checks(ready)
    assert status == 5
    (problem,) = failing(found)
    assert problem["name"] == "config"
    assert problem["detail"].startswith(f"{paths.config_file} differs from its sealed version")


def test_a_config_that_is_not_toml_is_an_integrity_problem_not_a_traceback(
    ready: Cli, paths: Paths
) -> None:
    paths.config_file.write_text("agents = [unclosed\n")
    result = ready("doctor")
    assert result.exit_code == 5
    assert f"problem  config       {paths.config_file} is corrupt" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_the_exit_status_is_the_highest_the_problems_call_for(ready: Cli, paths: Paths) -> None:
    issue(ready)
    paths.config_file.chmod(0o644)  # 1: to fix, though no command refuses it
    lines = paths.audit_file.read_bytes().splitlines(keepends=True)
    paths.audit_file.write_bytes(b"".join(lines[:-1]))  # 5: truncated
    status, found = checks(ready)
    assert status == 5
    assert sorted(p["name"] for p in failing(found)) == ["audit", "files"]


def test_an_unknown_keystore_kind_is_the_usage_error_it_is_everywhere(ready: Cli) -> None:
    result = ready("doctor", env={"NHIDEL_KEYSTORE": "plaintext"})
    assert result.exit_code == 2
    assert "unknown keystore 'plaintext' in NHIDEL_KEYSTORE" in result.stdout


def test_a_grant_un_revoked_in_the_ledger_is_an_integrity_problem_naming_the_ledger(
    ready: Cli, paths: Paths
) -> None:
    grant_id = issue(ready)
    ready.ok("revoke", grant_id)
    with sqlite3.connect(paths.ledger_file) as db:
        db.execute("UPDATE grants SET revoked_at = NULL, revoke_reason = NULL")
    db.close()
    status, found = checks(ready)
    assert status == 5
    (problem,) = failing(found)
    assert problem["name"] == "ledger"
    assert f"{paths.ledger_file}: the row of grant {grant_id} was edited" in problem["detail"]


def test_a_ledger_that_is_not_a_database_is_an_integrity_problem(ready: Cli, paths: Paths) -> None:
    issue(ready)
    paths.ledger_file.write_bytes(b"not a database" * 300)
    status, found = checks(ready)
    assert status == 5
    (problem,) = failing(found)
    assert problem["name"] == "ledger" and str(paths.ledger_file) in problem["detail"]


def test_a_ledger_put_back_from_an_older_copy_is_an_integrity_problem(
    ready: Cli, paths: Paths, tmp_path: Path
) -> None:
    grant_id = issue(ready)
    saved = tmp_path / "ledger.db"
    shutil.copyfile(paths.ledger_file, saved)
    ready.ok("revoke", grant_id)
    shutil.copyfile(saved, paths.ledger_file)
    status, found = checks(ready)
    assert status == 5
    assert "rolled back" in failing(found)[0]["detail"]
    assert "nhidel repair" in failing(found)[0]["fix"]


# -- the status list ----------------------------------------------------------------------


@pytest.fixture
def publishing(ready: Cli, tmp_path: Path) -> Path:
    """status-uri and status-dir set, and the list published there."""
    site = tmp_path / "site"
    ready.ok("config", "set", "status-uri", "https://example.com/nhidel/status.jwt")
    ready.ok("config", "set", "status-dir", str(site))
    ready.ok("publish", "--out", str(site))
    return site


def test_a_current_published_list_passes(publishing: Path, ready: Cli) -> None:
    status, found = checks(ready)
    assert status == 0, failing(found)
    assert "the published list and keys are current" in found["status-list"][0]["detail"]


def test_a_published_list_that_misses_a_revocation_is_stale(
    publishing: Path, ready: Cli, tmp_path: Path
) -> None:
    grant_id = issue(ready)
    ready.ok("publish", "--out", str(publishing))
    before = (publishing / "status.jwt").read_bytes()
    ready.ok("revoke", grant_id)  # republishes into status-dir by itself
    (publishing / "status.jwt").write_bytes(before)
    status, found = checks(ready)
    assert status == 1
    (problem,) = failing(found)
    assert problem["name"] == "status-list"
    assert "does not show 1 revocation(s)" in problem["detail"]
    assert problem["fix"] == f"nhidel publish --out {publishing}"


def test_an_expired_published_list_is_stale(
    publishing: Path, ready: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    later = common.now() + 2 * 3600
    monkeypatch.setattr(common, "now", lambda: later)
    status, found = checks(ready)
    assert status == 1
    assert "status.jwt expired 1h ago" in failing(found)[0]["detail"]


def test_a_status_dir_without_a_status_uri_publishes_nothing(ready: Cli, tmp_path: Path) -> None:
    ready.ok("config", "set", "status-dir", str(tmp_path / "site"))
    status, found = checks(ready)
    assert status == 1
    assert failing(found)[0]["fix"].startswith("nhidel config set status-uri")


# -- the JSON shape -----------------------------------------------------------------------


def test_json_is_a_list_of_checks_each_with_name_ok_detail_and_fix(ready: Cli) -> None:
    report = json.loads(ready.ok("doctor", "--json").stdout)
    assert set(report) == {"ok", "checks"} and report["ok"] is True
    assert [check["name"] for check in report["checks"]] == CHECKS
    for check in report["checks"]:
        assert set(check) == {"name", "ok", "detail", "fix"}
        assert check["ok"] is True and check["fix"] is None
        assert isinstance(check["detail"], str) and check["detail"]


def test_doctor_finds_a_registered_secret_whose_value_the_keystore_lost(
    ready: Cli, memory_keyring: MemoryKeyring
) -> None:
    ready.ok("secret", "add", "gh", input="a-long-enough-secret\n")
    ready.ok("route", "add", "api", "https://api.example.com", "--secret", "gh")
    healthy = {c["name"]: c for c in json.loads(ready.ok("doctor", "--json").stdout)["checks"]}
    assert healthy["registrations"]["ok"] is True
    for key in [k for k in memory_keyring.entries if k[1] == "secret.gh"]:
        del memory_keyring.entries[key]
    result = ready("doctor", "--json")
    found = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert result.exit_code == 5 and found["registrations"]["ok"] is False
    assert found["registrations"]["fix"] == "store it again: nhidel secret add gh --replace"


# -- the daemon ---------------------------------------------------------------------------


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runtime dir of the test's own: nhidel/ in it is where a daemon's state file goes."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "nhidel").mkdir(mode=0o700)
    return tmp_path / "nhidel"


def claim(runtime: Path, pid: int, url: str, home: Path, name: str = "") -> Path:
    """A state file as nhidel proxy writes it (or as anyone who can write there could)."""
    path = runtime / f"proxy-{name or pid}.json"
    path.write_text(json.dumps({"pid": pid, "url": url, "home": str(home)}))
    path.chmod(0o600)
    return path


def a_gone_pid() -> int:
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_doctor_says_no_daemon_runs_when_none_does(ready: Cli, runtime: Path) -> None:
    status, found = checks(ready)
    (daemon,) = found["daemon"]
    assert status == 0 and daemon["detail"] == "no nhidel proxy is running for this home"


def test_a_daemons_state_file_whose_process_is_gone_is_reported_stale(
    ready: Cli, runtime: Path, nhidel_home: Path
) -> None:
    stale = claim(runtime, a_gone_pid(), "http://127.0.0.1:9", nhidel_home)
    status, found = checks(ready)
    (daemon,) = found["daemon"]
    assert status == 1 and daemon["ok"] is False
    assert "is stale" in daemon["detail"] and daemon["fix"].startswith(f"rm {stale}")
    assert stale.exists()  # doctor only reads


def test_a_state_file_is_not_believed_without_an_answer_to_healthz(
    ready: Cli, runtime: Path, nhidel_home: Path
) -> None:
    import socket

    with socket.socket() as silent:  # alive pid (this one), a port that accepts but says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        claim(runtime, os.getpid(), f"http://127.0.0.1:{port}", nhidel_home)
        claim(runtime, os.getpid(), "http://example.com:80", nhidel_home, "x")  # not looked up
        status, found = checks(ready)
    assert status == 1 and len(found["daemon"]) == 2
    assert all(d["ok"] is False and "does not answer" in d["detail"] for d in found["daemon"])


def test_state_files_of_other_homes_links_and_garbage_are_no_claim(
    ready: Cli, runtime: Path, tmp_path: Path, nhidel_home: Path
) -> None:
    claim(runtime, a_gone_pid(), "http://127.0.0.1:9", tmp_path / "another-home")
    (runtime / "proxy-1.json").write_text("not json")
    real = claim(tmp_path, a_gone_pid(), "http://127.0.0.1:9", nhidel_home)
    (runtime / "proxy-2.json").symlink_to(real)
    status, found = checks(ready)
    assert status == 0 and found["daemon"][0]["ok"] is True


def test_a_runtime_dir_others_may_write_is_a_problem_and_nothing_in_it_is_believed(
    ready: Cli, runtime: Path, nhidel_home: Path
) -> None:
    runtime.chmod(0o777)
    claim(runtime, os.getpid(), "http://127.0.0.1:9", nhidel_home)
    status, found = checks(ready)
    (daemon,) = found["daemon"]
    assert status == 1 and daemon["detail"].startswith("the daemon's runtime dir: ")
    assert "writable by group or others" in daemon["detail"]
