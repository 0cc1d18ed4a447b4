"""Just-in-time grants (`nhidel request`): a whole grant asked for, approved by a human, and
delivered encrypted to a one-time key that only the waiting requester holds.

A request needs no keystore. `request` makes a one-time X25519 key pair, keeps the private
key in memory only, and sends the public key with what it asks for, one of two ways:
- through the daemon (`POST /requests`, nhidel.enforce.requests_endpoint), which checks a
  grant of the agent and seals the request itself: authenticated as that agent;
- through nhidel's files: a 0600 file in `requests/` of the state directory, named by the
  request id the requester chose. Anyone who can write the state directory can write one, so
  it is unauthenticated: the first keystore holder that lists or answers approvals (or the
  daemon) takes it in (`take_in`), seals it as a grant request marked unauthenticated with a
  `grant.requested` record, and deletes the file. Nothing in the file is believed after that
  but what the sealed row says; a file that does not parse is dropped with a warning.

The sealed request holds an argument hash over agent, scopes, TTL, reason and public key; the
answer is sealed over that hash, so a key swapped in the row breaks the seal. `approvals` shows
what `approve` would mint (checked against the sealed ceiling now) and the key's fingerprint,
which `request` printed too: a key swapped in a file before intake shows a fingerprint the
requester did not print. `approve` mints inside the same state change as its answer (`deliver`)
and seals only the token's ciphertext (a NaCl sealed box to that key) into the answer; the
token is never stored or logged in plaintext.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nhidel.actions.approvals import (
    DEFAULT_TIMEOUT,
    SUMMARY_LENGTH,
    add_request,
)
from nhidel.actions.grants import MAX_REASON, GrantRequest, check, issue_within
from nhidel.audit import AuditKeys, event
from nhidel.base64url import b64url_decode, b64url_encode
from nhidel.errors import IntegrityError, NhidelError, UsageError
from nhidel.fsutil import atomic_write, ensure_private_dir, exclusive_lock, read_dropped_file
from nhidel.integrity import state
from nhidel.integrity.approvals import (
    DENIED,
    GRANT,
    GRANTED,
    LAPSED,
    PENDING,
    Request,
    canonical_sha256,
)
from nhidel.ledger.store import Ledger
from nhidel.models import check_agent_name
from nhidel.names import is_approval_id
from nhidel.paths import Paths
from nhidel.scopes import parse_scope_arguments
from nhidel.timefmt import format_duration, parse_duration

if TYPE_CHECKING:
    from nhidel.keys.keystore import KeyStore

DEFAULT_WAIT = DEFAULT_TIMEOUT  # seconds `request --wait` waits, and a request stays open
MAX_WAIT = 86400  # the longest a request stays open
MAX_SCOPES = 64
MAX_FILE = 16 * 1024  # bytes: a request file is a few hundred
KEY_BYTES = 32
DAEMON, FILES = "daemon", "files"  # how a request came in
DROPPED = "dropped"  # a file request that was removed without being taken in
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Asked:
    """What a request asks for: a grant of `scopes` to `agent` for `ttl` seconds (None: the
    agent's default TTL when it is minted), why, and the public key to deliver it to."""

    agent: str
    scopes: tuple[str, ...]
    ttl: int | None
    reason: str
    pubkey: str  # base64url of the raw X25519 public key

    def to_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "scopes": list(self.scopes), "ttl": self.ttl,
                "reason": self.reason, "pubkey": self.pubkey}  # fmt: skip

    @property
    def args_sha256(self) -> str:
        """The hash the answer is sealed over: a key or scope swapped later breaks the seal."""
        return canonical_sha256(self.to_json())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.pubkey)


