"""What a crash leaves is finished by the next command; a loss is refused until `nhidel repair`.

The crashes here are made the way a real one leaves the files: records written and fsynced in
the log, the ledger never committed, the mark never moved (the log session is left by an
exception, as a killed process would leave it). tests/integration/test_crash_harness.py kills real
processes at every write and fsync.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from helpers.crashed_change import crash_after_writing
from helpers.processes import claims_of
from helpers.support import Cli

from nhidel.audit import event
from nhidel.models import new_grant_id
from nhidel.paths import Paths

SCOPE = "repo:read:acme/api"


def records(cli: Cli, event_name: str) -> list[dict[str, Any]]:
    out = cli.ok("audit", "tail", "-n", "1000", "--json", "--event", event_name).stdout
    return [json.loads(line) for line in out.splitlines()]


def grant_json(cli: Cli, grant_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(cli.ok("show", grant_id, "--json").stdout)
    return shown


def issue(cli: Cli, *extra: str) -> tuple[str, str]:
    token = cli.ok("grant", "reviewer", "--scope", SCOPE, *extra).stdout.strip()
    return token, claims_of(token)["jti"]


def copy_ledger(paths: Paths, to: Path) -> None:
    with sqlite3.connect(paths.ledger_file) as source, sqlite3.connect(to) as target:
        source.backup(target)
    source.close()
    target.close()


def put_back_ledger(paths: Paths, saved: Path) -> None:
    for side in ("-wal", "-shm"):
        Path(f"{paths.ledger_file}{side}").unlink(missing_ok=True)
    shutil.copyfile(saved, paths.ledger_file)


def test_a_logged_revocation_whose_ledger_commit_never_happened_is_applied_and_sealed(
    ready: Cli, paths: Paths
) -> None:
    token, grant_id = issue(ready)
    expires = claims_of(token)["exp"]
    crash_after_writing(paths, event("grant.revoked", grant=grant_id, expires_at=expires,
                                     reason="crashed"))  # fmt: skip
    assert ready("audit", "verify").exit_code == 0  # a crash is never tampering
    denied = ready("verify", "-", "--scope", SCOPE, input=token)
    assert denied.exit_code == 1 and "revoked" in denied.stderr
    assert grant_json(ready, grant_id)["status"] == "revoked"
    (repaired,) = records(ready, "state.repaired")
    revoked_seq = records(ready, "grant.revoked")[0]["seq"]
    assert repaired["applied"] == [revoked_seq] and repaired["void"] == []
    assert ready("audit", "verify").exit_code == 0


def test_a_grant_whose_row_never_committed_ends_as_a_revoked_tombstone(
    ready: Cli, paths: Paths
) -> None:
    lost = new_grant_id()
    now = int(time.time())
    crash_after_writing(paths, event(
        "grant.issued", agent="reviewer", grant=lost, scopes=[SCOPE], expires_at=now + 900,
        not_before=now, max_uses=None, kid="k",
    ))  # fmt: skip
    issue(ready)  # the next writer finishes it
    tomb = grant_json(ready, lost)
    assert (tomb["status"], tomb["revoke_reason"]) == ("revoked", "interrupted")
    assert ready("audit", "verify").exit_code == 0


def test_an_agent_removal_cut_short_stays_a_removal(ready: Cli, paths: Paths) -> None:
    token, grant_id = issue(ready)
    crash_after_writing(
        paths,
        event("agent.removed", agent="reviewer", revoked=1),
        event("grant.revoked", agent="reviewer", grant=grant_id,
              expires_at=claims_of(token)["exp"], reason="agent removed"),
    )  # fmt: skip
    ready.ok("repair")
    assert json.loads(ready.ok("agent", "list", "--json").stdout) == []
    assert grant_json(ready, grant_id)["status"] == "revoked"
    assert ready("audit", "verify").exit_code == 0


def test_repair_puts_back_what_a_rolled_back_ledger_lost_from_the_sealed_log(
    ready: Cli, paths: Paths, tmp_path: Path
) -> None:
    kept, _ = issue(ready)
    doomed, doomed_id = issue(ready, "--uses", "2")
    ready.ok("verify", "-", "--scope", SCOPE, "--consume", input=doomed)
    copy_ledger(paths, tmp_path / "old.db")
    ready.ok("verify", "-", "--scope", SCOPE, "--consume", input=doomed)
    ready.ok("revoke", doomed_id)
    put_back_ledger(paths, tmp_path / "old.db")

    assert ready("verify", "-", "--scope", SCOPE, input=kept).exit_code == 5
    assert ready("grant", "reviewer", "--scope", SCOPE).exit_code == 5
    assert ready("audit", "verify").exit_code == 5
    said = ready.ok("repair").stderr
    assert "applied" in said and "lost" not in said
    assert ready("verify", "-", "--scope", SCOPE, input=kept).exit_code == 0
    assert "revoked" in ready("verify", "-", "--scope", SCOPE, input=doomed).stderr
    assert grant_json(ready, doomed_id)["uses"] == 2
    assert ready("audit", "verify").exit_code == 0


def test_a_lost_log_is_refused_until_the_loss_is_accepted_which_revokes_live_grants(
    ready: Cli, paths: Paths
) -> None:
    token, grant_id = issue(ready)
    paths.audit_file.unlink()
    assert ready("grant", "reviewer", "--scope", SCOPE).exit_code == 5
    assert ready("verify", "-", "--scope", SCOPE, input=token).exit_code == 5
    refused = ready("repair")
    assert refused.exit_code == 5 and "--accept-loss" in refused.stderr
    said = ready.ok("repair", "--accept-loss").stderr
    assert "accepted as lost" in said and grant_id[:10] in said
    assert grant_json(ready, grant_id)["status"] == "revoked"
    (accepted,) = records(ready, "log.loss_accepted")
    assert accepted["revoked"] == 1
    (revoked,) = records(ready, "grant.revoked")  # shaped as every revocation record is
    assert (revoked["agent"], revoked["scopes"], revoked["principal"]) == (
        "reviewer", [SCOPE], "alice")  # fmt: skip
    assert ready("audit", "verify").exit_code == 0
    fresh, _ = issue(ready)  # writing resumes
    assert ready("verify", "-", "--scope", SCOPE, input=fresh).exit_code == 0
    assert ready("audit", "verify").exit_code == 0


def test_a_deleted_ledger_denies_everything_until_accept_loss_brings_back_revoked_rows(
    ready: Cli, paths: Paths
) -> None:
    token, grant_id = issue(ready)
    for side in ("", "-wal", "-shm"):
        Path(f"{paths.ledger_file}{side}").unlink(missing_ok=True)
    assert ready("verify", "-", "--scope", SCOPE, input=token).exit_code == 5
    assert ready("audit", "verify").exit_code == 5
    assert ready("repair").exit_code == 5
    ready.ok("repair", "--accept-loss")
    assert grant_json(ready, grant_id)["status"] == "revoked"
    assert ready("verify", "-", "--scope", SCOPE, input=token).exit_code == 1
    assert ready("audit", "verify").exit_code == 0


def test_repair_with_nothing_to_do_says_so_and_writes_nothing(ready: Cli, paths: Paths) -> None:
    before = paths.audit_file.read_bytes()
    assert "nothing to repair" in ready.ok("repair").stderr
    assert paths.audit_file.read_bytes() == before


def agent_json(cli: Cli, name: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(cli.ok("agent", "show", name, "--json").stdout)
    return shown


def updated(allow: list[str], *, max_ttl: int = 3600, aud: tuple[str, ...] = ()) -> dict[str, Any]:
    """An agent.updated record asking reviewer's ceiling to become `allow` (config.toml never
    got to show it: its digest names no file)."""
    return event("agent.updated", agent="reviewer", scopes=allow, max_ttl=max_ttl,
                 default_ttl=min(900, max_ttl), aud=list(aud), revoked=0,
                 as_of=int(time.time()), config_sha256="0" * 64)  # fmt: skip


def test_an_agent_update_cut_short_before_config_toml_is_finished_as_its_narrowing(
    ready: Cli, paths: Paths
) -> None:
    _, kept = issue(ready)
    ticket = ready.ok("grant", "reviewer", "--scope", "ticket:create:queue/1").stdout.strip()
    ticket_id = claims_of(ticket)["jti"]
    # The revocation records that followed the update's own were torn off.
    crash_after_writing(paths, updated(["repo:read:acme/*"]))
    assert ready("audit", "verify").exit_code == 0  # a crash is never tampering
    denied = ready("verify", "-", "--scope", "ticket:create:queue/1", input=ticket)
    assert denied.exit_code == 1 and "revoked" in denied.stderr
    assert agent_json(ready, "reviewer")["allow"] == ["repo:read:acme/*"]
    assert grant_json(ready, ticket_id)["revoke_reason"] == "ceiling narrowed"
    assert grant_json(ready, kept)["status"] == "active"
    (repaired,) = records(ready, "state.repaired")
    assert repaired["applied"] == [records(ready, "agent.updated")[0]["seq"]]
    assert [r["grant"] for r in records(ready, "grant.revoked")] == [ticket_id]
    assert ready("audit", "verify").exit_code == 0


def test_a_widening_cut_short_before_config_toml_counts_for_nothing(
    ready: Cli, paths: Paths
) -> None:
    before = agent_json(ready, "reviewer")
    _, grant_id = issue(ready)
    crash_after_writing(paths, updated([*before["allow"], "deploy:run"], max_ttl=7200))
    ready.ok("repair")
    assert agent_json(ready, "reviewer") == before
    assert grant_json(ready, grant_id)["status"] == "active"
    (repaired,) = records(ready, "state.repaired")
    assert repaired["void"] == [records(ready, "agent.updated")[0]["seq"]]
    assert ready("grant", "reviewer", "--scope", "deploy:run").exit_code == 6
    assert ready("audit", "verify").exit_code == 0


def test_a_mixed_update_cut_short_keeps_only_its_narrowing(ready: Cli, paths: Paths) -> None:
    _, grant_id = issue(ready)
    crash_after_writing(paths, updated(["repo:read:acme/web", "deploy:run"], max_ttl=600))
    ready.ok("repair")
    shown = agent_json(ready, "reviewer")
    assert (shown["allow"], shown["max_ttl"]) == (["repo:read:acme/web"], "10m")
    assert grant_json(ready, grant_id)["revoke_reason"] == "ceiling narrowed"  # acme/api
    assert ready("audit", "verify").exit_code == 0


def test_audit_verify_reads_a_setting_change_cut_short_as_unfinished_not_as_an_edit(
    ready: Cli, paths: Paths
) -> None:
    """`config set` writes its record, then config.toml, then commits the ledger: killed before
    the commit, `audit verify` must see the config.toml the record names, not an edit."""
    from dataclasses import replace

    from nhidel.config import load_config, save_config
    from nhidel.integrity.state import config_digest

    changed = replace(load_config(paths), status_uri="https://status.example/list")
    crash_after_writing(
        paths,
        event("config.updated", setting="status_uri", value=changed.status_uri,
              config_sha256=config_digest(changed)),
    )  # fmt: skip
    save_config(paths, changed)
    checked = ready("audit", "verify")
    assert checked.exit_code == 0, checked.stderr
    ready.ok("repair")
    assert ready("audit", "verify").exit_code == 0
    assert json.loads(ready.ok("config", "show", "--json").stdout)["status_uri"] == (
        "https://status.example/list"
    )
