"""A real HTTPS upstream for the broker's tests: aiohttp on 127.0.0.1 with a certificate from
its own throwaway CA, on its own thread, recording every request it receives (method, path,
query, headers, body size) so a test can assert what reached it, or that nothing did.

Paths under /v1 (the routes' prefix):
- `echo`: the request as JSON, and the injected header's value echoed back in the body (plain,
  base64 and percent-encoded), in a response header's value and name, and in the status
  line's reason, as a careless upstream would;
- `sse`: an event stream, one event every 50 ms until the client goes;
- `quiet`: an event stream with one event, then silence;
- `redirect`: 302 to another host;
- `slow`: answers after 3 seconds;
- `upload`: reads the body as it arrives, answers its size and SHA-256;
- `download?mb=N`: N MiB, streamed;
- `gzip`: the echo, gzip-encoded; `brotli`: a body marked `Content-Encoding: br`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from helpers.certificates import make_ca_and_server

SECRET_HEADER = "X-Api-Key"


@dataclass
class Upstream:
    port: int
    ca: Path
    received: list[dict[str, Any]] = field(default_factory=list)
    sse_closed: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"

    def paths(self) -> list[str]:
        return [r["path"] for r in self.received]


def _echo(request: web.Request) -> tuple[dict[str, Any], str]:
    secret = request.headers.get(SECRET_HEADER, "")
    body = {
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "echo": secret,
        "b64": base64.b64encode(secret.encode()).decode(),
        "pct": urllib.parse.quote(secret, safe=""),
    }
    return body, secret


def _app(upstream: Upstream) -> web.Application:
    async def record(request: web.Request) -> None:
        upstream.received.append(
            {
                "method": request.method,
                "path": request.raw_path.partition("?")[0],
                "query": request.raw_path.partition("?")[2],
                "headers": list(request.headers.items()),
            }
        )

    async def echo(request: web.Request) -> web.Response:
        await record(request)
        body, secret = _echo(request)
        return web.json_response(
            body, headers={"X-Echo": f"key={secret}", f"X-{secret}": "1"}, reason=f"OK {secret}"
        )

    async def sse(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        n = 0
        try:
            while True:
                await response.write(f"data: event {n}\n\n".encode())
                n += 1
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            upstream.sse_closed.set()
            raise
        return response

    async def quiet(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: the only event\n\n")
        await asyncio.sleep(30)  # then nothing, until the client goes
        return response

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=302, headers={"Location": "https://other.example/landing"})

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(3)
        return web.Response(text="late")

    async def upload(request: web.Request) -> web.Response:
        await record(request)
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def download(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse()
        await response.prepare(request)
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(int(request.query.get("mb", "1"))):
            await response.write(block)
        await response.write_eof()
        return response

    async def gzipped(request: web.Request) -> web.Response:
        await record(request)
        body, _ = _echo(request)
        return web.Response(
            body=gzip.compress(json.dumps(body).encode()),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def brotli(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=b"\x0b\x02\x80hello\x03", headers={"Content-Encoding": "br"})

    async def anything(request: web.Request) -> web.Response:
        await record(request)
        body, _ = _echo(request)
        return web.json_response(body)

    app = web.Application(client_max_size=1 << 34)
    app.router.add_route("*", "/v1/echo", echo)
    app.router.add_get("/v1/sse", sse)
    app.router.add_get("/v1/quiet", quiet)
    app.router.add_get("/v1/redirect", redirect)
    app.router.add_get("/v1/slow", slow)
    app.router.add_route("*", "/v1/upload", upload)
    app.router.add_get("/v1/download", download)
    app.router.add_get("/v1/gzip", gzipped)
    app.router.add_get("/v1/brotli", brotli)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


@contextlib.contextmanager
def https_upstream(directory: Path, *, ca_name: str = "upstream test CA") -> Iterator[Upstream]:
    """An HTTPS upstream on 127.0.0.1 (a free port), its CA's PEM in `directory`."""
    ca, cert, key = make_ca_and_server(directory, name=ca_name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    upstream = Upstream(0, ca)
    with serving(_app(upstream), context) as port:
        upstream.port = port
        yield upstream


@contextlib.contextmanager
def serving(app: web.Application, context: ssl.SSLContext | None) -> Iterator[int]:
    """Run `app` on 127.0.0.1 on its own thread and loop; yields the port."""
    loop = asyncio.new_event_loop()
    # handler_cancellation: a handler whose client went away (the broker cut it) ends at once.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def curl() -> str:
    """curl's path; a skip if it is missing, a failure where tests/run.sh installs it for CI
    (NHIDEL_REQUIRE_SHELLS=1)."""
    found = shutil.which("curl")
    if found is None:
        reason = "curl is not installed (tests/run.sh installs it: apt-get install curl)"
        if os.environ.get("NHIDEL_REQUIRE_SHELLS") == "1":
            pytest.fail(f"{reason}; NHIDEL_REQUIRE_SHELLS=1 forbids skipping")
        pytest.skip(reason)
    return found
