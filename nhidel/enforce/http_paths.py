"""What the HTTP broker decides before it asks about a grant: is this request one it will
forward at all, which scope does it need, and which headers go on to the upstream and back;
SPEC's status table, which HTTP status answers which denial (`status_for`); and what an
approval knows of a request (`request_sha256`, `request_arguments`, `approval_retry_after`).

Pure functions over strings, no I/O, so every refusal is cheap to test. The broker checks a
request as `ROUTE:METHOD:PATH` on the path as the client sent it (still percent-encoded, as
scopes are written: `github:get:repos/acme/*`). Anything that could make the path read
differently upstream than it was checked here is refused (400) instead of normalised:
`.`/`..`/empty segments, an encoded slash, dot or backslash, a backslash, an encoded control
character (or one encoded twice), a malformed escape, a segment that is a dot or empty once
its `;parameters` are dropped, a userinfo-looking route, a request target that is not a plain
path. The upstream URL is then built from the route's own scheme, host, port and path prefix
plus this path: nothing the client sends can name another host.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nhidel.scopes import MAX_SCOPE_LENGTH
from nhidel.tokens.decision import Reason

# Route names as registrations.REGISTERED_NAME spells them (checked again at lookup).
_ROUTE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_ESCAPE = re.compile(r"%(.?.?)")
# Escapes that would let a segment read differently once the upstream decodes it: '/', '.',
# '\' and control characters (NUL, CR, LF, ...).
_REFUSED_ESCAPES = frozenset({"2F", "2E", "5C", "7F"} | {f"{n:02X}" for n in range(0x20)})

_ESCAPE_STARTS = frozenset("%0123456789abcdefABCDEF")
# The headers that carry a different method or path than the one checked (frameworks and
# rewrite modules honour them), compared with '_' read as '-' (CGI, WSGI and PHP read both
# spellings as one variable).
METHOD_OVERRIDE_HEADERS = frozenset({
    "x-http-method-override", "x-http-method", "x-method-override", "x-original-method",
    "x-original-url", "x-rewrite-url", "x-forwarded-prefix", "x-forwarded-host",
})  # fmt: skip
# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the broker itself for the upstream hop: Host (the upstream's), the body's framing,
# what encodings it can decode to scan the answer, and `Expect` (it streams the body anyway).
_SET_BY_BROKER = frozenset({"host", "authorization", "accept-encoding", "expect"})
# What the broker asks the upstream for: encodings it can undo to scan a body for secrets.
ACCEPT_ENCODING = "gzip, deflate"
DECODABLE_ENCODINGS = frozenset({"identity", "gzip", "deflate"})


class Refused(Exception):  # noqa: N818 - a verdict, not a crash
    """A request the broker will not forward (400); `reason` is the code in the JSON body."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Target:
    """A checked request target: the route, the path below it and the raw query."""

    route: str
    path: str  # below the route, without its leading '/', still percent-encoded; "" = root
    trailing_slash: bool  # `/ROUTE/` or `/ROUTE/a/`: kept on the way upstream
    query: str  # as sent, without the '?'; "" when none

    def scope(self, method: str) -> str:
        """The scope this request needs: `ROUTE:METHOD:PATH`, or `ROUTE:METHOD` at the root."""
        action = method.lower()
        if not self.path:
            return f"{self.route}:{action}"
        return f"{self.route}:{action}:{self.path}"


