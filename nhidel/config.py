"""config.toml: the principal, its public keys, the agents and the settings.

config.toml is read with tomllib and written with tomli-w by atomic replace under a lock, so
concurrent `agent add`s never lose each other. Nothing in it is trusted for verification: the
keys verify accepts are pinned in the keystore (see keystore.py).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nhidel.errors import IntegrityError, NotFoundError, StorageError, UsageError
from nhidel.fsutil import atomic_write, read_private_file
from nhidel.models import Agent, check_agent_name
from nhidel.paths import Paths
from nhidel.registrations import (
    McpServer,
    Route,
    SecretEntry,
    http_url_parts,
    route_from_toml,
    route_to_toml,
    secret_entry_from_toml,
    server_from_toml,
    server_to_toml,
)
from nhidel.scopes import parse_scopes
from nhidel.timefmt import format_duration, parse_duration, parse_time, rfc3339

CONFIG_VERSION = 1


@dataclass(frozen=True, slots=True)
class Config:
    principal: str | None = None
    issuer: str | None = None
    # kid -> {"x": base64url public key, "created_at": RFC 3339}; informational only.
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)
    # Where the signed token status list is published; grants carry it in their `status` claim.
    status_uri: str | None = None
    # Where revoke and key rotate republish jwks.json and status.jwt by themselves, if set.
    status_dir: str | None = None
    # Where secrets may go (nhidel.registrations): names of upstream secrets, MCP servers, routes.
    secrets: dict[str, SecretEntry] = field(default_factory=dict)
    servers: dict[str, McpServer] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)

    def agent(self, name: str) -> Agent:
        try:
            return self.agents[name]
        except KeyError:
            raise NotFoundError(
                f"no agent named {name!r}",
                f"register it first: nhidel agent add {name} --allow SERVICE:ACTION[:RESOURCE]",
            ) from None


def unknown_agent(name: str) -> NotFoundError:
    """The error for a name no registered agent has, when it is no agent to create (showing,
    changing, removing or revoking): the hint lists the agents rather than suggesting to add."""
    return NotFoundError(f"no agent named {name!r}", "see the registered agents: nhidel agent list")


def load_config(paths: Paths) -> Config:
    """Read config.toml; a missing file is an empty config, a corrupt one is exit 5."""
    try:
        raw = read_private_file(paths.config_file)
        if raw is None:
            return Config()
    except IsADirectoryError:
        raise IntegrityError(
            f"{paths.config_file} is a directory, not nhidel's configuration file",
            "rename or remove that directory, then restore config.toml from a backup",
        ) from None
    except OSError as exc:
        raise StorageError(
            f"could not read {paths.config_file}: {exc.strerror or exc}",
            "check that file's permissions (it should be yours, mode 0600)",
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
        return _from_toml(data)
    # A file of the wrong shape fails in many ways while being read; each means "corrupt".
    except (
        tomllib.TOMLDecodeError,
        UnicodeDecodeError,
        AttributeError,
        KeyError,
        TypeError,
        ValueError,
        UsageError,
    ) as exc:
        raise IntegrityError(
            f"{paths.config_file} is corrupt: {exc}",
            "fix the file by hand or restore it from a backup",
        ) from None


def save_config(paths: Paths, config: Config) -> None:
    import tomli_w

    atomic_write(paths.config_file, tomli_w.dumps(_to_toml(config)).encode("utf-8"))


def with_agent(config: Config, agent: Agent) -> Config:
    return replace(config, agents={**config.agents, agent.name: agent})


def without_agent(config: Config, name: str) -> Config:
    return replace(config, agents={k: v for k, v in config.agents.items() if k != name})


def with_secret(config: Config, entry: SecretEntry) -> Config:
    return replace(config, secrets={**config.secrets, entry.name: entry})


def without_secret(config: Config, name: str) -> Config:
    return replace(config, secrets={k: v for k, v in config.secrets.items() if k != name})


def with_server(config: Config, server: McpServer) -> Config:
    return replace(config, servers={**config.servers, server.name: server})


def without_server(config: Config, name: str) -> Config:
    return replace(config, servers={k: v for k, v in config.servers.items() if k != name})


def with_route(config: Config, route: Route) -> Config:
    return replace(config, routes={**config.routes, route.name: route})


def without_route(config: Config, name: str) -> Config:
    return replace(config, routes={k: v for k, v in config.routes.items() if k != name})


def _from_toml(data: dict[str, Any]) -> Config:
    if data.get("version", CONFIG_VERSION) > CONFIG_VERSION:
        raise ValueError(f"version {data['version']} is newer than this nhidel understands")
    agents = {}
    for name, spec in data.get("agents", {}).items():
        agents[name] = Agent(
            name=check_agent_name(name),
            allow=parse_scopes(spec["allow"]),
            max_ttl=parse_duration(spec["max_ttl"]),
            default_ttl=parse_duration(spec["default_ttl"]),
            audiences=tuple(spec.get("aud", ())),
            created_at=parse_time(spec["created_at"], now=0) if "created_at" in spec else 0,
            approve=parse_scopes(spec.get("approve", [])),
        )
    return Config(
        principal=data.get("principal"),
        issuer=data.get("issuer"),
        keys={kid: dict(info) for kid, info in data.get("keys", {}).items()},
        agents=agents,
        status_uri=check_status_uri(data["status_uri"]) if "status_uri" in data else None,
        status_dir=check_status_dir(data["status_dir"]) if "status_dir" in data else None,
        secrets={n: secret_entry_from_toml(n, s) for n, s in data.get("secrets", {}).items()},
        servers={n: server_from_toml(n, s) for n, s in data.get("mcp", {}).items()},
        routes={n: route_from_toml(n, s) for n, s in data.get("routes", {}).items()},
    )


def check_status_dir(directory: str) -> str:
    """An absolute directory path of printable characters (it need not exist yet)."""
    if (
        not isinstance(directory, str)
        or not 0 < len(directory) <= 4096
        or not directory.isprintable()
        or not Path(directory).is_absolute()
    ):
        raise UsageError(
            f"invalid status directory {directory!r}",
            "give the absolute path of the directory your web server serves, e.g. /var/www/nhidel",
        )
    return directory


def check_status_uri(uri: str) -> str:
    """A status list URI: https (http only for localhost), no whitespace, at most 2048 chars."""

    def bad(why: str) -> UsageError:
        return UsageError(
            f"invalid status URI {uri!r}: {why}",
            "give the https URL the status list will be served from, "
            "e.g. https://example.com/nhidel/status.jwt",
        )

    if http_url_parts(uri, bad).fragment:
        raise bad("it has a #fragment")
    return uri


def _to_toml(config: Config) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": CONFIG_VERSION}
    if config.principal is not None:
        doc["principal"] = config.principal
    if config.issuer is not None:
        doc["issuer"] = config.issuer
    if config.status_uri is not None:
        doc["status_uri"] = config.status_uri
    if config.status_dir is not None:
        doc["status_dir"] = config.status_dir
    doc["keys"] = config.keys
    doc["agents"] = {
        agent.name: {
            "allow": [str(scope) for scope in agent.allow],
            "max_ttl": format_duration(agent.max_ttl),
            "default_ttl": format_duration(agent.default_ttl),
            "aud": list(agent.audiences),
            "created_at": rfc3339(agent.created_at),
            **({"approve": [str(s) for s in agent.approve]} if agent.approve else {}),
        }
        for agent in config.agents.values()
    }
    # Written only when present, so a config.toml without them reads (and seals) as before.
    if config.secrets:
        doc["secrets"] = {n: {"created_at": rfc3339(e.created_at)}
                          for n, e in config.secrets.items()}  # fmt: skip
    if config.servers:
        doc["mcp"] = {n: server_to_toml(s) for n, s in config.servers.items()}
    if config.routes:
        doc["routes"] = {n: route_to_toml(r) for n, r in config.routes.items()}
    return doc