def asked(agent: str, scopes: list[str], ttl: str | int | None, reason: str, pubkey: str) -> Asked:
    """A request as typed (or as sent to the daemon, or read from a file), checked: UsageError
    for anything `request` would not send."""
    check_agent_name(agent)
    parsed = parse_scope_arguments(scopes)
    if not parsed or len(parsed) > MAX_SCOPES:
        raise UsageError(f"a request needs 1 to {MAX_SCOPES} --scope", "e.g. --scope pay:charge")
    if isinstance(ttl, str):
        ttl = parse_duration(ttl, what="--ttl")
    if ttl is not None and (type(ttl) is not int or not 0 < ttl <= 366 * 86400):
        raise UsageError("--ttl is out of range", "e.g. --ttl 15m")
    if not 0 < len(reason) <= MAX_REASON or not all(ch.isprintable() for ch in reason):
        raise UsageError(f"--reason must be 1 to {MAX_REASON} printable characters",
                         "e.g. --reason 'pay invoice 1234'")  # fmt: skip
    try:
        raw = b64url_decode(pubkey)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise UsageError("the request's public key is not an X25519 key", "run nhidel request")
    return Asked(agent, tuple(str(s) for s in parsed), ttl, reason, pubkey)


def fingerprint(pubkey: str) -> str:
    """The first 64 bits of the key's SHA-256, as four groups of hex: what `request` prints
    and `approvals` shows, for the human to compare."""
    digest = hashlib.sha256(b64url_decode(pubkey)).hexdigest()[:16]
    return ":".join(digest[i : i + 4] for i in range(0, 16, 4))


class OneTimeKey:
    """The requester's X25519 key pair: made for one request, kept in memory only."""

    def __init__(self) -> None:
        from nacl.public import PrivateKey

        self._private = PrivateKey.generate()
        self.pubkey = b64url_encode(bytes(self._private.public_key))
        self.fingerprint = fingerprint(self.pubkey)

    def open(self, box: str) -> str:
        """The token sealed to this key; IntegrityError when it was sealed to another."""
        from nacl.exceptions import CryptoError
        from nacl.public import SealedBox

        try:
            return SealedBox(self._private).decrypt(b64url_decode(box)).decode("ascii")
        except (CryptoError, ValueError, TypeError, UnicodeDecodeError):
            raise IntegrityError(
                "the answer's token was not sealed to this request's key",
                "someone wrote the answer by hand; ask again, and run nhidel audit verify",
            ) from None


def seal_to(pubkey: str, token: str) -> str:
    """`token` encrypted to `pubkey` (a NaCl sealed box), base64url."""
    from nacl.public import PublicKey, SealedBox

    return b64url_encode(SealedBox(PublicKey(b64url_decode(pubkey))).encrypt(token.encode()))


def summary(request: Asked, *, authenticated: bool) -> str:
    """`grant AGENT SCOPES for TTL: "REASON"` (escaped, cut), marked when unauthenticated."""
    ttl = format_duration(request.ttl) if request.ttl else "the default TTL"
    reason = json.dumps(request.reason, ensure_ascii=True)
    if len(reason) > SUMMARY_LENGTH // 2:
        reason = f"{reason[: SUMMARY_LENGTH // 2]}…(+{len(reason) - SUMMARY_LENGTH // 2})"
    mark = "" if authenticated else " [UNAUTHENTICATED]"
    return f"grant {request.agent} {' '.join(request.scopes)} for {ttl}: {reason}{mark}"


def asked_of(request: Request) -> Asked:
    """What a sealed grant request asks for, with its argument hash recomputed."""
    body = request.body
    found = asked(str(body["agent"]), list(body["scopes"]), body["ttl"], str(body["reason"]),
                  str(body["pubkey"]))  # fmt: skip
    if found.args_sha256 != body["args_sha256"]:
        raise IntegrityError(f"approval request {request.id} does not match its own hash",
                             "run nhidel audit verify")  # fmt: skip
    return found


# -- sealing a request ---------------------------------------------------------------------


def open_sealed(
    paths: Paths,
    keys: AuditKeys,
    ledger: Ledger,
    approval_id: str,
    request: Asked,
    *,
    authenticated: bool,
    via: str,
    by_grant: str | None,
    created_at: int,
    lapses_at: int,
    now: int,
) -> Request:
    """Seal a grant request into the approvals table with its `grant.requested` record."""
    body = {
        **request.to_json(), "kind": GRANT, "via": via, "authenticated": authenticated,
        "by_grant": by_grant, "fingerprint": request.fingerprint,
        "args_sha256": request.args_sha256, "summary": summary(request,
                                                               authenticated=authenticated),
        "created_at": created_at, "lapses_at": lapses_at,
    }  # fmt: skip
    sealed = Request(approval_id, GRANT, body, created_at, lapses_at)
    with state.change(paths, keys, ledger, now=now) as step:
        if ledger.approval(approval_id) is not None:
            raise IntegrityError(f"approval request {approval_id} exists already",
                                 "a request file reused an id; it was not taken in")  # fmt: skip
        step.write([event(
            "grant.requested", agent=request.agent, approval=approval_id,
            scopes=list(request.scopes), ttl=request.ttl, reason=request.reason,
            fingerprint=request.fingerprint, authenticated=authenticated, via=via,
            by_grant=by_grant, lapses_at=lapses_at,
        )])  # fmt: skip
        add_request(ledger, keys.seal_key, sealed)
    return sealed


