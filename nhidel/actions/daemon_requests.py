"""`nhidel request` through the daemon: `POST /requests` with a grant of the agent, then
`GET /requests/ID?wait=S` long polls until the request is answered.

The client side only: it reads no nhidel file and opens no keystore (the daemon checks the
grant, seals the request, and checks the answer's seal before handing back its box). Plain
`http.client` over the daemon's Unix socket or a loopback address, so a requester in a
sandbox needs nothing but the socket and its grant.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from nhidel.actions.grant_requests import Asked, Outcome
from nhidel.errors import NhidelError, PolicyError, UsageError

POLL = 30  # seconds one GET waits for an answer (the daemon caps it)
CONNECT_TIMEOUT = 10.0
MAX_ANSWER = 64 * 1024


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection(address: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to `unix:PATH` (or a path) or `http://HOST:PORT`."""
    if address.startswith("http://"):
        parts = urlsplit(address)
        if parts.hostname is None:
            raise UsageError(f"invalid daemon address {address!r}", "e.g. unix:/run/nhidel.sock")
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    return _UnixConnection(address.removeprefix("unix:"), timeout)


def _exchange(
    address: str, method: str, path: str, token: str, body: dict[str, Any] | None, timeout: float
) -> tuple[int, dict[str, Any]]:
    connection = _connection(address, timeout)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        text = response.read(MAX_ANSWER + 1)
    except OSError as exc:
        raise NhidelError(
            f"could not reach the daemon at {address}: {exc.strerror or exc}",
            "start nhidel proxy, or give its address with --daemon (or --via files)",
        ) from None
    finally:
        connection.close()
    try:
        answer = json.loads(text) if len(text) <= MAX_ANSWER else {}
    except ValueError:
        answer = {}
    return response.status, answer if isinstance(answer, dict) else {}


def send(address: str, token: str, request: Asked, *, lapse: int) -> dict[str, Any]:
    """File `request` with the daemon; its answer (`id`, `fingerprint`, `lapses_at`)."""
    status, answer = _exchange(address, "POST", "/requests", token,
                               {**request.to_json(), "lapse": lapse}, CONNECT_TIMEOUT)  # fmt: skip
    if status != 201 or not isinstance(answer.get("id"), str):
        raise _refused(status, answer)
    return answer


def poll(address: str, token: str, approval_id: str, *, wait: int) -> Outcome:
    """Where the request stands, after waiting up to `wait` seconds for an answer."""
    wait = max(0, min(wait, POLL))
    status, answer = _exchange(address, "GET", f"/requests/{approval_id}?wait={wait}", token,
                               None, CONNECT_TIMEOUT + wait)  # fmt: skip
    if status != 200 or not isinstance(answer.get("status"), str):
        raise _refused(status, answer)
    reason, box = answer.get("reason"), answer.get("box")
    return Outcome(str(answer["status"]), reason if isinstance(reason, str) else None,
                   box if isinstance(box, str) else None)  # fmt: skip


def _refused(status: int, answer: dict[str, Any]) -> NhidelError:
    reason = str(answer.get("error") or "no_answer")
    detail = answer.get("detail")
    said = f"the daemon refused the request: {status} {reason}" + (
        f" ({detail})" if isinstance(detail, str) else ""
    )
    if status in (401, 403):
        return PolicyError(said, "NHIDEL_TOKEN must hold a valid grant of the agent you ask for")
    if status == 400:
        return UsageError(said, "see nhidel request --help")
    return NhidelError(said, "see the daemon's log")