def parse_target(raw: str, method: str) -> Target:
    """The route, path and query of a request target as sent (`request.raw_path`); Refused
    when the broker will not forward it."""
    if method == "CONNECT" or not _METHOD.fullmatch(method):
        raise Refused("bad_method", f"the method {method[:32]!r} is not forwarded")
    if not raw.startswith("/") or raw.startswith("//"):
        # Absolute-form (`http://user@host/`) or authority-looking (`//other.host/`) targets.
        raise Refused("bad_path", "the request target must be a path, /ROUTE/PATH")
    path, _, query = raw.partition("?")
    if "#" in raw:
        raise Refused("bad_path", "a request target has no #fragment")
    if "\\" in path:
        raise Refused("bad_path", "a backslash in the path")
    if not path.isascii() or not path.isprintable() or " " in path:
        raise Refused("bad_path", "the path must be printable ASCII, percent-encoded")
    if not query.isascii() or not query.isprintable() or " " in query:
        raise Refused("bad_path", "the query must be printable ASCII, percent-encoded")
    _check_escapes(path)
    route, slash, rest = path[1:].partition("/")
    if not _ROUTE.fullmatch(route):
        # `/github@other.host/...` too: a route name never holds '@' or ':'.
        raise Refused("bad_path", "the path must start with a route name, /ROUTE/PATH")
    segments = rest.split("/") if rest else []
    trailing = bool(slash) and (not rest or rest.endswith("/"))
    if trailing and segments:
        segments.pop()  # one trailing '/' is a path of its own (`/repos/`), not an empty segment
    for segment in segments:
        # `..;x` too: servlet containers drop a segment's ;parameters, then resolve the dots.
        if segment.partition(";")[0] in ("", ".", ".."):
            raise Refused("bad_path", "a '.', '..' or empty segment in the path")
    below = "/".join(segments)
    if len(route) + len(below) + 34 > MAX_SCOPE_LENGTH:
        raise Refused("bad_path", "the path is too long to check")
    return Target(route, below, trailing, query)


def _check_escapes(path: str) -> None:
    for match in _ESCAPE.finditer(path):
        code = match.group(1).upper()
        if len(code) != 2 or not all(ch in "0123456789ABCDEF" for ch in code):
            raise Refused("bad_path", "a malformed %-escape in the path")
        if code in _REFUSED_ESCAPES:
            raise Refused("bad_path", "an encoded slash, dot, backslash or control character")
        if code == "25" and path[match.end() : match.end() + 1] in _ESCAPE_STARTS:
            # An encoded '%' before what could spell an escape is one encoded twice, however
            # spelled (`%252e`, `%25%32%65`): an upstream that decodes twice could read a dot
            # or a slash where none was checked. (`100%25` alone is a percent sign.)
            raise Refused("bad_path", "an escape encoded twice in the path")


def upstream_path(route_url: str, target: Target) -> str:
    """The path on the upstream: the route URL's path as a prefix, then the checked path."""
    prefix = urlsplit(route_url).path.rstrip("/")
    if not target.path:
        return (prefix + "/") if target.trailing_slash else (prefix or "/")
    return f"{prefix}/{target.path}{'/' if target.trailing_slash else ''}"


def bearer_grant(values: list[str]) -> str | None:
    """The grant in the Authorization header (`Bearer G` or `token G`), None when there is
    none; Refused when there are two (which one would the upstream have believed?)."""
    if len(values) > 1:
        raise Refused("bad_header", "more than one Authorization header")
    if not values:
        return None
    scheme, _, credential = values[0].strip().partition(" ")
    if scheme.lower() not in ("bearer", "token") or not credential.strip():
        return None
    return credential.strip()


def refused_request_header(names: Iterable[str]) -> Refused | None:
    """Refused for a request asking for a protocol switch (`Upgrade`, WebSocket) or a
    second Host; None when its headers can be forwarded (after `forward_request_headers`)."""
    hosts = 0
    for name in names:
        lowered = name.lower()
        if lowered == "upgrade":
            return Refused("upgrade_refused", "Upgrade (WebSocket, h2c) is not forwarded")
        if lowered == "host":
            hosts += 1
    if hosts > 1:
        return Refused("bad_header", "more than one Host header")
    return None


def forward_request_headers(
    headers: Iterable[tuple[str, str]], connection: Iterable[str], injected: str
) -> list[tuple[str, str]]:
    """The client's headers that go on upstream: without hop-by-hop ones (and those its
    `Connection` header names), the grant, method overrides, Host and Accept-Encoding (the
    broker sets those), and without anything of the name the route's secret goes in."""
    drop = HOP_BY_HOP_HEADERS | METHOD_OVERRIDE_HEADERS | _SET_BY_BROKER
    drop |= {_header_key(injected)} | {_header_key(t) for t in _connection_tokens(connection)}
    return [(name, value) for name, value in headers if _header_key(name) not in drop]


def _header_key(name: str) -> str:
    """A header name as the strictest reader of it sees it: lowercase, '_' as '-'."""
    return name.lower().replace("_", "-")


