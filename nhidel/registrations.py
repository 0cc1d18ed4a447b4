"""Where secrets may go: upstream secrets by name, MCP server registrations and HTTP routes.

These are the sealed registrations of SPEC.md's "Sealed configuration": each lives in
config.toml, is sealed with the agents' ceilings (nhidel.integrity.state.config_digest), and is
read by the enforcement points (nhidel.enforce) to decide which program is started with which
secret in which variable, and which upstream a request and its secret are sent to. Only names
of secrets are here; their values stay in the keystore.

A server or route name is the first part of the scopes that reach it (`SERVER:TOOL[:RESOURCE]`,
`ROUTE:METHOD:PATH`), so it follows the scope grammar's service names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nhidel.errors import UsageError
from nhidel.timefmt import rfc3339

if TYPE_CHECKING:
    from urllib.parse import SplitResult

REGISTERED_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # a scope's service, at most 64
SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
TOOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # a scope's action
ARGUMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")

# Variables the keystore's unlocking needs: a registration never hands them to a child.
KEYRING_VARIABLES = frozenset({
    "DBUS_SESSION_BUS_ADDRESS", "NHIDEL_PASSPHRASE", "NHIDEL_PASSPHRASE_FILE",
    "NHIDEL_KEYSTORE", "NHIDEL_HOME", "NHIDEL_TOKEN",
})  # fmt: skip

# Headers the broker owns (framing, the connection, where the request goes): never a route's.
RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
    "keep-alive", "proxy-authorization", "proxy-connection", "cookie",
})  # fmt: skip

# The daemon's own paths (`/mcp/SERVER`, `/healthz`, `/requests`): a route by one of these names
# would be shadowed by them, so `route add` refuses it and the broker never routes one that an
# older nhidel registered (doctor names it).
RESERVED_ROUTE_NAMES = frozenset({"mcp", "healthz", "requests"})

DEFAULT_HEADER = "Authorization"
DEFAULT_FORMAT = "Bearer {secret}"


@dataclass(frozen=True, slots=True)
class SecretEntry:
    """An upstream secret's name and when it was stored (its value is in the keystore)."""

    name: str
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": rfc3339(self.created_at)}


@dataclass(frozen=True, slots=True)
class McpServer:
    """An MCP server the gateway may start: its argv (the executable an absolute path), which
    agents may use it (none: any whose ceiling names it), which secret goes into which variable
    of its otherwise minimal environment, which arguments of a tool name resources, the roots
    it is told, and plain variables."""

    name: str
    command: tuple[str, ...]
    agents: tuple[str, ...] = ()
    secrets: Mapping[str, str] = field(default_factory=dict)  # variable -> secret name
    resource_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # tool -> args
    roots: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0

    def admits(self, agent: str) -> bool:
        return not self.agents or agent in self.agents

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": list(self.command),
            "agents": list(self.agents),
            "secrets": dict(sorted(self.secrets.items())),
            "resource_args": {t: list(a) for t, a in sorted(self.resource_args.items())},
            "roots": list(self.roots),
            "env": dict(sorted(self.env.items())),
            "created_at": rfc3339(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Route:
    """An upstream for the HTTP broker: requests to /NAME/PATH go to URL's scheme, host and port
    (and its path as a prefix), with the secret injected as `header: format`."""

    name: str
    url: str
    secret: str
    header: str = DEFAULT_HEADER
    format: str = DEFAULT_FORMAT
    ca_pem: str | None = None  # the only CA trusted for this upstream, when set
    url_vars: tuple[str, ...] = ()
    created_at: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "secret": self.secret,
            "header": self.header,
            "format": self.format,
            "ca": self.ca_pem is not None,
            "url_vars": list(self.url_vars),
            "created_at": rfc3339(self.created_at),
        }

    def sealed_json(self) -> dict[str, Any]:
        """What the seal covers: everything, the CA's contents included."""
        return {**self.to_json(), "ca": self.ca_pem}


def check_registered_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not REGISTERED_NAME.fullmatch(name):
        raise UsageError(
            f"invalid {what} name {name!r}",
            "use 1-64 characters: lowercase letters, digits, '_', '.', '-', starting with a "
            "letter or digit (it is the first part of the scopes that reach it)",
        )
    return name


def check_route_name(name: str) -> str:
    """A name `route add` accepts: a registered name, and not one of the daemon's paths."""
    check_registered_name(name, "route")
    if name in RESERVED_ROUTE_NAMES:
        raise UsageError(
            f"the route name {name!r} is reserved: nhidel proxy answers /{name} itself",
            f"choose another name (reserved: {', '.join(sorted(RESERVED_ROUTE_NAMES))})",
        )
    return name


