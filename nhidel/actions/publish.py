"""What verifiers on other machines fetch: the JWKS and the signed token status list.

The status list token (draft-ietf-oauth-status-list) is a JWT typed `statuslist+jwt`, signed
with the active key, whose `sub` is the configured status URI. Its `status_list` has one bit
per grant index: 1 (INVALID) for a revoked grant that some verifier could still accept, else
0. Both files are public by design: they hold public keys, indices and revocation bits only.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhidel.audit import AuditKeys, event
from nhidel.config import load_config
from nhidel.errors import NhidelError, StorageError, UsageError
from nhidel.fsutil import atomic_write, file_kind, storage_error
from nhidel.integrity import state
from nhidel.keys.keystore import KeyStore
from nhidel.keys.principal import Signer, load_signer, public_keys
from nhidel.ledger.store import Ledger
from nhidel.paths import Paths
from nhidel.tokens.claims import MAX_LEEWAY
from nhidel.tokens.jws import mint
from nhidel.tokens.statuslist import INVALID, encode

STATUS_TOKEN_TYPE = "statuslist+jwt"  # noqa: S105 - a media type, not a secret
JWKS_FILE = "jwks.json"
STATUS_FILE = "status.jwt"
DEFAULT_TTL = 3600
DEFAULT_CACHE_TTL = 300
MAX_TTL = 7 * 86400
NO_STATUS_URI_HINT = (
    "first say where the list will be served: "
    "nhidel config set status-uri https://example.com/nhidel/status.jwt"
)


@dataclass(frozen=True, slots=True)
class StatusList:
    """One published status list token and what it says."""

    token: str
    uri: str
    size: int  # entries (indices 0 .. size-1)
    revoked: int  # entries set to INVALID
    issued_at: int
    expires_at: int
    cache_ttl: int


def jwks_json(paths: Paths, keystore: KeyStore, *, now: int) -> str:
    """The JWKS of every key whose grants may still be live (what `key export --jwks` prints)."""
    from nhidel.keys.material import public_jwk

    live = [public_jwk(i.x) for i in public_keys(paths, keystore, now=now) if i.state != "expired"]
    return json.dumps({"keys": live}, indent=2) + "\n"


def status_list_token(
    paths: Paths,
    signer: Signer,
    *,
    now: int,
    ttl: int = DEFAULT_TTL,
    cache_ttl: int = DEFAULT_CACHE_TTL,
    keystore: KeyStore | None = None,
) -> StatusList:
    """Mint the status list token from the ledger, signed with the active key (with the
    keystore, the sealed state's revocations are checked fresh and included)."""
    uri = _status_uri(paths, ttl, cache_ttl)
    with Ledger(paths) as ledger:
        # A revoked grant whose expiry plus the largest leeway has passed is rejected as
        # expired by every verifier; its index may already belong to a newer grant.
        revoked, size = ledger.revoked_status_indices(live_after=now - MAX_LEEWAY)
        # What the sealed state says is revoked counts too: a row's revoked_at can be edited
        # away, the sealed state cannot (and a stale one is refused).
        if keystore is not None:
            sealed = state.read_checked(paths, AuditKeys(signer.audit_key, keystore), ledger)
            revoked = sorted(set(revoked).union(ledger.status_indices(
                sealed.revoked, live_after=now - MAX_LEEWAY)))  # fmt: skip
    statuses = [0] * max(size, 1)  # never empty: an empty list is not a valid list
    for idx in revoked:
        statuses[idx] = INVALID
    claims: dict[str, Any] = {
        "iss": signer.issuer,
        "sub": uri,
        "iat": now,
        "exp": now + ttl,
        "ttl": cache_ttl,
        "status_list": {"bits": 1, "lst": encode(statuses, 1)},
    }
    token = mint(claims, signer.seed, signer.kid, typ=STATUS_TOKEN_TYPE)
    return StatusList(token, uri, len(statuses), len(revoked), now, now + ttl, cache_ttl)


def _status_uri(paths: Paths, ttl: int, cache_ttl: int) -> str:
    """Check the request before the keystore is opened (it may ask for a passphrase)."""
    if not 0 < ttl <= MAX_TTL:
        raise UsageError(f"--ttl {ttl}s is out of range", "give a duration from 1s to 7d")
    if not 0 < cache_ttl <= ttl:
        raise UsageError(
            f"--cache-ttl {cache_ttl}s is out of range", "give a duration from 1s up to --ttl"
        )
    uri = load_config(paths).status_uri
    if uri is None:
        raise UsageError("no status URI is configured", NO_STATUS_URI_HINT)
    return uri


def publish_status(
    paths: Paths,
    keystore: KeyStore,
    out: Path,
    *,
    now: int,
    ttl: int = DEFAULT_TTL,
    cache_ttl: int = DEFAULT_CACHE_TTL,
) -> StatusList:
    """Write the status list token to `out` (0644, atomically) and record `status.published`."""
    check_out_file(out)
    if not out.parent.is_dir():
        raise UsageError(
            f"{out.parent} is not a directory", "create it first, or pick another --out"
        )
    _status_uri(paths, ttl, cache_ttl)
    signer = load_signer(keystore)
    published = status_list_token(
        paths, signer, now=now, ttl=ttl, cache_ttl=cache_ttl, keystore=keystore
    )
    # The body is the JWT itself, without a newline, as the draft's HTTP retrieval has it.
    atomic_write(out, published.token.encode("ascii"), public=True)
    _record(paths, keystore, signer, published)
    return published


def publish_site(
    paths: Paths,
    keystore: KeyStore,
    out_dir: Path,
    *,
    now: int,
    ttl: int = DEFAULT_TTL,
    cache_ttl: int = DEFAULT_CACHE_TTL,
) -> StatusList:
    """Write `jwks.json` and `status.jwt` into `out_dir` (created 0755 if missing)."""
    _status_uri(paths, ttl, cache_ttl)
    keys = jwks_json(paths, keystore, now=now)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(
            f"{out_dir} is {file_kind(out_dir.lstat().st_mode)}, not a directory",
            "pick another --out",
        )
    # Both names are checked before either file is written: never half a site.
    check_out_file(out_dir / JWKS_FILE)
    check_out_file(out_dir / STATUS_FILE)
    if not out_dir.is_dir():
        try:
            out_dir.mkdir(parents=True)
            os.chmod(out_dir, 0o755)  # noqa: S103 - served to the world on purpose
        except OSError as exc:
            raise storage_error(out_dir, exc) from exc
    atomic_write(out_dir / JWKS_FILE, keys.encode("ascii"), public=True)
    return publish_status(
        paths, keystore, out_dir / STATUS_FILE, now=now, ttl=ttl, cache_ttl=cache_ttl
    )


def check_out_file(out: Path) -> None:
    """Refuse an --out that names anything but a regular file (or nothing yet).

    A link is not followed and a FIFO or device is not written into: the file is replaced by
    a rename, so what stands at the name must be a file that may be replaced.
    """
    try:
        mode = out.lstat().st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:
        return  # the parent is not a directory: said by the caller
    except OSError as exc:
        raise storage_error(out, exc) from exc
    if stat.S_ISDIR(mode):
        raise UsageError(
            f"{out} is a directory",
            "give a file name, or write both files: nhidel publish --out DIR",
        )
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"{out} is {file_kind(mode)}, not a regular file",
            "nhidel replaces only a regular file: remove it, or pick another --out",
        )


