"""`nhidel doctor`: is this nhidel home healthy, and if not, what to run.

Each check is a `Finding`: its name, whether it passed (None: not checked, because what it
needs is not there), what it saw, and for a problem the command that fixes it and the exit
status the problem calls for: the one any command meeting it exits with (SPEC's table: 4
keystore, 5 integrity; 2 for an NHIDEL_KEYSTORE naming no keystore), or 1 for what no command
refuses but should be fixed (a file others may read, a crash's leftovers, a stale status list).
Checks come in the order a command meets what they check: the home, the keystore, the key, the
files, the audit log, the ledger and config.toml as sealed, a crash's residue, the status list;
then whether an `nhidel proxy` serves this home.

Doctor only reads. It writes no audit record, moves no mark, finishes no residue and creates
no file: it asks the keystore for the trust entry and the mark, never for the signing key;
the ledger is opened read-only, and the log is read from its end (integrity.recent).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhidel.actions.publish import JWKS_FILE, STATUS_FILE, STATUS_TOKEN_TYPE
from nhidel.audit.segments import rotated_segments
from nhidel.audit.writer import STATE_EVENTS, Mark, read_mark
from nhidel.config import Config, load_config
from nhidel.errors import ExitStatus, IntegrityError, NhidelError
from nhidel.fsutil import (
    SQLITE_SIDE_FILES,
    private_dir_problem,
    private_file_problem,
    shared_lock,
)
from nhidel.integrity import state
from nhidel.integrity.recent import Recent, check_recent
from nhidel.keys.keystore import TRUST, KeyStore, OsKeyring
from nhidel.keys.material import verifying_key
from nhidel.keys.principal import Trust, key_state, load_trust
from nhidel.ledger.store import SCHEMA_VERSION, Ledger
from nhidel.paths import Paths
from nhidel.registrations import RESERVED_ROUTE_NAMES
from nhidel.timefmt import relative_with_clock
from nhidel.tokens.claims import MAX_LEEWAY
from nhidel.tokens.jws import TokenRejected, decode_verified
from nhidel.tokens.statuslist import INVALID, MAX_ENCODED_LENGTH, status_of

LOCK_WAIT = 5.0  # seconds doctor waits for a writer to finish before reading anyway
LOG_HINT = (
    "run nhidel audit verify for the full report; keep a copy of the home, then restore the "
    "log from a backup (or, if it is lost for good, nhidel repair --accept-loss)"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's outcome. `ok` None: not checked (`detail` says why)."""

    name: str
    ok: bool | None
    detail: str
    fix: str | None = None
    status: ExitStatus = ExitStatus.OK  # for a problem: the exit status it calls for

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape of one check (`nhidel doctor --json`)."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def _passed(name: str, detail: str) -> Finding:
    return Finding(name, True, detail)


def _failed(name: str, detail: str, fix: str, status: ExitStatus) -> Finding:
    """A problem: what is wrong, what to run, and the exit status it calls for."""
    return Finding(name, False, detail, fix, status)


def _problem(name: str, error: NhidelError, *, about: str = "") -> Finding:
    """A problem as nhidel's own error describes it: the message, its hint, its status."""
    return Finding(name, False, about + error.message, error.hint, error.exit_status)


def exit_status(findings: list[Finding]) -> ExitStatus:
    """0 when every check passed (or could not run for a reason already reported), else the
    highest status among the problems: integrity (5) before keystore (4) before the rest (1)."""
    return max((f.status for f in findings if f.ok is False), default=ExitStatus.OK)


def diagnose(paths: Paths, keystore: Callable[[], KeyStore], *, now: int) -> list[Finding]:
    """Every check, in order. `keystore` opens the keystore (it may ask for a passphrase on
    a terminal, as every command does; never without one)."""
    exam = _Examination(paths, now)
    with exam.closing_ledger():
        exam.home()
        exam.keystore(keystore)
        if exam.initialised:
            exam.key()
            exam.files()
            # Writers hold audit.lock for a whole change (log, ledger, mark): held shared,
            # no change is seen half made. (A writer holding it past the timeout is waited
            # for no longer: the checks then read what is there.)
            with shared_lock(paths.audit_lock, timeout=LOCK_WAIT):
                exam.audit_log()
                exam.ledger()
                exam.config_file()
                exam.registrations()
                exam.residue()
                exam.status_list()
            exam.daemon()
    return exam.findings