def check_secret_name(name: str) -> str:
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        raise UsageError(
            f"invalid secret name {name!r}",
            "use 1-64 characters: letters, digits, '_', '.', '-', starting with a letter or "
            "digit, e.g. github-token",
        )
    return name


def check_env_name(name: str, *, option: str) -> str:
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        raise UsageError(
            f"invalid variable name {name!r} in {option}",
            "use letters, digits and '_', not starting with a digit, e.g. GITHUB_TOKEN",
        )
    if name in KEYRING_VARIABLES:
        raise UsageError(
            f"{option} may not set {name}: it unlocks nhidel's keystore or carries a grant",
            "nhidel never hands a child the keyring's address, a passphrase or a token this way",
        )
    return name


def check_header_name(name: str) -> str:
    if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
        raise UsageError(
            f"invalid header name {name!r}", "e.g. --header Authorization or --header X-Api-Key"
        )
    if name.lower() in RESERVED_HEADERS:
        raise UsageError(
            f"--header {name} is a header the broker owns", "name the header the API reads"
        )
    return name


def check_header_format(text: str) -> str:
    if (
        not isinstance(text, str)
        or text.count("{secret}") != 1
        or len(text) > 256
        or not all(ch.isprintable() for ch in text)
    ):
        raise UsageError(
            f"invalid --format {text!r}",
            "give the header's value with {secret} where the secret goes once, "
            "e.g. 'Bearer {secret}' or 'token {secret}'",
        )
    return text


def http_url_parts(url: str, bad: Callable[[str], UsageError]) -> SplitResult:
    """An https URL's parts (http only for loopback hosts): 1-2048 printable characters with
    no whitespace, a host and a well-formed port; `bad(why)` is the error to raise otherwise."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not 0 < len(url) <= 2048:
        raise bad("it must be 1-2048 characters")
    if not all(ch.isprintable() and not ch.isspace() for ch in url):
        raise bad("it has whitespace or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise bad(str(exc)) from None
    if not host:
        raise bad("it names no host")
    if parts.scheme == "http" and host not in ("localhost", "127.0.0.1", "::1"):
        raise bad("plain http is allowed only for localhost")
    if parts.scheme not in ("https", "http"):
        raise bad("it must be an https URL")
    return parts


def check_route_url(url: str) -> str:
    """An https URL (http only on loopback) with a host, no userinfo, query or fragment."""

    def bad(why: str) -> UsageError:
        return UsageError(
            f"invalid route URL {url!r}: {why}",
            "give the upstream's https base URL, e.g. https://api.github.com",
        )

    parts = http_url_parts(url, bad)
    if "@" in parts.netloc:
        raise bad("it has a user name or password (put credentials in a secret)")
    if parts.query or parts.fragment or url.endswith("?") or "#" in url:
        raise bad("it has a query or #fragment")
    if any(seg in (".", "..") or "%" in seg for seg in parts.path.split("/")):
        raise bad("its path has a '.', '..' or encoded segment")
    return url


def secret_entry_from_toml(name: str, spec: Mapping[str, Any]) -> SecretEntry:
    from nhidel.timefmt import parse_time

    return SecretEntry(check_secret_name(name), parse_time(spec["created_at"], now=0))


def server_from_toml(name: str, spec: Mapping[str, Any]) -> McpServer:
    from nhidel.timefmt import parse_time

    return McpServer(
        name=check_registered_name(name, "MCP server"),
        command=tuple(_strings(spec["command"])),
        agents=tuple(_strings(spec.get("agents", []))),
        secrets={str(k): str(v) for k, v in spec.get("secrets", {}).items()},
        resource_args={
            str(k): tuple(_strings(v)) for k, v in spec.get("resource_args", {}).items()
        },
        roots=tuple(_strings(spec.get("roots", []))),
        env={str(k): str(v) for k, v in spec.get("env", {}).items()},
        created_at=parse_time(spec["created_at"], now=0),
    )


def route_from_toml(name: str, spec: Mapping[str, Any]) -> Route:
    from nhidel.timefmt import parse_time

    ca = spec.get("ca_pem")
    return Route(
        name=check_registered_name(name, "route"),
        url=str(spec["url"]),
        secret=str(spec["secret"]),
        header=str(spec.get("header", DEFAULT_HEADER)),
        format=str(spec.get("format", DEFAULT_FORMAT)),
        ca_pem=str(ca) if ca is not None else None,
        url_vars=tuple(_strings(spec.get("url_vars", []))),
        created_at=parse_time(spec["created_at"], now=0),
    )


def server_to_toml(server: McpServer) -> dict[str, Any]:
    spec = server.to_json()
    del spec["name"]
    return spec


def route_to_toml(route: Route) -> dict[str, Any]:
    spec = route.to_json()
    del spec["name"], spec["ca"]
    if route.ca_pem is not None:
        spec["ca_pem"] = route.ca_pem
    return spec


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return value