def _record(paths: Paths, keystore: KeyStore, signer: Signer, published: StatusList) -> None:
    state.audit_log(paths, AuditKeys(signer.audit_key, keystore)).append(
        [
            event(
                "status.published",
                principal=signer.principal,
                kid=signer.kid,
                uri=published.uri,
                size=published.size,
                revoked=published.revoked,
                expires_at=published.expires_at,
            )
        ]
    )


@dataclass(frozen=True, slots=True)
class Republished:
    """What `republish` did: wrote jwks.json and status.jwt into `directory`; or found no
    status directory, so the list is the principal's to publish (`by_hand`); or nothing, when
    no status URI is set (no verifier elsewhere checks a list)."""

    directory: Path | None = None
    by_hand: bool = False


def republish(paths: Paths, keystore: KeyStore, *, now: int) -> Republished:
    """After revocations or a key rotation, which verifiers elsewhere learn of only from a
    newly published list: publish into the configured status directory, if there is one.

    A failure is StorageError saying the change itself stands, and how to publish it.
    """
    config = state.sealed_config(paths, AuditKeys.of(keystore))  # where to publish is sealed
    if config.status_uri is None:
        return Republished()
    if config.status_dir is None:
        return Republished(by_hand=True)
    directory = Path(config.status_dir)
    try:
        publish_site(paths, keystore, directory, now=now)
    except NhidelError as exc:
        raise StorageError(
            f"done, but the status list could not be published to {config.status_dir}: "
            f"{exc.message}",
            f"fix that, then run: nhidel publish --out {config.status_dir}",
        ) from None
    return Republished(directory)