def forward_response_headers(
    headers: Iterable[tuple[str, str]], connection: Iterable[str]
) -> list[tuple[str, str]]:
    """The upstream's headers that go back: without hop-by-hop ones and without the body's
    framing and encoding (the broker decodes, scans and re-frames the body)."""
    drop = HOP_BY_HOP_HEADERS | {"content-length", "content-encoding"}
    drop |= _connection_tokens(connection)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def _connection_tokens(values: Iterable[str]) -> set[str]:
    return {token.strip().lower() for value in values for token in value.split(",") if token}


def content_encodings(values: Iterable[str]) -> list[str]:
    """The codings a Content-Encoding header lists, in order, lowercase."""
    return [c.strip().lower() for v in values for c in v.split(",") if c.strip()]


def decodable(values: Iterable[str]) -> bool:
    """Whether the broker can undo this Content-Encoding to scan the body: none, or one header
    that is exactly identity, gzip or deflate, as aiohttp judges it before it decodes (`gzip,`
    is a coding aiohttp leaves encoded, so it is not one the broker could scan)."""
    values = list(values)
    return not values or (len(values) == 1 and values[0].strip().lower() in DECODABLE_ENCODINGS)


# SPEC's status table: which HTTP status answers which reason code.
UNAUTHORISED = frozenset(
    {
        Reason.MALFORMED,
        Reason.BAD_SIGNATURE,
        Reason.UNKNOWN_KEY,
        Reason.WRONG_TYPE,
        Reason.WRONG_ISSUER,
        Reason.EXPIRED,
        Reason.NOT_YET_VALID,
        Reason.REVOKED,
        Reason.USES_EXHAUSTED,
        Reason.UNKNOWN_GRANT,
    }
)
UNAVAILABLE = frozenset({Reason.INTEGRITY, Reason.STATUS_UNAVAILABLE})


def status_for(reason: Reason | None) -> int:
    """The HTTP status of a denial with `reason` (403 for the scope and audience reasons)."""
    if reason in UNAUTHORISED:
        return 401
    if reason in UNAVAILABLE:
        return 503
    return 403


def challenge_for(status: int) -> dict[str, str]:
    """The `WWW-Authenticate` header a denial with `status` carries (RFC 6750): none for 503."""
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if status == 403:
        return {"WWW-Authenticate": 'Bearer error="insufficient_scope"'}
    return {}


# -- approvals -----------------------------------------------------------------------------

RETRY_AFTER = 30  # seconds a client told `approval_pending` waits before it retries, at most
SHOWN_BODY = 1 << 20  # bytes of a body parsed for the human's view; a longer one is cut


def request_sha256(method: str, target: Target, body: bytes) -> str:
    """What makes two HTTP requests the identical one an approval covers: the method, the
    route, the path as checked (its trailing '/' too: the upstream sees it), the query as sent
    and the body. The parts are JSON-delimited, so no two different requests share the text."""
    parts = [method, target.route, target.path, target.trailing_slash, target.query,
             hashlib.sha256(body).hexdigest()]  # fmt: skip
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def request_arguments(query: str, content_type: str, body: bytes) -> dict[str, Any]:
    """A request's arguments as the human reads them (nhidel.actions.approvals summarises and
    escapes them): the query as sent, and the body parsed when it is JSON, else its text when
    it is UTF-8, else its size. A body over SHOWN_BODY is shown by its first bytes and size."""
    shown: dict[str, Any] = {}
    if query:
        shown["query"] = query
    if len(body) > SHOWN_BODY:
        head = body[:SHOWN_BODY].decode("utf-8", errors="replace")
        shown["body"] = f"{head}…(+{len(body) - SHOWN_BODY} more bytes)"
    elif body:
        shown["body"] = _shown_body(content_type, body)
    return shown


def _shown_body(content_type: str, body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(body)} bytes binary>"
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # not JSON after all, or nested past the limit
            return text
    return text


def approval_retry_after(seconds_left: int) -> int:
    """The `Retry-After` of an `approval_pending` answer: RETRY_AFTER seconds, less when the
    request lapses sooner (a retry after it lapses asks the human again), never under 1."""
    return max(1, min(RETRY_AFTER, seconds_left))
