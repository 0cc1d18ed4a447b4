"""Registering where secrets may go: MCP servers the gateway starts, and routes the broker
forwards to. Each change is a sealed state change (`mcp.added`, `mcp.removed`, `route.added`,
`route.removed`) and needs the keystore; reading them needs none."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from nhidel.audit import AuditKeys, event
from nhidel.config import Config, with_route, with_server, without_route, without_server
from nhidel.errors import NotFoundError, PolicyError, UsageError
from nhidel.fsutil import exclusive_lock
from nhidel.integrity import state
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.ledger.store import Ledger
from nhidel.models import check_agent_name
from nhidel.paths import Paths
from nhidel.registrations import (
    ARGUMENT_NAME,
    DEFAULT_FORMAT,
    DEFAULT_HEADER,
    TOOL_NAME,
    McpServer,
    Route,
    check_env_name,
    check_header_format,
    check_header_name,
    check_registered_name,
    check_route_name,
    check_route_url,
    check_secret_name,
)

MAX_CA_FILE = 1 << 20


def add_server(
    paths: Paths,
    name: str,
    command: Sequence[str],
    *,
    agents: Sequence[str] = (),
    secrets: Sequence[str] = (),
    resource_args: Sequence[str] = (),
    roots: Sequence[str] = (),
    env: Sequence[str] = (),
    now: int,
    keystore: KeyStore | None = None,
) -> McpServer:
    """Register MCP server `name`: the command the gateway starts (its executable resolved to
    an absolute path now, so a later PATH cannot swap it), and what goes into its environment."""
    check_registered_name(name, "MCP server")
    injected = _pairs(secrets, option="--secret", shape="NAME=ENV")
    variables: dict[str, str] = {}
    for secret, variable in injected:
        check_secret_name(secret)
        check_env_name(variable, option="--secret")
        if variable in variables:
            raise UsageError(f"--secret sets {variable} twice", "give each variable one secret")
        variables[variable] = secret
    plain = dict(_pairs(env, option="--env", shape="K=V", check_value=False))
    for variable in plain:
        check_env_name(variable, option="--env")
        if variable in variables:
            raise UsageError(
                f"{variable} is set by both --env and --secret", "give each variable one source"
            )
    server = McpServer(
        name=name,
        command=(_executable(command), *command[1:]),
        agents=tuple(dict.fromkeys(check_agent_name(a) for a in agents)),
        secrets=variables,
        resource_args=_resource_args(resource_args),
        roots=tuple(dict.fromkeys(_root(r) for r in roots)),
        env=plain,
        created_at=now,
    )

    def register(config: Config) -> Config:
        if name in config.servers:
            raise PolicyError(
                f"an MCP server named {name!r} is already registered",
                f"remove it first: nhidel mcp remove {name}",
            )
        _require_agents(config, server.agents)
        _require_secrets(config, variables.values())
        return with_server(config, server)

    _change(paths, keystore, now, register, lambda config: event(
        "mcp.added", principal=config.principal, server=name, agents=list(server.agents),
        command=os.path.basename(server.command[0]), config_sha256=state.config_digest(config),
    ))  # fmt: skip
    return server


def remove_server(
    paths: Paths, name: str, *, now: int, keystore: KeyStore | None = None
) -> McpServer:
    """Unregister MCP server `name`: a gateway started for it refuses its next message."""
    check_registered_name(name, "MCP server")
    removed: list[McpServer] = []

    def unregister(config: Config) -> Config:
        if name not in config.servers:
            raise NotFoundError(
                f"no MCP server named {name!r}", "see the registered servers: nhidel mcp list"
            )
        removed.append(config.servers[name])
        return without_server(config, name)

    _change(paths, keystore, now, unregister, lambda config: event(
        "mcp.removed", principal=config.principal, server=name,
        config_sha256=state.config_digest(config),
    ))  # fmt: skip
    return removed[0]


def add_route(
    paths: Paths,
    name: str,
    url: str,
    *,
    secret: str,
    header: str | None = None,
    format: str | None = None,
    ca_file: Path | None = None,
    url_vars: Sequence[str] = (),
    now: int,
    keystore: KeyStore | None = None,
) -> Route:
    """Register route `name`: requests to /NAME/... go to `url`'s host with `secret` injected."""
    check_route_name(name)
    route = Route(
        name=name,
        url=check_route_url(url).rstrip("/"),
        secret=check_secret_name(secret),
        header=check_header_name(header) if header is not None else DEFAULT_HEADER,
        format=check_header_format(format) if format is not None else DEFAULT_FORMAT,
        ca_pem=_read_ca(ca_file) if ca_file is not None else None,
        url_vars=tuple(dict.fromkeys(check_env_name(v, option="--url-var") for v in url_vars)),
        created_at=now,
    )

    def register(config: Config) -> Config:
        if name in config.routes:
            raise PolicyError(
                f"a route named {name!r} is already registered",
                f"remove it first: nhidel route remove {name}",
            )
        _require_secrets(config, [secret])
        return with_route(config, route)

    _change(paths, keystore, now, register, lambda config: event(
        "route.added", principal=config.principal, route=name, url=route.url,
        config_sha256=state.config_digest(config),
    ))  # fmt: skip
    return route


