"""The HTTP broker's cost: added latency, requests per second, CPU per request.

    python3 benchmarks/bench_broker.py [--requests 3000] [--seconds 5] [--clients 8] [--tls]
                                       [--json OUT]

Three processes on 127.0.0.1: an upstream (aiohttp, a 40-byte JSON answer; plain HTTP so the
figures are the broker's and not TLS's, or with `--tls` HTTPS with its own CA, the route
registered with `--ca-file`, and the direct client speaking TLS too), `nhidel proxy --listen
127.0.0.1:0` with a route to it (file keystore in a temp NHIDEL_HOME, decision records
group-committed as in use), and this script as the client, which speaks HTTP/1.1 over raw
sockets with keep-alive so its own cost stays out of the latency figures.

Rows:
- direct_p50_ms / direct_p99_ms: one request at a time, straight to the upstream
- broker_p50_ms / broker_p99_ms: the same through the broker (grant checked, secret injected,
  answer redacted, record and log line written)
- added_p50_ms / added_p99_ms: the difference
- broker_rps: requests per second through one broker, `--clients` connections at once for
  `--seconds` (the client and the upstream share the machine's cores with it: a floor)
- broker_cpu_ms_per_request: the broker process's CPU time (user + system, /proc/PID/stat)
  during the throughput run, divided by the requests it answered
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from measure import PYTHON, isolated_env, nhidel_command, run_nhidel

PASSPHRASE = "bench-passphrase"  # noqa: S105 - a throwaway keystore in a temp dir
SECRET = "bench-upstream-secret-0123456789"  # noqa: S105 - sent to the bench's own upstream

UPSTREAM = """
import ssl, sys
from aiohttp import web

async def ping(request):
    return web.json_response({"ok": True, "path": request.path})

app = web.Application()
app.router.add_get("/v1/ping", ping)
context = None
if len(sys.argv) > 2:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            ssl_context=context)
"""


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate it signs for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - day).not_valid_after(now + day)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day).not_valid_after(now + day)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


class Connection:
    """One kept-alive HTTP/1.1 connection: send a request, read the answer whole."""

    def __init__(self, port: int, ca: Path | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ca is not None:
            import ssl

            context = ssl.create_default_context(cafile=str(ca))
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock
        self.buffer = b""

    def get(self, request: bytes) -> int:
        self.sock.sendall(request)
        head = self._until(b"\r\n\r\n")
        status = int(head[9:12])
        lowered = head.lower()
        if b"transfer-encoding: chunked" in lowered:
            while True:
                size = int(self._until(b"\r\n"), 16)
                self._take(size + 2)
                if size == 0:
                    break
        else:
            length = lowered.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]
            self._take(int(length))
        return status

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(marker)
        return line

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.buffer += chunk


def latencies(port: int, request: bytes, count: int, ca: Path | None = None) -> list[float]:
    conn = Connection(port, ca)
    for _ in range(200):  # warm-up: connections, caches
        conn.get(request)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        status = conn.get(request)
        times.append(time.perf_counter() - started)
        if status != 200:
            sys.exit(f"status {status}")
    return times


async def throughput(port: int, request: bytes, clients: int, seconds: float) -> int:
    done = 0
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if b"chunked" in head.lower():
                while True:
                    size = int(await reader.readuntil(b"\r\n"), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            done += 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return done


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if q < 100 else max(values)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="sequential, per path")
    parser.add_argument("--seconds", type=float, default=5.0, help="of the throughput run")
    parser.add_argument("--clients", type=int, default=8, help="connections at once")
    parser.add_argument("--tls", action="store_true", help="HTTPS upstream with its own CA")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    nhidel, _ = nhidel_command()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as root:
        env = isolated_env(Path(root), NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE=PASSPHRASE)
        port = free_port()
        certificates = make_certificates(Path(root)) if args.tls else None
        tls_args = [str(p) for p in certificates[1:]] if certificates else []
        upstream = subprocess.Popen([PYTHON, "-c", UPSTREAM, str(port), *tls_args], env=env)
        ca = certificates[0] if certificates else None
        scheme = "https" if ca else "http"
        broker: subprocess.Popen[str] | None = None
        try:
            run_nhidel(nhidel, env, "init", "--principal", "bench")
            run_nhidel(
                nhidel, env, "agent", "add", "bot", "--allow", "api:get:*", "--max-ttl", "1h"
            )
            done = subprocess.run(
                [*nhidel, "secret", "add", "up"], env=env, input=SECRET + "\n",
                capture_output=True, text=True, check=True, timeout=120,
            )  # fmt: skip
            del done
            run_nhidel(
                nhidel, env, "route", "add", "api", f"{scheme}://127.0.0.1:{port}/v1",
                "--secret", "up", "--header", "X-Api-Key", "--format", "{secret}",
                *(["--ca-file", str(ca)] if ca else []),
            )  # fmt: skip
            token = run_nhidel(nhidel, env, "grant", "bot", "--scope", "api:get:*", "--ttl", "1h")
            broker = subprocess.Popen(
                [*nhidel, "proxy", "--listen", "127.0.0.1:0"], env=env, text=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert broker.stdout is not None
            broker_port = int(broker.stdout.readline().strip().rsplit(":", 1)[1])
            wait_listening(port)
            direct_request = b"GET /v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            broker_request = (
                f"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
            direct = latencies(port, direct_request, args.requests, ca)
            through = latencies(broker_port, broker_request, args.requests)
            for name, values in (("direct", direct), ("broker", through)):
                results[f"{name}_p50_ms"] = ms(values, 50)
                results[f"{name}_p99_ms"] = ms(values, 99)
            results["added_p50_ms"] = results["broker_p50_ms"] - results["direct_p50_ms"]
            results["added_p99_ms"] = results["broker_p99_ms"] - results["direct_p99_ms"]
            cpu_before = cpu_seconds(broker.pid)
            started = time.perf_counter()
            count = asyncio.run(throughput(broker_port, broker_request, args.clients, args.seconds))
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(broker.pid) - cpu_before
            results["broker_rps"] = count / elapsed
            results["broker_cpu_ms_per_request"] = cpu * 1000 / count
            results.update(requests=args.requests, clients=args.clients, seconds=elapsed,
                           tls=args.tls, load=os.getloadavg()[0])  # fmt: skip
        finally:
            for process in (broker, upstream):
                if process is not None:
                    process.terminate()
                    process.wait(30)
    for name, value in results.items():
        print(f"{name:28} {value:12,.3f}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