def lapse_for(wait: int | None, now: int) -> int:
    """When a request lapses: after its `--wait` (at most MAX_WAIT), else the default."""
    return now + min(max(wait or DEFAULT_WAIT, 1), MAX_WAIT)


# -- the files way -------------------------------------------------------------------------


def write_file(paths: Paths, approval_id: str, request: Asked, *, now: int, lapses_at: int) -> None:
    """File a request for the first keystore holder to take in (no keystore needed)."""
    ensure_private_dir(paths.state_dir)
    ensure_private_dir(paths.requests_dir)
    data = {"id": approval_id, **request.to_json(), "created_at": now, "lapses_at": lapses_at}
    atomic_write(paths.requests_dir / approval_id, json.dumps(data, sort_keys=True).encode())


def take_in(
    paths: Paths, keys: AuditKeys, ledger: Ledger, *, now: int, warn: Callable[[str], None]
) -> list[str]:
    """Seal every request file as an unauthenticated grant request and delete it; a file that
    does not parse (or reuses an id) is deleted with a warning. The ids taken in."""
    try:
        fd = os.open(paths.requests_dir, _DIR_FLAGS)
    except OSError:
        return []  # none yet (the usual case), or not a directory nhidel made
    taken = []
    try:
        # One taker at a time: another keystore holder (the daemon, a second command) must
        # not find a file this one is taking in, and take it for an id reused.
        with exclusive_lock(paths.requests_lock):
            for name in sorted(os.listdir(fd)):
                if not is_approval_id(name):
                    continue  # not a name nhidel writes: left alone
                found = _read_request(fd, name)
                if found is None:
                    warn(f"dropped {paths.requests_dir / name}: not a request nhidel request "
                         "wrote")  # fmt: skip
                elif ledger.approval(name) is not None:
                    warn(f"dropped {paths.requests_dir / name}: its id is taken by another "
                         "request")  # fmt: skip
                else:
                    filed, created, lapses = found
                    open_sealed(paths, keys, ledger, name, filed, authenticated=False, via=FILES,
                                by_grant=None, created_at=min(created, now),
                                lapses_at=min(lapses, now + MAX_WAIT), now=now)  # fmt: skip
                    taken.append(name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
            os.fsync(fd)
    finally:
        os.close(fd)
    return taken


def take_in_files(
    paths: Paths, keystore: KeyStore, *, now: int, warn: Callable[[str], None]
) -> list[str]:
    """`take_in` for a command that holds the keystore (approvals, approve, deny)."""
    try:
        if not os.listdir(paths.requests_dir):
            return []
    except OSError:
        return []
    with Ledger(paths) as ledger:
        return take_in(paths, AuditKeys.of(keystore), ledger, now=now, warn=warn)


def _read_request(dir_fd: int, name: str) -> tuple[Asked, int, int] | None:
    """The request file `name` holds (read as fsutil.read_dropped_file reads it); None for
    anything but a request `nhidel request` wrote under that name."""
    data = read_dropped_file(dir_fd, name, MAX_FILE)
    if data is None:
        return None
    try:
        fields = json.loads(data)
        if fields["id"] != name or type(fields["created_at"]) is not int:
            return None
        if type(fields["lapses_at"]) is not int:
            return None
        filed = asked(str(fields["agent"]), [str(s) for s in fields["scopes"]], fields["ttl"],
                      str(fields["reason"]), str(fields["pubkey"]))  # fmt: skip
        return filed, fields["created_at"], fields["lapses_at"]
    except (ValueError, KeyError, TypeError, UsageError):
        return None


# -- what approve mints --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Minting:
    """What `approve` would mint for a grant request now, and why it would refuse, if so."""

    agent: str
    scopes: tuple[str, ...]
    ttl: int | None  # None: the agent is unknown, so is its default
    fingerprint: str
    authenticated: bool
    via: str
    refusal: str | None


def minting(
    paths: Paths, keystore: KeyStore, requests: list[Request], *, now: int
) -> dict[str, Minting]:
    """For each grant request among `requests`: what `approve` would mint under the sealed
    config now (its ceiling, its maximum TTL)."""
    grant_requests = [r for r in requests if r.kind == GRANT]
    if not grant_requests:
        return {}
    config = state.sealed_config(paths, AuditKeys.of(keystore))
    found = {}
    for request in grant_requests:
        body = request.body
        ttl = body["ttl"]
        refusal = None
        try:
            filed = asked_of(request)
            check(config, _grant_request(filed), now=now)
        except NhidelError as refused:
            refusal = refused.message
        if ttl is None and body["agent"] in config.agents:
            ttl = config.agents[body["agent"]].default_ttl
        found[request.id] = Minting(str(body["agent"]), tuple(body["scopes"]), ttl,
                                    fingerprint(str(body["pubkey"])),
                                    body["authenticated"] is True, str(body["via"]),
                                    refusal)  # fmt: skip
    return found


def deliverer(keystore: KeyStore) -> Callable[[Request, state.Change, int], dict[str, Any]]:
    """What `approve` passes to nhidel.actions.approvals.answer: mint the grant a request
    asks for (within the sealed ceiling, inside the answer's state change) and seal only its
    token's ciphertext, to the requester's key, into the answer."""

    def deliver(request: Request, step: state.Change, now: int) -> dict[str, Any]:
        filed = asked_of(request)
        grant, token = issue_within(step, keystore, _grant_request(filed), now=now)
        return {"grant": grant.id, "expires_at": grant.expires_at,
                "box": seal_to(filed.pubkey, token)}  # fmt: skip

    return deliver


def _grant_request(filed: Asked) -> GrantRequest:
    ttl = f"{filed.ttl}s" if filed.ttl is not None else None
    return GrantRequest(filed.agent, filed.scopes, ttl=ttl, reason=filed.reason)


# -- the requester's side, waiting ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a request stands for its requester: PENDING, GRANTED (`box` holds the token
    sealed to its key), DENIED (`reason`), LAPSED, or DROPPED (its file removed unread)."""

    status: str
    reason: str | None = None
    box: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "box": self.box}


def outcome_of(row: tuple[Any, ...] | None, *, now: int) -> Outcome:
    """A request's outcome from its row (the daemon has checked the row's seals first; a
    requester without a keystore cannot: what it reads is at most a token sealed to its own
    key, which every verifier checks)."""
    if row is None:
        return Outcome(PENDING)
    try:
        fields = json.loads(row[9]) if row[9] is not None else None
    except ValueError:
        fields = None
    if isinstance(fields, dict):
        if fields.get("decision") == GRANTED:
            box = (fields.get("extra") or {}).get("box")
            return Outcome(GRANTED, box=box if isinstance(box, str) else None)
        if fields.get("decision") == DENIED:
            reason = fields.get("reason")
            return Outcome(DENIED, reason=reason if isinstance(reason, str) else None)
    if row[6] == LAPSED or now >= int(row[5]):
        return Outcome(LAPSED)
    return Outcome(PENDING)


def outcome_in_files(paths: Paths, approval_id: str, *, now: int) -> Outcome:
    """Where request `approval_id` stands, read from the ledger without a keystore."""
    row = _row_read_only(paths, approval_id)
    if row is None:
        filed = (paths.requests_dir / approval_id).exists()
        if not filed:  # taken in just now (the row committed before the file went), or dropped
            row = _row_read_only(paths, approval_id)
            if row is None:
                return Outcome(DROPPED)
    return outcome_of(row, now=now)


def _row_read_only(paths: Paths, approval_id: str) -> tuple[Any, ...] | None:
    try:
        ledger = Ledger.read_only(paths)
    except FileNotFoundError:
        return None
    try:
        return ledger.approval(approval_id)
    finally:
        ledger.close()
