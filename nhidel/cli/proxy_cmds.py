"""`nhidel proxy`: the HTTP broker, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nhidel.cli import common


def register(app: typer.Typer) -> None:
    app.command("proxy")(proxy)


def proxy(
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            help="Listen on TCP instead of the socket (port 0 picks one; loopback advised).",
        ),
    ] = None,
    socket_path: Annotated[
        Path | None,
        typer.Option(
            "--socket",
            metavar="PATH",
            help="The Unix socket to listen on (default: nhidel/proxy.sock in the runtime dir).",
        ),
    ] = None,
    aud: Annotated[
        str | None,
        typer.Option(
            "--aud", metavar="AUDIENCE", help="Accept only grants whose audience names AUDIENCE."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Log one JSON object per request on stderr.")
    ] = False,
    session_idle: Annotated[
        str,
        typer.Option(
            "--session-idle",
            metavar="DURATION",
            help="End an MCP session (and stop its server) after this long without a request.",
        ),
    ] = "30m",
    max_sessions: Annotated[
        int,
        typer.Option(
            "--max-sessions",
            metavar="N",
            min=1,
            help="Refuse (429) an MCP session past N open for one agent (default 32).",
        ),
    ] = 32,
    server_timeout: Annotated[
        str,
        typer.Option(
            "--server-timeout",
            metavar="DURATION",
            help="Answer 504 and stop a session's MCP server that has not answered initialize "
            "within it (default 30s).",
        ),
    ] = "30s",
    max_body: Annotated[
        str,
        typer.Option(
            "--max-body",
            metavar="SIZE",
            help="Refuse (413) a request body larger than SIZE, e.g. 10M, 1G (default 1G).",
        ),
    ] = "1G",
    upstream_timeout: Annotated[
        str,
        typer.Option(
            "--upstream-timeout",
            metavar="DURATION",
            help="Answer 504 when an upstream has not answered (headers) within it (default 60s).",
        ),
    ] = "60s",
    approval_hold: common.ApprovalHold = "45s",
    approval_timeout: common.ApprovalTimeout = "10m",
) -> None:
    """Run the HTTP broker: /ROUTE/PATH with a grant goes to the route's upstream with its secret.

    Every registered MCP server is served at /mcp/SERVER (MCP Streamable HTTP), each session
    with its own server, the grant checked on every request.

    Listens on a 0600 Unix socket in a 0700 directory ($XDG_RUNTIME_DIR/nhidel, else
    nhidel-UID in the temp dir), or on --listen. Prints where on stdout (a URL, or unix:PATH),
    then one line per request on stderr (never a query, header, body, token or secret). A
    changed sealed configuration is noticed on the next request. SIGTERM or Ctrl-C: stops
    accepting, gives requests in flight up to 10 seconds to finish (then cuts them), exits 0.
    """
    import asyncio
    import signal

    from nhidel.actions import daemon
    from nhidel.enforce import broker
    from nhidel.enforce.context import Enforcer
    from nhidel.errors import NhidelError, UsageError
    from nhidel.timefmt import parse_duration

    if listen is not None and socket_path is not None:
        raise UsageError("give --listen or --socket, not both", "the broker listens in one place")
    limits = broker.Limits(
        max_body=_size(max_body),
        upstream_timeout=parse_duration(upstream_timeout, what="--upstream-timeout"),
        session_idle=parse_duration(session_idle, what="--session-idle"),
        sessions_per_agent=max_sessions,
        server_timeout=parse_duration(server_timeout, what="--server-timeout"),
    )
    approvals = common.approval_settings(approval_hold, approval_timeout)
    where = common.paths()
    store = common.keystore(where)
    listener = _listener(listen, socket_path)
    log = _json_line if as_json else _text_line
    state: list[Path] = []  # the state file doctor reads, while requests are accepted

    def ready() -> None:
        try:
            state.append(daemon.record(where, listener.url))
        except (NhidelError, OSError) as exc:  # doctor's view only: the daemon serves anyway
            _say(f"warning: nhidel doctor will not see this daemon: {exc}")
        sys.stdout.write(listener.url + "\n")
        sys.stdout.flush()
        _say(f"nhidel proxy: listening on {listener.url}")

    async def main() -> None:
        stop = asyncio.Event()

        def stopping() -> None:
            if not stop.is_set():
                for path in state:
                    daemon.forget(path)
                _say(f"nhidel proxy: stopping; requests in flight get up to "
                     f"{limits.shutdown_grace:g}s to finish")  # fmt: skip
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stopping)
        await broker.serve(
            listener,
            lambda: Enforcer(where, store, approvals=approvals),
            aud=aud,
            log=log,
            limits=limits,
            ready=ready,
            stop=stop,
        )

    try:
        asyncio.run(main())
    finally:
        for path in state:
            daemon.forget(path)
    _say("nhidel proxy: stopped")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    """Bytes from `4096`, `512K`, `10M` or `1G` (powers of 1024)."""
    from nhidel.errors import UsageError

    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = raw.rstrip("KMG"), raw[len(raw.rstrip("KMG")) :]
    if not number.isdigit() or unit not in _UNITS or int(number) == 0:
        raise UsageError(f"invalid --max-body {text!r}", "give a size such as 10M or 1G")
    return int(number) * _UNITS[unit]


def _listener(listen: str | None, socket_path: Path | None) -> Any:
    from nhidel.enforce import broker
    from nhidel.errors import UsageError

    if listen is None:
        return broker.listen_unix(socket_path or _default_socket())
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"invalid --listen {listen!r}", "give HOST:PORT, e.g. 127.0.0.1:8787")
    if host not in ("127.0.0.1", "::1", "localhost"):
        _say(
            f"warning: listening on {host}, not loopback: anyone who can reach it and holds "
            "a grant can use your routes"
        )
    try:
        return broker.listen_tcp("127.0.0.1" if host == "localhost" else host, int(port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {listen}: {exc.strerror}", None) from None


def _default_socket() -> Path:
    """proxy.sock in the runtime dir (`paths.runtime_dir`): the directory 0700 and the
    user's, or refused."""
    from nhidel.fsutil import ensure_private_dir
    from nhidel.paths import runtime_dir

    return ensure_private_dir(runtime_dir()) / "proxy.sock"


def _say(line: str) -> None:
    import contextlib

    # A reader of the log that went away must not make requests fail: the audit log has them.
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _text_line(entry: dict[str, Any]) -> None:
    from nhidel.cli.render import safe

    grant = f" grant={entry['grant']}" if entry["grant"] else ""
    agent = f" agent={safe(entry['agent'])}" if entry["agent"] else ""
    reason = f" reason={entry['reason']}" if entry["reason"] else ""
    path = safe(f"/{entry['route']}{entry['path']}" if entry["route"] else entry["path"])
    _say(
        f"{entry['time']} {entry['decision']} {entry['status']} {safe(entry['method'])} "
        f"{path} {entry['bytes']}B {entry['duration_ms']}ms{agent}{grant}{reason}"
    )


def _json_line(entry: dict[str, Any]) -> None:
    import json

    _say(json.dumps(entry, ensure_ascii=True))
