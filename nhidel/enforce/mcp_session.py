"""`nhidel mcp run`: everything around one gateway session, before and after the relay.

Before: the sealed configuration checked, the registration found and admitting the agent, the
grant (minted for this session with `--scope`, revoked when it ends however it ends; or the
one in NHIDEL_TOKEN), this process made undumpable, the secrets read, the server's
environment built. After: the grant revoked, the decisions written.

The minted grant is bound to this process's life (nhidel.enforce.bound, as `exec`'s): revoked
when the session ends, and by the next nhidel command should the gateway be killed first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from nhidel.actions.approvals import Settings
from nhidel.actions.grants import GrantRequest
from nhidel.config import Config
from nhidel.enforce.bound import bound_grant
from nhidel.enforce.context import Enforcer
from nhidel.enforce.mcp_gateway import Ending, Gateway, LineClient, serve, server_environment
from nhidel.enforce.redact import Redactor
from nhidel.errors import NhidelError, NotFoundError, PolicyError, UsageError
from nhidel.keys.keystore import KeyStore
from nhidel.paths import Paths
from nhidel.registrations import McpServer
from nhidel.scopes import parse_scope_arguments

TOKEN_VARIABLE = "NHIDEL_TOKEN"  # noqa: S105 - the name of a variable
REVOKE_REASON = "mcp run ended"


class GatewayError(NhidelError):
    """The server could not start, or exited on its own while the client was still there."""


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """The grant a session runs on: its token, id when known, and whether it was minted here
    (then it is revoked when the session ends)."""

    token: str
    grant_id: str | None
    minted: bool


def registered_server(config: Config, name: str, agent: str) -> McpServer:
    """The registration of `name`, admitting `agent`; NotFoundError with the line to run."""
    server = config.servers.get(name)
    if server is None:
        raise NotFoundError(
            f"no MCP server named {name!r} is registered",
            f"register it first: nhidel mcp add {name} [--secret NAME=ENV] "
            "[--resource-arg TOOL=ARG] [--root PATH] -- CMD [ARGS]...",
        )
    if not server.admits(agent):
        raise PolicyError(
            f"MCP server {name} is registered for {', '.join(server.agents)}, not {agent}",
            f"register it again with --agent {agent}, or run it for one of those agents",
        )
    return server


def check_request(
    config: Config, name: str, agent: str, scopes: Sequence[str], ttl: str | None
) -> McpServer:
    """What `mcp run` would refuse before starting anything, without the keystore: the
    registration, the agent it admits, scopes of this server within the agent's ceiling, the
    TTL within its maximum (`mcp config` asks this before printing an entry)."""
    from nhidel.scopes import not_covered
    from nhidel.timefmt import format_duration, parse_duration

    server = registered_server(config, name, agent)
    ceiling = config.agent(agent)
    if ttl is not None and not scopes:
        raise UsageError("--ttl is for a grant minted with --scope", "add --scope SERVER:TOOL")
    parsed = parse_scope_arguments(scopes)
    for scope in parsed:
        if scope.service != server.name:
            raise UsageError(
                f"--scope {scope} is not for MCP server {server.name}",
                f"give scopes of this server, e.g. --scope {server.name}:TOOL",
            )
    beyond = not_covered(ceiling.allow, parsed)
    if beyond:
        raise PolicyError(
            f"--scope {beyond[0]} is beyond agent {agent}'s ceiling",
            f"widen it first: nhidel agent update {agent} --allow {beyond[0]}",
        )
    if ttl is not None and parse_duration(ttl, what="--ttl") > ceiling.max_ttl:
        raise PolicyError(
            f"--ttl {ttl} is over agent {agent}'s maximum of {format_duration(ceiling.max_ttl)}",
            f"ask for --ttl {format_duration(ceiling.max_ttl)} or less",
        )
    return server


def given_token(environ: Mapping[str, str]) -> SessionGrant:
    token = (environ.get(TOKEN_VARIABLE) or "").strip()
    if not token:
        raise UsageError(
            "mcp run needs a grant: --scope to mint one for this session, or NHIDEL_TOKEN",
            "e.g. nhidel mcp run SERVER --agent AGENT --scope SERVER:TOOL",
        )
    return SessionGrant(token, None, minted=False)


def run_session(
    paths: Paths,
    keystore: KeyStore,
    name: str,
    *,
    agent: str,
    scopes: Sequence[str],
    ttl: str | None,
    client_in: IO[bytes],
    client_out: IO[bytes],
    log: IO[str],
    approvals: Settings = Settings(),  # noqa: B008 - frozen: one shared default is safe
) -> Ending:
    """Run one gateway session for `agent` in front of registered server `name` (`approvals`:
    the Enforcer's approval hold and timeout)."""
    from nhidel.hardening import protect_secrets_in_memory, take_from_environment

    protect_secrets_in_memory()
    environ = dict(os.environ)
    take_from_environment(TOKEN_VARIABLE)  # never passed on, nor readable in /proc later
    with Enforcer(paths, keystore, approvals=approvals) as enforcer:
        server = check_request(enforcer.config(), name, agent, scopes, ttl)
        if not scopes:
            return _serve(enforcer, server, given_token(environ), agent, environ, client_in,
                          client_out, log)  # fmt: skip
    request = GrantRequest(agent, scopes, ttl=ttl, reason=f"nhidel mcp run {name}")
    # The grant outlives the enforcer: its decisions are written before it is revoked.
    with bound_grant(paths, keystore, request, clock=lambda: int(time.time()),
                     reason=REVOKE_REASON) as bound:  # fmt: skip
        minted = SessionGrant(bound.token, bound.grant.id, minted=True)
        with Enforcer(paths, keystore, approvals=approvals) as enforcer:
            # (Checked again: the registration may have changed while the grant was minted.)
            server = check_request(enforcer.config(), name, agent, scopes, ttl)
            ending = _serve(enforcer, server, minted, agent, environ, client_in, client_out, log)
    return ending


def _renew_hint(grant: SessionGrant, grant_id: str) -> str:
    if grant.minted:
        return "restart this MCP server in the client: nhidel mcp run mints a new grant"
    return f"ask the human for a new grant (nhidel grant --like {grant_id}) and restart"


def _serve(
    enforcer: Enforcer,
    server: McpServer,
    grant: SessionGrant,
    agent: str,
    environ: Mapping[str, str],
    client_in: IO[bytes],
    client_out: IO[bytes],
    log: IO[str],
) -> Ending:
    first = enforcer.verifier.check(grant.token, any_scope=True)
    if not first.allowed or first.grant is None:
        raise PolicyError(
            f"the grant in NHIDEL_TOKEN is not usable: {first.detail}",
            "ask for a new grant (nhidel grant AGENT --scope SERVER:TOOL) or use --scope",
        )
    if first.grant.agent != agent:
        raise PolicyError(
            f"the grant in NHIDEL_TOKEN is for agent {first.grant.agent}, not {agent}",
            f"run with --agent {first.grant.agent}, or use a grant for {agent}",
        )
    secrets = enforcer.secrets(server.secrets.values())
    gateway = Gateway(
        enforcer,
        server,
        agent=agent,
        token=grant.token,
        renew_hint=_renew_hint(grant, first.grant.id),
        redactor=Redactor({n: secrets[n] for n in server.secrets.values()}),
        environment=server_environment(server, secrets, environ),
        client=LineClient(client_out),
        log=log,
    )
    gateway.grant_id = first.grant.id
    try:
        return serve(gateway, client_in)
    except OSError as exc:
        raise GatewayError(
            f"MCP server {server.name} could not be started ({server.command[0]}): "
            f"{exc.strerror or exc}",
            f"register it again: nhidel mcp remove {server.name}, then nhidel mcp add "
            f"{server.name} -- CMD [ARGS]...",
        ) from None
