"""Issue 10, findings 1, 3, 4, 5, 6 and 7: each attack run as an attacker would run it.

Everything here goes through files and processes: the real CLI (`python -m nhidel`) in child
processes, and the attacker's tools (cp, mv, rm, sqlite3 on ledger.db, bytes appended to
audit.jsonl, an old keystore.json put back). Each test then runs a legitimate command and
checks that trust never moved backwards. Findings 2, 8 and 9 have their own files
(test_planted_paths.py, test_hardening.py, test_slips.py).

The home is made once (`init` in a child that gives the new keystore a cheap scrypt: the cost
is stored in keystore.json, so every later command opens it cheaply) and copied for each test.
A hole still open is a strict xfail whose reason names it (so the fix turns it into a failure
until the marker goes).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import Run, claims_of, command, isolated_env, list_all, ok, run

PASSPHRASE = "findings passphrase"
SCOPE = "repo:read:acme/api"
TIMEOUT = 30

# `nhidel init` with a cheap scrypt for the keystore it creates (as test_crash_harness.py does).
CHEAP_INIT = """\
import sys
from nhidel.keys import keystore
assert isinstance(keystore._SCRYPT, dict)
keystore._SCRYPT = {"n": 2**14, "r": 8, "p": 1}
from nhidel.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def base_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice, and agent reviewer (ceiling repo:read:acme/*, max TTL 1h)."""
    root = tmp_path_factory.mktemp("findings-base")
    env = isolated_env(root, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE=PASSPHRASE)
    init = subprocess.run(
        [sys.executable, "-c", CHEAP_INIT, "init", "--principal", "alice"],
        env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    ok(env, "agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    return Path(env["NHIDEL_HOME"])


@pytest.fixture
def env(tmp_path: Path, base_home: Path) -> dict[str, str]:
    shutil.copytree(base_home, tmp_path / "home", symlinks=True)  # modes kept: 0700, 0600
    return isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE=PASSPHRASE)


def home(env: dict[str, str]) -> Path:
    return Path(env["NHIDEL_HOME"])


def grant(env: dict[str, str], *extra: str) -> tuple[str, str]:
    """A new grant to reviewer: (token, grant id)."""
    token = ok(env, "grant", "reviewer", "--scope", SCOPE, *extra).stdout.strip()
    return token, claims_of(token)["jti"]


def verify(env: dict[str, str], token: str, *extra: str) -> Run:
    return run(env, "verify", "-", "--scope", SCOPE, "--json", *extra, input=token + "\n")


def assert_denied(result: Run, *reasons: str) -> None:
    """Not allowed, whatever else: exit 1 with one of `reasons`, or exit 5 (integrity)."""
    assert "Traceback" not in result.stderr, str(result)
    assert result.code in (1, 5), str(result)
    if result.stdout.strip():
        decision = json.loads(result.stdout)
        assert decision["allowed"] is False, str(result)
        expected = "integrity" if result.code == 5 else reasons
        assert decision["reason"] in expected, str(result)


def sql(env: dict[str, str], statement: str, *params: Any) -> int:
    """What an agent with write access does to ledger.db: plain SQL, committed."""
    db = sqlite3.connect(home(env) / "ledger.db")
    try:
        changed = db.execute(statement, params).rowcount
        db.commit()
    finally:
        db.close()
    return changed


def audit_verify(env: dict[str, str]) -> Run:
    return run(env, "audit", "verify", "--json")


def log_records(env: dict[str, str], n: int = 200) -> list[dict[str, Any]]:
    shown = ok(env, "audit", "tail", "--json", "-n", str(n)).stdout
    return [json.loads(line) for line in shown.splitlines()]


# == 1. Truncation laundered by the next write ==============================================

TRUNCATIONS = [
    "log_and_ledger_copied_back",  # both from before the revoke
    "log_copied_back_row_edited",  # the log from before, revoked_at cleared in today's ledger
    "log_deleted",  # and the ledger from before the revoke
    "all_segments_deleted",  # every rotated segment and the current one, and the old ledger
]


@pytest.mark.parametrize("attack", TRUNCATIONS)
def test_finding_1_a_cut_log_is_refused_and_never_laundered_by_the_next_write(
    env: dict[str, str], tmp_path: Path, attack: str
) -> None:
    env["NHIDEL_AUDIT_SEGMENT_BYTES"] = "4096"
    token, grant_id = grant(env)
    if attack == "all_segments_deleted":
        # Distinct garbage lines: one denial record each, enough to rotate at the next write.
        garbage = "".join(f"not-a-token-{i}\n" for i in range(16))
        assert run(env, "verify", "--batch", "--any-scope", input=garbage).code == 1
    h = home(env)
    before = tmp_path / "before-revoke"
    before.mkdir()
    for name in ("audit.jsonl", "ledger.db"):
        shutil.copy2(h / name, before / name)
    ok(env, "revoke", grant_id)
    segments = sorted(h.glob("audit*.jsonl"))
    if attack == "all_segments_deleted":
        assert len(segments) >= 2, segments  # the revoke's write rotated the log

    # The attack.
    if attack == "log_and_ledger_copied_back":
        shutil.copy2(before / "audit.jsonl", h / "audit.jsonl")
        shutil.copy2(before / "ledger.db", h / "ledger.db")
    elif attack == "log_copied_back_row_edited":
        shutil.copy2(before / "audit.jsonl", h / "audit.jsonl")
    elif attack == "log_deleted":
        (h / "audit.jsonl").unlink()
        shutil.copy2(before / "ledger.db", h / "ledger.db")
    else:
        for segment in segments:
            segment.unlink()
        shutil.copy2(before / "ledger.db", h / "ledger.db")
    assert sql(env, "UPDATE grants SET revoked_at = NULL, revoke_reason = NULL") >= 1

    assert audit_verify(env).code == 5
    assert_denied(verify(env, token), "revoked")
    refused = run(env, "grant", "reviewer", "--scope", SCOPE)
    assert refused.code == 5, str(refused)
    assert refused.stdout == "", str(refused)  # no token was handed out
    assert "repair" in refused.stderr, str(refused)  # it says how to recover
    # Nothing was laundered: the loss is still there, and the grant still denied.
    assert audit_verify(env).code == 5
    assert_denied(verify(env, token), "revoked")


# == 3. A long-running verifier and a replaced ledger.db ====================================

LIBRARY_VERIFIER = """\
import json, sys, time
from nhidel import Verifier
consume = sys.argv[1] == "consume"
with Verifier() as verifier:
    for line in sys.stdin:
        decision = verifier.check(line.strip(), [sys.argv[2]], consume=consume)
        print(json.dumps(decision.to_json(int(time.time()))), flush=True)
"""


class LongRunning:
    """A verifier process fed one token a line through a pipe, one JSON verdict a line back."""

    def __init__(self, env: dict[str, str], argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, env=env, cwd=env["HOME"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, bufsize=0, start_new_session=True,
        )  # fmt: skip
        self.pending = b""

    def ask(self, token: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(token.encode() + b"\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(left, 0))
            chunk = os.read(self.process.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                self.process.kill()
                _, stderr = self.process.communicate()
                raise AssertionError(f"the verifier gave no verdict: {stderr.decode()}")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        verdict: dict[str, Any] = json.loads(line)
        return verdict

    def close(self) -> tuple[int, str]:
        try:
            _, stderr = self.process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return self.process.returncode, stderr.decode()


@pytest.mark.parametrize("consume", [False, True], ids=["check", "consume"])
@pytest.mark.parametrize("kind", ["verify_batch", "library_verifier"])
def test_finding_3_a_long_running_verifier_sees_a_revocation_after_ledger_db_is_replaced(
    env: dict[str, str], kind: str, consume: bool
) -> None:
    token, grant_id = grant(env)
    if kind == "verify_batch":
        argv = command("verify", "--batch", "--scope", SCOPE, *(["--consume"] if consume else []))
    else:
        argv = [sys.executable, "-c", LIBRARY_VERIFIER, "consume" if consume else "check", SCOPE]
    verifier = LongRunning(env, argv)
    try:
        assert verifier.ask(token)["allowed"] is True
        assert verifier.ask(token)["allowed"] is True
        # The attacker: an identical copy put in place (the -wal and -shm stay where they are,
        # as `cp` and `mv` leave them; nothing is writing meanwhile).
        h = home(env)
        shutil.copy2(h / "ledger.db", h / "x")
        os.replace(h / "x", h / "ledger.db")
        assert verifier.ask(token)["allowed"] is True  # a copy changes nothing by itself
        ok(env, "revoke", grant_id)  # the user, in another process
        verdict = verifier.ask(token)
        assert verdict["allowed"] is False, verdict
        assert verdict["reason"] in ("revoked", "integrity"), verdict
        assert verifier.ask(token)["allowed"] is False
    finally:
        code, stderr = verifier.close()  # (its stdin closed: the end of the stream)
    assert "Traceback" not in stderr, stderr
    assert code == (1 if kind == "verify_batch" else 0), stderr
    # And the revocation holds for everyone afterwards.
    assert_denied(verify(env, token), "revoked")
    assert [g["status"] for g in list_all(env) if g["id"] == grant_id] == ["revoked"]
    assert audit_verify(env).code == 0, "an identical copy is no tampering"


# == 4. Use limits lifted by editing a row ==================================================


@pytest.mark.parametrize(
    "edit",
    ["max_uses = NULL", "uses = 0", "max_uses = NULL, uses = 0"],
    ids=["lift", "reset", "both"],
)
def test_finding_4_an_edited_use_limit_does_not_give_a_spent_grant_another_use(
    env: dict[str, str], edit: str
) -> None:
    token, grant_id = grant(env, "--uses", "1")
    assert verify(env, token, "--consume").code == 0
    assert_denied(verify(env, token, "--consume"), "uses_exhausted")
    assert sql(env, f"UPDATE grants SET {edit} WHERE id = ?", grant_id) == 1
    assert_denied(verify(env, token, "--consume"), "uses_exhausted")
    assert_denied(verify(env, token), "uses_exhausted")
    assert audit_verify(env).code == 5


def test_finding_4_a_ledger_row_that_no_grant_issued_record_made_fails_audit_verify(
    env: dict[str, str],
) -> None:
    _, grant_id = grant(env)
    assert audit_verify(env).code == 0
    forged = "g" + "a" * 26
    columns = (
        "agent, scope, aud, issued_at, not_before, expires_at, max_uses, uses, reason, kid, "
        "token_sha256, revoked_at, revoke_reason, status_idx, seal"
    )
    copy = f"INSERT INTO grants (id, {columns}) SELECT ?, {columns} FROM grants WHERE id = ?"
    copied = sql(env, copy, forged, grant_id)
    assert copied == 1
    result = audit_verify(env)
    assert result.code == 5, str(result)
    assert forged in json.loads(result.stdout)["error"]["why"], str(result)


# == 5. The file keystore: a stolen old key, and edits of keystore.json =====================

# The thief: holds an old copy of keystore.json and (the test plays both roles) the
# passphrase it was sealed with. Mints a token with the old key, beyond the agent's ceiling,
# and prints the ledger row it would forge for it, sealed with the audit key from that copy.
THIEF = """\
import json, sys, time
from nhidel.paths import Paths
from nhidel.keys.material import unb64
from nhidel.keys.keystore import open_keystore
from nhidel.models import Grant, new_grant_id
from nhidel.scopes import parse_scopes
from nhidel.integrity.state import row_seal
from nhidel.tokens.jws import mint, token_sha256

stolen = open_keystore(Paths.from_env()).read("signing")
now = int(time.time())
grant = Grant(
    id=new_grant_id(), agent="reviewer", scopes=parse_scopes(["repo:write:acme/api"]), aud=None,
    issued_at=now, not_before=now, expires_at=now + 86400, max_uses=None, reason=None,
    kid=stolen["kid"],
)
claims = {"iss": stolen["issuer"], "sub": stolen["principal"], "act": {"sub": "reviewer"},
          "scope": grant.scope_claim, "iat": now, "nbf": now, "exp": grant.expires_at,
          "jti": grant.id}
token = mint(claims, unb64(stolen["private_key"]), stolen["kid"])
digest = token_sha256(token)
row = {"id": grant.id, "agent": grant.agent, "scope": grant.scope_claim, "issued_at": now,
       "not_before": now, "expires_at": grant.expires_at, "kid": grant.kid,
       "token_sha256": digest, "seal": row_seal(unb64(stolen["audit_key"]), grant, digest)}
print(json.dumps({"token": token, "row": row}))
"""


def test_finding_5_a_token_signed_by_a_key_rotated_out_after_compromise_stays_denied(
    env: dict[str, str], tmp_path: Path
) -> None:
    h = home(env)
    stolen = tmp_path / "stolen"
    stolen.mkdir(mode=0o700)
    shutil.copy2(h / "keystore.json", stolen / "keystore.json")  # before the compromise is known
    token, _ = grant(env)
    ok(env, "key", "rotate", "--now", "--yes")
    assert_denied(verify(env, token), "revoked", "unknown_key")

    # The thief mints with the old key and forges the ledger row.
    thief = subprocess.run(
        [sys.executable, "-c", THIEF], env=dict(env, NHIDEL_HOME=str(stolen)), cwd=env["HOME"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert thief.returncode == 0, thief.stderr
    forged = json.loads(thief.stdout)
    row = forged["row"]
    names = ", ".join(row)
    sql(env, f"INSERT INTO grants ({names}) VALUES ({', '.join('?' * len(row))})", *row.values())
    wide = run(env, "verify", "-", "--scope", "repo:write:acme/api", "--json",
               input=forged["token"] + "\n")  # fmt: skip
    assert_denied(wide, "unknown_key")

    # The whole old keystore.json put back (the log and the ledger stay current).
    shutil.copy2(stolen / "keystore.json", h / "keystore.json")
    for _ in range(2):  # and again, after whatever the first one did
        wide = run(env, "verify", "-", "--scope", "repo:write:acme/api", "--json",
                   input=forged["token"] + "\n")  # fmt: skip
        assert_denied(wide, "unknown_key")
    assert audit_verify(env).code == 5


def test_finding_5_keystore_json_put_back_alone_fails_audit_verify(
    env: dict[str, str], tmp_path: Path
) -> None:
    old = tmp_path / "keystore.json"
    shutil.copy2(home(env) / "keystore.json", old)
    ok(env, "key", "rotate", "--now", "--yes")
    token, _ = grant(env)  # signed by the new key
    shutil.copy2(old, home(env) / "keystore.json")  # no forged row, nothing else touched
    assert audit_verify(env).code == 5
    assert_denied(verify(env, token), "unknown_key")
    assert audit_verify(env).code == 5  # and the verify did not launder it


def _edit(text: str, path: list[str], change: Any) -> bytes:
    document = json.loads(text)
    holder = document
    for name in path[:-1]:
        holder = holder[name]
    if change is None:
        del holder[path[-1]]
    elif callable(change):
        holder[path[-1]] = change(holder[path[-1]])
    else:
        holder[path[-1]] = change
    return json.dumps(document, indent=1, sort_keys=True).encode()


def _flip(value: str) -> str:
    """One character in the middle of a base64 text, changed to another base64 character."""
    middle = len(value) // 2
    return value[:middle] + ("B" if value[middle] == "A" else "A") + value[middle + 1 :]


KDF_EDITS = ("kdf.salt", "kdf.n", "kdf.p")


def test_finding_5_any_edit_of_keystore_json_is_refused_on_the_next_command(
    env: dict[str, str],
) -> None:
    token, _ = grant(env)
    path = home(env) / "keystore.json"
    original = path.read_bytes()
    text = original.decode()
    edits = {
        "sealed.ciphertext": _edit(text, ["sealed", "ciphertext"], _flip),
        "sealed.nonce": _edit(text, ["sealed", "nonce"], _flip),
        "sealed removed": _edit(text, ["sealed"], None),
        "check.ciphertext": _edit(text, ["check", "ciphertext"], _flip),
        "format": _edit(text, ["format"], "nhidel-keystore/1"),
        "kdf.r": _edit(text, ["kdf", "r"], 16),
        "kdf.salt": _edit(text, ["kdf", "salt"], _flip),
        "kdf.n": _edit(text, ["kdf", "n"], lambda n: n * 2),
        "kdf.p": _edit(text, ["kdf", "p"], 2),
        "truncated": original[: len(original) // 2],
    }
    # And raw byte edits spread over the file (each byte replaced by one that differs).
    for offset in range(7, len(original), len(original) // 6):
        replacement = b"x" if original[offset : offset + 1] != b"x" else b"y"
        edits[f"byte {offset}"] = original[:offset] + replacement + original[offset + 1 :]
    outcomes = {}
    for name, content in edits.items():
        path.write_bytes(content)
        outcomes[name] = verify(env, token)
    path.write_bytes(original)
    assert verify(env, token).code == 0  # the edits were what was refused
    for name, result in outcomes.items():
        assert "Traceback" not in result.stderr, f"{name}: {result}"
        assert result.stdout == "", f"{name}: {result}"  # no decision at all
        expected = (4, 5) if name in KDF_EDITS else (5,)
        assert result.code in expected, f"{name}: {result}"


# == 6. An unsealed fragment shown as a record ==============================================


def _follow(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command("audit", "tail", "-f", "--json", "-n", "0"), env=env, cwd=env["HOME"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


@pytest.mark.parametrize("sealed_look", [False, True], ids=["unsealed", "fake_seal"])
def test_finding_6_a_forged_fragment_appended_to_the_log_is_never_shown_as_a_record(
    env: dict[str, str], sealed_look: bool
) -> None:
    token, grant_id = grant(env)
    last_line = (home(env) / "audit.jsonl").read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    last = json.loads(last_line)
    forged_id = "gforgedforgedforgedforged22"
    forged = {
        "v": last["v"], "seq": last["seq"] + 1, "time": last["time"], "event": "grant.revoked",
        "principal": "alice", "agent": "reviewer", "grant": forged_id, "scopes": [SCOPE],
        "expires_at": last.get("expires_at"), "reason": "FORGED-BY-THE-AGENT",
        "prev": hashlib.sha256(last_line).hexdigest(), "nhidel": last["nhidel"],
    }  # fmt: skip
    if sealed_look:
        forged["seal"] = "f" * 64
    fragment = json.dumps(forged, separators=(",", ":")).encode()
    following = _follow(env)
    try:
        time.sleep(0.5)  # let it reach the end of the log
        with (home(env) / "audit.jsonl").open("ab") as log:  # unterminated: no newline
            log.write(fragment)
        shown_before = ok(env, "audit", "tail", "--json", "-n", "50").stdout
        _, other_id = grant(env)  # the legitimate command: the next writer
        deadline = time.monotonic() + 10
        seen = ""
        while other_id not in seen and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = ok(env, "audit", "tail", "--json", "-n", "5").stdout
        time.sleep(0.5)  # what the follower prints after the poll interval
    finally:
        following.send_signal(signal.SIGINT)
        try:
            followed, follow_err = following.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            following.kill()
            followed, follow_err = following.communicate()
    assert other_id in followed, follow_err  # it did follow the grant
    shown_json = ok(env, "audit", "tail", "--json", "-n", "50").stdout
    shown_text = ok(env, "audit", "tail", "-n", "50").stdout
    for shown in (shown_before, shown_json, shown_text, followed):
        assert forged_id not in shown and "FORGED" not in shown, shown
    records = [json.loads(line) for line in shown_json.splitlines()]
    recovered = [r for r in records if r["event"] == "log.recovered"]
    assert len(recovered) == 1, records
    assert all(r.get("grant") != forged_id for r in records)
    # The fragment's line was ended so that it can never parse as a record.
    assert fragment + b" <torn>\n" in (home(env) / "audit.jsonl").read_bytes()
    report = audit_verify(env)
    assert report.code == 0, str(report)
    assert json.loads(report.stdout)["ok"] is True
    # The fragment revoked nothing, and the real grants are what they were.
    assert verify(env, token).code == 0
    assert {g["id"]: g["status"] for g in list_all(env)} == {grant_id: "active", other_id: "active"}


# == 7. A crash between the log and the ledger ==============================================

# The real CLI, with its first ledger COMMIT replaced by kill -9 ("commit"), or with a file
# size limit standing in for a full disk ("fsize:<bytes>": writes past it fail with EFBIG).
CRASHING = """\
import os, resource, signal, sqlite3, sys
mode = sys.argv[1]
if mode == "commit":
    class Connection(sqlite3.Connection):
        def execute(self, sql, *args):
            if isinstance(sql, str) and sql.strip().upper() in ("COMMIT", "END"):
                os.kill(os.getpid(), signal.SIGKILL)
            return super().execute(sql, *args)
    connect = sqlite3.connect
    sqlite3.connect = lambda *a, **k: connect(*a, **{"factory": Connection, **k})
else:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(mode.split(":")[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
from nhidel.cli import main
sys.exit(main(sys.argv[2:]))
"""


def crashing(env: dict[str, str], mode: str, *args: str) -> Run:
    done = subprocess.run(
        [sys.executable, "-c", CRASHING, mode, *args], env=env, cwd=env["HOME"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
        start_new_session=True,
    )  # fmt: skip
    return Run(tuple(args), done.returncode, done.stdout, done.stderr)


def logged(env: dict[str, str], event: str) -> list[dict[str, Any]]:
    """The complete records of audit.jsonl of one event, read straight from the file."""
    found = []
    for line in (home(env) / "audit.jsonl").read_bytes().split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def assert_crash_is_not_tampering(env: dict[str, str]) -> None:
    result = audit_verify(env)
    assert result.code == 0, str(result)
    assert json.loads(result.stdout)["ok"] is True, str(result)


def assert_repaired(env: dict[str, str], *finished: str) -> None:
    """A sealed state.repaired record finished the records of `finished` grants/agents."""
    records = log_records(env, 50)
    repaired = [r for r in records if r["event"] == "state.repaired"]
    assert len(repaired) == 1, records
    applied = set(repaired[0].get("applied") or [])
    by_seq = {r["seq"]: r for r in records}
    names = {by_seq[seq].get("grant") or by_seq[seq].get("agent") for seq in applied}
    assert set(finished) <= names, (finished, repaired)
    assert_crash_is_not_tampering(env)


def test_finding_7_revoke_killed_before_the_ledger_commit(env: dict[str, str]) -> None:
    token, grant_id = grant(env)
    killed = crashing(env, "commit", "revoke", grant_id)
    assert killed.code == -signal.SIGKILL, str(killed)
    assert [r["grant"] for r in logged(env, "grant.revoked")] == [grant_id]  # the residue
    assert_crash_is_not_tampering(env)
    assert_denied(verify(env, token), "revoked")  # the next command applies it
    assert [g["status"] for g in list_all(env) if g["id"] == grant_id] == ["revoked"]
    assert_repaired(env, grant_id)
    assert_denied(verify(env, token), "revoked")


def _crashed_grant(env: dict[str, str], killed: Run) -> str:
    """The id of the grant a killed `grant` logged; it handed out no token."""
    assert killed.code != 0, str(killed)
    assert killed.stdout == "", str(killed)
    issued = logged(env, "grant.issued")
    assert len(issued) == 1, issued  # the residue: a sealed grant.issued ...
    assert list_all(env) == []  # ... with no ledger row, never active
    return str(issued[0]["grant"])


def _finish_crashed_grant(env: dict[str, str], crashed: str) -> None:
    assert_crash_is_not_tampering(env)
    _, fresh = grant(env)  # the next command
    statuses = {g["id"]: g["status"] for g in list_all(env)}
    assert statuses == {crashed: "revoked", fresh: "active"}
    assert_repaired(env, crashed)


def test_finding_7_grant_killed_before_the_ledger_commit(env: dict[str, str]) -> None:
    killed = crashing(env, "commit", "grant", "reviewer", "--scope", SCOPE)
    assert killed.code == -signal.SIGKILL, str(killed)
    _finish_crashed_grant(env, _crashed_grant(env, killed))


def test_finding_7_grant_on_a_full_disk_fails_between_the_log_and_the_ledger(
    env: dict[str, str],
) -> None:
    h = home(env)
    # A gateway holds the ledger open (its -wal and -shm exist); the disk then fills up with
    # room for the audit record alone: the ledger's first write fails.
    gateway = sqlite3.connect(h / "ledger.db")
    try:
        gateway.execute("SELECT count(*) FROM grants").fetchone()
        limit = (h / "audit.jsonl").stat().st_size + 2000
        failed = crashing(env, f"fsize:{limit}", "grant", "reviewer", "--scope", SCOPE)
    finally:
        gateway.close()
    assert failed.code in (1, 5), str(failed)
    assert "Traceback" not in failed.stderr, str(failed)
    _finish_crashed_grant(env, _crashed_grant(env, failed))


def test_finding_7_agent_remove_killed_before_the_ledger_commit(env: dict[str, str]) -> None:
    token, grant_id = grant(env)
    killed = crashing(env, "commit", "agent", "remove", "reviewer", "--yes")
    assert killed.code == -signal.SIGKILL, str(killed)
    assert [r["agent"] for r in logged(env, "agent.removed")] == ["reviewer"]
    assert_crash_is_not_tampering(env)
    assert_denied(verify(env, token), "revoked")  # the next command finishes the removal
    agents = json.loads(ok(env, "agent", "list", "--json").stdout)
    assert agents == []
    assert [g["status"] for g in list_all(env) if g["id"] == grant_id] == ["revoked"]
    assert_repaired(env, grant_id, "reviewer")
    refused = run(env, "grant", "reviewer", "--scope", SCOPE)
    assert refused.code in (3, 6) and refused.stdout == "", str(refused)