class _Examination:
    """What the checks learn on the way (the keystore, the mark, the sealed state), so each
    reads a thing once and a later check can say what it could not check, and why."""

    def __init__(self, paths: Paths, now: int) -> None:
        self.paths = paths
        self.now = now
        self.findings: list[Finding] = []
        self.initialised = False
        self.store: KeyStore | None = None
        self.trust: Trust | None = None
        self.mark: Mark | None = None
        self.recent: Recent | None = None
        self.sealed: state.SealedState | None = None
        self.config: Config | None = None
        self.opened: Ledger | None = None

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def skip(self, name: str, why: str) -> None:
        self.add(Finding(name, None, f"not checked: {why}"))

    @contextmanager
    def closing_ledger(self) -> Iterator[None]:
        try:
            yield
        finally:
            if self.opened is not None:
                self.opened.close()

    # -- the checks, in order -------------------------------------------------------------

    def home(self) -> None:
        paths = self.paths
        where = (
            str(paths.config_dir)
            if paths.config_dir == paths.state_dir
            else f"{paths.config_dir} (config) and {paths.state_dir} (state)"
        )
        made = (paths.config_file, paths.ledger_file, paths.audit_file)
        self.initialised = any(os.path.lexists(path) for path in made)
        if self.initialised:
            self.add(_passed("home", where))
        else:
            self.add(
                _failed(
                    "home",
                    f"no nhidel home at {where}: nothing set up yet",
                    "nhidel init",
                    ExitStatus.KEYSTORE,
                )
            )

    def keystore(self, open_keystore: Callable[[], KeyStore]) -> None:
        try:
            store = open_keystore()
        except NhidelError as exc:  # NHIDEL_KEYSTORE names no keystore
            self.add(_problem("keystore", exc))
            return
        try:
            found = store.read(TRUST)
            self.trust = None if found is None else load_trust(store)
        except NhidelError as exc:
            # The file keystore's errors name its file; the keyring's, which keyring it is.
            where = f"{_described(store)}: " if isinstance(store, OsKeyring) else ""
            self.add(_problem("keystore", exc, about=where))
            return
        except (KeyError, TypeError, ValueError):
            self.add(
                _failed(
                    "keystore",
                    f"{_described(store)}: its trust entry is malformed",
                    "restore the keystore from a backup",
                    ExitStatus.INTEGRITY,
                )
            )
            return
        self.store = store
        holds = "opens" if self.trust is not None else "opens, and holds no key yet"
        self.add(_passed("keystore", f"{_described(store)}: {holds}"))

    def key(self) -> None:
        if self.store is None:
            self.skip("key", "the keystore did not open")
            return
        trust = self.trust
        if trust is None:
            self.add(
                _failed(
                    "key",
                    f"no signing key in {self.store.description}",
                    "nhidel init",
                    ExitStatus.KEYSTORE,
                )
            )
            return
        states = {kid: key_state(info, self.now) for kid, info in trust.keys.items()}
        active = [kid for kid, s in states.items() if s == "active"]
        others = [
            f"{kid} retired, verifies its grants until they expire, "
            f"{_when(info.get('live_until'), self.now)}"
            for kid, info in trust.keys.items()
            if states[kid] == "retired"
        ]
        expired = sum(s == "expired" for s in states.values())
        if expired:
            others.append(f"{expired} expired (dropped at the next rotation)")
        if not active:
            self.add(
                _failed(
                    "key",
                    f"no active key is pinned for {trust.issuer} (an interrupted rotation?)",
                    "nhidel key rotate",
                    ExitStatus.KEYSTORE,
                )
            )
            return
        detail = f"active key {', '.join(active)} (issuer {trust.issuer})"
        self.add(_passed("key", "; ".join([detail, *others])))

    def files(self) -> None:
        paths = self.paths
        directories = list(dict.fromkeys((paths.config_dir, paths.state_dir)))
        sides = [Path(f"{paths.ledger_file}{side}") for side in SQLITE_SIDE_FILES]
        # Written in place (appended to, locked, opened by SQLite): a second name matters.
        in_place = [
            paths.config_lock,
            paths.ledger_file,
            *sides,
            paths.audit_file,
            *rotated_segments(paths),
            paths.audit_lock,
            paths.keystore_lock,
            paths.init_lock,
        ]
        replaced = [paths.config_file, paths.keystore_file]
        files = [(f, True) for f in in_place] + [(f, False) for f in replaced]
        problems = [private_dir_problem(d) for d in directories]
        problems += [private_file_problem(f, in_place=whole) for f, whole in files]
        for error in problems:
            if error is not None:
                self.add(_problem("files", error))
        if not any(problems):
            present = sum(os.path.lexists(f) for f, _ in files)
            where = "1 directory" if len(directories) == 1 else "2 directories"
            self.add(
                _passed(
                    "files",
                    f"{present} files in {where}: yours alone "
                    "(files 0600, directories 0700), no links",
                )
            )

    def audit_log(self) -> None:
        if self.store is None or self.trust is None:
            self.skip("audit", "needs the keystore's audit key and high-water mark")
            return
        try:
            recent = self._recent(self.store, self.trust.audit_key)
        except NhidelError as exc:  # a mark of the wrong shape
            self.add(_problem("audit", exc))
            return
        if not recent.ok:
            self.add(
                _failed("audit", f"the audit log: {recent.problem}", LOG_HINT, ExitStatus.INTEGRITY)
            )
            return
        self.recent = recent
        mark = self.mark
        if mark is None:
            marked = "no high-water mark in the keystore yet"
        elif mark.seq == recent.head_seq:
            marked = "where the keystore's high-water mark is"
        else:
            marked = f"past the keystore's high-water mark (seq {mark.seq})"
        torn = ""
        if recent.torn:
            torn = (
                f"; an unterminated last line ({recent.torn} bytes) from an interrupted "
                "write, which the next record ends"
            )
        self.add(
            _passed(
                "audit",
                f"head seq {recent.head_seq} {recent.head_hash}, "
                f"{marked}; the newest {recent.checked} record(s) sealed and chained"
                f"{torn} (every record: nhidel audit verify)",
            )
        )

    def _recent(self, store: KeyStore, key: bytes) -> Recent:
        """The quick check, the mark read first (as audit verify reads it): should a write be
        in flight after all, it can then only look like records after the mark."""
        self.mark = read_mark(store)
        return check_recent(self.paths, key, self.mark)

    def ledger(self) -> None:
        if self.recent is None or self.trust is None:
            self.skip("ledger", "needs the keystore and an audit log that checks out")
            return
        wal, shm = (Path(f"{self.paths.ledger_file}{side}") for side in ("-wal", "-shm"))
        if wal.exists() and not shm.exists():
            # SQLite would create the -shm to read the -wal: doctor creates no file.
            self.skip(
                "ledger",
                f"{wal} has no -shm beside it (a crash's leftover, which the "
                "next command recovers), and reading it would create one",
            )
            return
        try:
            self.opened = Ledger.read_only(self.paths)
        except FileNotFoundError:
            if self.mark is None:
                self.add(_passed("ledger", "no ledger yet"))
            else:
                self.add(
                    _failed(
                        "ledger",
                        f"{self.paths.ledger_file} is missing",
                        state.REPAIR_HINT,
                        ExitStatus.INTEGRITY,
                    )
                )
            return
        except NhidelError as exc:
            self.add(_problem("ledger", exc))
            return
        if self.opened.schema_version() < SCHEMA_VERSION:
            self.add(
                _passed(
                    "ledger", "written by an older nhidel; the next command that writes upgrades it"
                )
            )
            return
        try:
            self.add(self._as_sealed(self.opened, self.trust, self.recent))
        except NhidelError as exc:
            self.add(_problem("ledger", exc))

    def _as_sealed(self, ledger: Ledger, trust: Trust, recent: Recent) -> Finding:
        """The sealed state current (as against the mark and the log's head), the keys it
        trusts those the keystore pins, and each live grant's row as sealed: the rows verify
        reads now (every row: audit verify). Counts the live grants on the way."""
        sealed = state.open_state(ledger.sealed_state(), trust.audit_key)
        if sealed.legacy and self.mark is not None and self.mark.state_seq:
            raise IntegrityError(
                "the ledger has no sealed state (replaced, deleted, or written by nhidel 0.1)",
                state.REPAIR_HINT,
            )
        state.check_fresh(sealed, self.mark, recent.head_seq)
        late = _residue(recent, sealed)
        if not sealed.legacy and not any(r["event"] in _KEY_EVENTS for r in late):
            state.check_keys(sealed, set(trust.keys))
        self.sealed = sealed
        unfinished = {r.get("grant") for r in late}  # the residue check speaks for these
        counts = {"active": 0, "pending": 0}
        for grant_id in ledger.live_ids(now=self.now):
            found = ledger.lookup(grant_id)
            if found is None or grant_id in unfinished:
                continue
            grant, token_hash, seal = found
            if not sealed.legacy and (
                not state.row_is_sealed(trust.audit_key, grant, token_hash, seal)
                or (grant.revoked_at is not None) != (grant.id in sealed.revoked)
                or grant.uses != sealed.uses(grant.id)
            ):
                raise IntegrityError(
                    f"{ledger.path}: the row of grant {grant.id} was edited "
                    "(it differs from its seal or from the sealed state)",
                    state.REPAIR_HINT,
                )
            status = grant.status(self.now).value
            if status in counts:
                counts[status] += 1
        live = counts["active"] + counts["pending"]
        return _passed(
            "ledger",
            f"{live} live grant(s), {counts['pending']} of them "
            f"pending; the sealed state is current (audit record {sealed.seq}) and "
            "the live grants' rows are as sealed",
        )

    def config_file(self) -> None:
        try:
            config = load_config(self.paths)
        except NhidelError as exc:
            self.add(_problem("config", exc))
            return
        self.config = config
        sealed, recent = self.sealed, self.recent
        if sealed is None or recent is None:
            checked = "not checked against its seal (needs the ledger's sealed state)"
        else:
            checked = "as sealed"
            digest = state.config_digest(config)
            late = {r.get("config_sha256") for r in _residue(recent, sealed)}
            if sealed.config is not None and digest not in late:
                try:
                    state.check_config(config, sealed, self.paths)
                except IntegrityError as exc:
                    self.add(_problem("config", exc))
                    return
        agents = sorted(config.agents)
        named = ": " + ", ".join(agents[:5]) + (", ..." if len(agents) > 5 else "")
        self.add(
            _passed(
                "config",
                f"principal {config.principal}; {len(agents)} "
                f"agent(s){named if agents else ''}; {checked}",
            )
        )

    def registrations(self) -> None:
        """Every secret a registration sends somewhere has a value in the keystore, and every
        registered server's executable is still there to start."""
        config, store = self.config, self.store
        if config is None or store is None:
            self.skip("registrations", "needs config.toml and the keystore")
            return
        if not (config.secrets or config.servers or config.routes):
            self.add(_passed("registrations", "no secrets, MCP servers or routes registered"))
            return
        import os

        from nhidel.actions.secrets import keystore_entry

        missing = [n for n in sorted(config.secrets)
                   if not (store.read(keystore_entry(n)) or {}).get("value")]  # fmt: skip
        if missing:
            self.add(_failed(
                "registrations", f"the keystore holds no value for secret(s) {', '.join(missing)}",
                f"store it again: nhidel secret add {missing[0]} --replace", ExitStatus.INTEGRITY,
            ))  # fmt: skip
            return
        gone = [s.name for s in config.servers.values() if not os.access(s.command[0], os.X_OK)]
        if gone:
            self.add(_failed(
                "registrations", f"MCP server(s) {', '.join(gone)}: the registered executable "
                "is gone or not executable", f"register it again: nhidel mcp remove {gone[0]}, "
                "then nhidel mcp add", ExitStatus.DENIED,
            ))  # fmt: skip
            return
        reserved = sorted(set(config.routes) & RESERVED_ROUTE_NAMES)
        if reserved:
            self.add(_failed(
                "registrations", f"route(s) {', '.join(reserved)}: a name nhidel proxy keeps "
                "for its own paths, so the broker never routes it", f"nhidel route remove "
                f"{reserved[0]}, then add it under another name", ExitStatus.DENIED,
            ))  # fmt: skip
            return
        self.add(_passed("registrations", f"{len(config.secrets)} secret(s), "
                         f"{len(config.servers)} MCP server(s), {len(config.routes)} route(s); "
                         "every secret has its value"))  # fmt: skip

    def residue(self) -> None:
        recent, sealed = self.recent, self.sealed
        if recent is None or sealed is None:
            self.skip("residue", "needs an audit log and a ledger that check out")
            return
        try:
            state.one_crash_only(recent.after_mark)
        except IntegrityError as exc:
            self.add(_problem("residue", exc))
            return
        late = _residue(recent, sealed)
        if not late:
            self.add(_passed("residue", "nothing left half done by an interrupted command"))
            return
        shown = ", ".join(f"{r['seq']} {r['event']}" for r in late[:5])
        more = ", ..." if len(late) > 5 else ""
        self.add(
            _failed(
                "residue",
                f"an interrupted command left {len(late)} audit "
                f"record(s) not yet applied ({shown}{more}); the next command that "
                "writes would finish them",
                "nhidel repair",
                ExitStatus.DENIED,
            )
        )

    def status_list(self) -> None:
        config = self.config
        if config is None:
            self.skip("status-list", "config.toml could not be read")
            return
        uri, directory = config.status_uri, config.status_dir
        if uri is None and directory is None:
            self.add(
                _passed(
                    "status-list",
                    "not configured (no status-uri, no "
                    "status-dir): verifiers elsewhere learn no revocations",
                )
            )
        elif uri is None:
            self.add(
                _failed(
                    "status-list",
                    f"status-dir is {directory}, but with no status-uri nothing is published there",
                    "nhidel config set status-uri https://HOST/PATH/status.jwt",
                    ExitStatus.DENIED,
                )
            )
        elif directory is None:
            self.add(
                _passed(
                    "status-list",
                    f"status-uri {uri}; no status-dir: you "
                    "publish with nhidel publish --out DIR, where doctor cannot "
                    "look",
                )
            )
        elif self.trust is None:
            self.skip("status-list", "needs the keystore's pinned keys")
        elif stale := self._stale(Path(directory), uri, self.trust):
            self.add(
                _failed(
                    "status-list",
                    f"the list published in {directory} is stale: {'; '.join(stale)}",
                    f"nhidel publish --out {directory}",
                    ExitStatus.DENIED,
                )
            )
        else:
            self.add(
                _passed(
                    "status-list",
                    f"status-uri {uri}, status-dir {directory}: the published list and "
                    "keys are current"
                    + ("" if self.sealed else " (revocations not compared: no ledger checked)"),
                )
            )

    def daemon(self) -> None:
        """Whether an `nhidel proxy` serves this home, and where: its state file checked
        against a live process and an address that answers /healthz (`actions.daemon`)."""
        from nhidel.actions.daemon import find
        from nhidel.paths import runtime_dir

        problem = private_dir_problem(runtime_dir())
        if problem is not None:  # whoever may write there could plant a daemon's state file
            self.add(_problem("daemon", problem, about="the daemon's runtime dir: "))
            return
        found = find(self.paths)
        running = [d for d in found if d.state == "running"]
        for gone in (d for d in found if d.state != "running"):
            if gone.state == "stale":
                detail = f"{gone.file} is stale: process {gone.pid} is gone"
                fix = f"rm {gone.file} (the next nhidel proxy removes it too)"
            else:  # a hung daemon, or the file's process id reused by another process
                detail = f"{gone.file}: process {gone.pid} lives but {gone.url} does not answer"
                fix = (f"ps -p {gone.pid}: stop a hung nhidel proxy with kill {gone.pid}; "
                       f"for any other process the file is stale: rm {gone.file}")  # fmt: skip
            self.add(_failed("daemon", detail, fix, ExitStatus.DENIED))
        if running:
            where = "; ".join(f"pid {d.pid} on {d.url}" for d in running)
            self.add(_passed("daemon", f"nhidel proxy is running ({where}) and answers"))
        elif not found:
            self.add(_passed("daemon", "no nhidel proxy is running for this home"))

    def _stale(self, directory: Path, uri: str, trust: Trust) -> list[str]:
        """What the published files no longer say (empty: current, as far as the pinned keys
        and the ledger tell)."""
        live = {
            kid: info["x"]
            for kid, info in trust.keys.items()
            if key_state(info, self.now) != "expired"
        }
        token = _read_public(directory / STATUS_FILE)
        if token is None:
            return [f"no {STATUS_FILE} there yet"]
        try:
            claims = decode_verified(
                token.decode("ascii", "replace").strip(),
                {kid: verifying_key(x) for kid, x in live.items()},
                typ=STATUS_TOKEN_TYPE,
            )
        except TokenRejected as rejected:
            return [f"{STATUS_FILE} does not verify with the pinned keys ({rejected.detail})"]
        stale = []
        expires = claims.get("exp")
        if not isinstance(expires, int) or expires <= self.now:
            stale.append(
                f"{STATUS_FILE} expired {_when(expires, self.now)}, so verifiers "
                "elsewhere refuse it"
            )
        if claims.get("sub") != uri:
            stale.append(f"{STATUS_FILE} was published for another status-uri")
        missing = [
            idx
            for idx in self._revoked_indices()
            if _status(claims.get("status_list"), idx) != INVALID
        ]
        if missing:
            stale.append(f"it does not show {len(missing)} revocation(s)")
        keys = _read_public(directory / JWKS_FILE)
        if keys is None or _jwks_xs(keys) != set(live.values()):
            stale.append(f"{JWKS_FILE} does not list the pinned keys")
        return stale

    def _revoked_indices(self) -> list[int]:
        """Status list indices of revoked grants some verifier could still accept, as the
        ledger and its sealed state say (what the next published list sets)."""
        ledger, sealed = self.opened, self.sealed
        if ledger is None or sealed is None:
            return []
        horizon = self.now - MAX_LEEWAY
        rows, _ = ledger.revoked_status_indices(live_after=horizon)
        return sorted(set(rows).union(ledger.status_indices(sealed.revoked, live_after=horizon)))


