"""Upstream secrets (API keys, tokens): stored in the keystore by name, listed by name only.

A value lives in the keystore entry `secret.NAME` and nowhere else nhidel writes; config.toml
holds the name and when it was stored, sealed with the registrations that name it, so an
agent that can write files cannot point a registration at a secret it invented or hide one.
The enforcement points read values with `secret_values` at the moment they inject them, so a
replaced value reaches running gateways and the broker on their next action.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nhidel.audit import AuditKeys, event
from nhidel.config import Config, load_config, with_secret, without_secret
from nhidel.errors import IntegrityError, NotFoundError, PolicyError, UsageError
from nhidel.fsutil import exclusive_lock
from nhidel.integrity import state
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.ledger.store import Ledger
from nhidel.paths import Paths
from nhidel.registrations import SecretEntry, check_secret_name

# Shorter values cannot be found in what comes back without mangling ordinary text, and the
# promise that a known secret never flows back needs them found (nhidel.enforce.redact).
MIN_SECRET_LENGTH = 8
MAX_SECRET_LENGTH = 16384


def keystore_entry(name: str) -> str:
    return f"secret.{name}"


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """A secret as `secret list` shows it: never its value."""

    name: str
    created_at: int
    last_used: int | None
    used_by: tuple[str, ...]  # "mcp SERVER" / "route NAME"

    def to_json(self) -> dict[str, Any]:
        from nhidel.timefmt import rfc3339

        return {
            "name": self.name,
            "created_at": rfc3339(self.created_at),
            "last_used": rfc3339(self.last_used),
            "used_by": list(self.used_by),
        }


def check_value(value: str) -> str:
    """A secret's value as typed or piped: one line, its line end dropped, no control
    characters (it goes into a header or a variable), long enough to be found again."""
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise UsageError("the secret is empty", "type it at the prompt, or pipe it on stdin")
    if any(not ch.isprintable() for ch in value):
        raise UsageError(
            "the secret holds a line break or control characters",
            "give one line: the value as the API expects it",
        )
    if len(value) < MIN_SECRET_LENGTH:
        raise UsageError(
            f"the secret is shorter than {MIN_SECRET_LENGTH} characters",
            "nhidel cannot redact so short a value from what comes back; use the real key",
        )
    if len(value) > MAX_SECRET_LENGTH:
        raise UsageError(
            f"the secret is longer than {MAX_SECRET_LENGTH} characters",
            "give the API key or token itself",
        )
    return value


def add_secret(
    paths: Paths,
    name: str,
    value: str,
    *,
    replace: bool = False,
    now: int,
    keystore: KeyStore | None = None,
) -> SecretEntry:
    """Store `value` as secret `name` (replacing one only when asked)."""
    check_secret_name(name)
    value = check_value(value)
    store = keystore or open_keystore(paths)
    keys = AuditKeys.of(store)
    entry = SecretEntry(name, now)
    with exclusive_lock(paths.config_lock), Ledger(paths) as ledger:
        with state.change(paths, keys, ledger, now=now) as step:
            before = step.config()
            if name in before.secrets and not replace:
                raise PolicyError(
                    f"a secret named {name!r} already exists",
                    f"replace its value with: nhidel secret add {name} --replace",
                )
            config = with_secret(before, entry)
            # The record first, then the value, then config.toml: a crash before config.toml
            # is written leaves the name unlisted (the record void), never a listed name
            # without its value.
            step.write([event("secret.added", principal=config.principal, secret=name,
                              replaced=name in before.secrets,
                              config_sha256=state.config_digest(config))])  # fmt: skip
            store.write(keystore_entry(name), {"value": value})
            step.save_config(config)
    return entry


def remove_secret(
    paths: Paths, name: str, *, now: int, keystore: KeyStore | None = None
) -> SecretEntry:
    """Forget secret `name`; refused while a registration sends it somewhere."""
    check_secret_name(name)
    store = keystore or open_keystore(paths)
    keys = AuditKeys.of(store)
    with exclusive_lock(paths.config_lock), Ledger(paths) as ledger:
        with state.change(paths, keys, ledger, now=now) as step:
            before = step.config()
            entry = before.secrets.get(name)
            if entry is None:
                raise NotFoundError(
                    f"no secret named {name!r}", "see the stored secrets: nhidel secret list"
                )
            users = users_of(before, name)
            if users:
                raise PolicyError(
                    f"secret {name!r} is used by {', '.join(users)}",
                    "remove those registrations first (nhidel mcp remove / nhidel route remove)",
                )
            config = without_secret(before, name)
            step.write([event("secret.removed", principal=config.principal, secret=name,
                              config_sha256=state.config_digest(config))])  # fmt: skip
            step.save_config(config)
            store.write(keystore_entry(name), {})
    return entry


def list_secrets(paths: Paths) -> list[SecretInfo]:
    """The stored secrets by name (no keystore: names only, as config.toml lists them)."""
    config = load_config(paths)
    uses: dict[str, int] = {}
    if config.secrets and paths.ledger_file.exists():
        with Ledger.read_only(paths) as ledger:
            uses = ledger.secret_uses()
    return [
        SecretInfo(e.name, e.created_at, uses.get(e.name), tuple(users_of(config, e.name)))
        for e in sorted(config.secrets.values(), key=lambda e: e.name)
    ]


def users_of(config: Config, name: str) -> list[str]:
    """The registrations that inject secret `name`."""
    servers = [f"MCP server {s}" for s, reg in sorted(config.servers.items())
               if name in reg.secrets.values()]  # fmt: skip
    routes = [f"route {r}" for r, reg in sorted(config.routes.items()) if reg.secret == name]
    return servers + routes


def secret_values(keystore: KeyStore, names: Iterable[str]) -> dict[str, str]:
    """The values of secrets `names`, read now (a replaced value is seen at once). Names come
    from sealed registrations: a name the keystore does not hold is IntegrityError."""
    values = {}
    for name in names:
        entry = keystore.read(keystore_entry(name))
        value = entry.get("value") if entry else None
        if not isinstance(value, str) or not value:
            raise IntegrityError(
                f"the keystore holds no value for secret {name!r}, which a registration names",
                f"store it again: nhidel secret add {name} --replace",
            )
        values[name] = value
    return values


def note_used(paths: Paths, names: Iterable[str], *, now: int) -> None:
    """Best effort: remember when secrets were last injected (shown by `secret list`)."""
    names = list(names)
    if not names:
        return
    with Ledger(paths) as ledger, ledger.transaction():
        ledger.note_secret_use(names, now=now)