def remove_route(paths: Paths, name: str, *, now: int, keystore: KeyStore | None = None) -> Route:
    """Unregister route `name`: the broker refuses its next request (404)."""
    check_registered_name(name, "route")
    removed: list[Route] = []

    def unregister(config: Config) -> Config:
        if name not in config.routes:
            raise NotFoundError(f"no route named {name!r}", "see the routes: nhidel route list")
        removed.append(config.routes[name])
        return without_route(config, name)

    _change(paths, keystore, now, unregister, lambda config: event(
        "route.removed", principal=config.principal, route=name,
        config_sha256=state.config_digest(config),
    ))  # fmt: skip
    return removed[0]


def _change(
    paths: Paths,
    keystore: KeyStore | None,
    now: int,
    edit: Callable[[Config], Config],
    record: Callable[[Config], dict[str, object]],
) -> None:
    """One sealed change of config.toml: its record first, then the file (a crash between is
    finished by the next command: an addition counts once the file shows it, a removal
    counts anyway)."""
    keys = AuditKeys.of(keystore or open_keystore(paths))
    with exclusive_lock(paths.config_lock), Ledger(paths) as ledger:
        with state.change(paths, keys, ledger, now=now) as step:
            config = edit(step.config())
            step.write([record(config)])
            step.save_config(config)


def _pairs(
    values: Sequence[str], *, option: str, shape: str, check_value: bool = True
) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        left, sep, right = value.partition("=")
        if not sep or not left or (check_value and not right):
            raise UsageError(f"invalid {option} {value!r}", f"give it as {shape}")
        if "\x00" in right or "\n" in right:
            raise UsageError(f"invalid {option} {left}: a NUL or line break in its value", shape)
        pairs.append((left, right))
    return pairs


def _resource_args(values: Sequence[str]) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for tool, argument in _pairs(values, option="--resource-arg", shape="TOOL=ARG"):
        if not TOOL_NAME.fullmatch(tool) or not ARGUMENT_NAME.fullmatch(argument):
            raise UsageError(
                f"invalid --resource-arg {tool}={argument}",
                "name a tool and one of its arguments, e.g. --resource-arg read_file=path",
            )
        if argument not in found.setdefault(tool, []):
            found[tool].append(argument)
    return {tool: tuple(arguments) for tool, arguments in found.items()}


def _executable(command: Sequence[str]) -> str:
    """The command's executable as an absolute path, found now (as the shell would)."""
    if not command or not command[0]:
        raise UsageError("no command to register", "put it after --, e.g. -- npx -y my-server")
    program = command[0]
    found = shutil.which(program) if os.sep not in program else program
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise UsageError(
            f"{program!r} is not an executable file" + ("" if os.sep in program else " on PATH"),
            "give the server's command as you would run it, e.g. -- npx -y SERVER-PACKAGE",
        )
    return os.path.abspath(found)


def _root(path: str) -> str:
    if not path or not os.path.isabs(path) or "\x00" in path or "\n" in path:
        raise UsageError(f"invalid --root {path!r}", "give an absolute directory path")
    return os.path.normpath(path)


def _read_ca(path: Path) -> str:
    """The PEM certificates in `path`, checked; their contents are sealed, not the path."""
    from cryptography import x509

    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CA_FILE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read --ca-file {path}: {exc.strerror or exc}", "") from None
    try:
        if len(data) > MAX_CA_FILE:
            raise ValueError("too large")
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise UsageError(
            f"--ca-file {path} holds no PEM certificate", "give the CA's certificate in PEM form"
        ) from None
    from cryptography.hazmat.primitives.serialization import Encoding

    return "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certificates)


def _require_agents(config: Config, agents: Sequence[str]) -> None:
    for agent in agents:
        if agent not in config.agents:
            raise NotFoundError(
                f"no agent named {agent!r}",
                f"register it first: nhidel agent add {agent} --allow SERVER:TOOL",
            )


def _require_secrets(config: Config, names: Iterable[str]) -> None:
    for name in names:
        if name not in config.secrets:
            raise NotFoundError(
                f"no secret named {name!r}", f"store it first: nhidel secret add {name}"
            )