_KEY_EVENTS = frozenset({"key.created", "key.rotated"})


def _residue(recent: Recent, sealed: state.SealedState) -> list[dict[str, Any]]:
    """The state changes after the mark that the ledger does not hold yet (a crash's)."""
    return [
        r for r in recent.after_mark if r.get("event") in STATE_EVENTS and r["seq"] > sealed.seq
    ]


def _when(timestamp: object, now: int) -> str:
    """'in 1h 30m (2026-12-04 09:15 CET)', or what an absent or odd time is."""
    return relative_with_clock(timestamp, now=now) if type(timestamp) is int else "(no time)"


def _described(store: KeyStore) -> str:
    if isinstance(store, OsKeyring):
        return f"the OS keyring ({store.backend()}), entries under {store.service}"
    return store.description


def _status(listed: Any, idx: int) -> int | None:
    try:
        return status_of(listed, idx)
    except ValueError:
        return None  # malformed, or the index beyond the list: not shown as revoked


def _jwks_xs(data: bytes) -> set[str]:
    try:
        keys = json.loads(data)["keys"]
        return {str(k["x"]) for k in keys}
    except (ValueError, KeyError, TypeError):
        return set()


def _read_public(path: Path) -> bytes | None:
    """A published file's bytes (None if it is missing or not a regular file): opened without
    waiting on a FIFO planted at the name, and read only up to a status list's largest size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        size = 0
        while size <= MAX_ENCODED_LENGTH and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
