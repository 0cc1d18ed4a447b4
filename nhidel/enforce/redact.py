"""Known secrets never flow back: find the values a registration or route injects, in the forms
a server or an upstream is likely to send them back in, and replace each by `[redacted:NAME]`.

Pure and fast: no I/O, no audit records (the caller records `secret.redacted` with the names
this returns). One compiled alternation of every form of every secret runs over bytes; every
top-level alternative starts with a literal byte, so `re` skips the bytes that cannot start a
match in C instead of trying the whole alternation at each position.

The forms of a value (best effort, as SPEC says):
- as text, each character literal or escaped the ways a JSON encoder or a URL encoder writes it:
  `\\"` `\\\\` `\\/` `\\b` `\\f` `\\n` `\\r` `\\t`, `\\uXXXX` (either case, surrogate pairs beyond
  the BMP), `%XX` (either case, each UTF-8 byte) and `+` for a space, in any mix: this covers the
  exact value, `json.dumps` with and without `ensure_ascii`, `quote()` and full percent-encoding;
- hex of its UTF-8 bytes, either case;
- base64 and base64url of those bytes after 0, 1 or 2 unknown bytes (the three alignments): the
  characters that depend on the value alone, not on its neighbours or the padding.

Not covered: a value wrapped across lines (MIME base64), escaped twice (JSON in a JSON string),
compressed or encrypted, or cut into pieces.

Where matches overlap (two secrets that share bytes, a secret that is a prefix of another) the
union of the matched bytes is one redacted region, replaced by one mark per secret in the order
they were found, so no part of either survives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nhidel.errors import UsageError

# A shorter value would be found inside ordinary output (words, ids, numbers) and mangle it;
# `secret add` refuses such values (actions.secrets.MIN_SECRET_LENGTH, in characters, is at
# least this many bytes).
MIN_SCANNABLE_BYTES = 8

_HEX = b"0123456789abcdef"
_B64_STD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_URL = {ord("+"): ord("-"), ord("/"): ord("_")}
_JSON_SHORT = {'"': b'\\"', "\\": b"\\\\", "/": b"\\/"} | {
    "\b": b"\\b",
    "\f": b"\\f",
    "\n": b"\\n",
    "\r": b"\\r",
    "\t": b"\\t",
}

# A pattern is built from units in sequence; a unit is a choice of alternatives; an alternative
# is a sequence of atoms; an atom is the set of bytes allowed at one position.
Atom = frozenset[int]
Alternative = tuple[Atom, ...]
Unit = tuple[Alternative, ...]


def check_scannable(value: str | bytes) -> None:
    """Refuse a value too short to be found in what comes back without mangling ordinary text
    (UsageError, exit 2)."""
    size = len(value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value)
    if size < MIN_SCANNABLE_BYTES:
        raise UsageError(
            f"the secret is shorter than {MIN_SCANNABLE_BYTES} bytes",
            "nhidel cannot redact so short a value from what comes back; use the real key",
        )


def mark(name: str) -> str:
    """What a redacted region shows for one secret: ASCII with no quote or backslash, so it is
    safe inside a JSON string, a header value and a URL."""
    return f"[redacted:{name}]"


def _literal(data: bytes) -> Alternative:
    return tuple(frozenset((byte,)) for byte in data)


def _hex_digit(nibble: int) -> Atom:
    digit = _HEX[nibble]
    return frozenset({digit, ord(chr(digit).upper())})


def _hex_byte(byte: int) -> Alternative:
    return (_hex_digit(byte >> 4), _hex_digit(byte & 15))


def _percent(byte: int) -> Alternative:
    return (frozenset((ord("%"),)), *_hex_byte(byte))


def _json_u(code: int) -> Alternative:
    digits = f"{code:04x}".encode()
    return (*_literal(b"\\u"), *(_hex_digit(int(chr(d), 16)) for d in digits))


def _text_units(value: str) -> tuple[Unit, ...]:
    """The value as text: each character literal, JSON-escaped or percent-encoded."""
    units = []
    for char in value:
        raw = char.encode("utf-8", "surrogatepass")
        code = ord(char)
        alternatives: list[Alternative] = []
        if char in _JSON_SHORT:
            alternatives.append(_literal(_JSON_SHORT[char]))
        if code < 0x10000:
            alternatives.append(_json_u(code))
        else:
            high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            alternatives.append((*_json_u(high), *_json_u(low)))
        if len(raw) == 1:
            alternatives.append(_percent(code))
            if char == " ":
                alternatives.append(_literal(b"+"))
        else:
            # Every UTF-8 byte of a wider character percent-encoded (quote() does this).
            alternatives.append(tuple(atom for byte in raw for atom in _percent(byte)))
        # The literal last: where an escape starts with a backslash that is itself part of the
        # value, the escape is tried first and the escaped pair is consumed whole.
        alternatives.append(_literal(raw))
        units.append(tuple(alternatives))
    return tuple(units)


def _hex_units(raw: bytes) -> tuple[Unit, ...]:
    return tuple((_hex_byte(byte),) for byte in raw)


def _base64_units(raw: bytes, offset: int) -> tuple[Unit, ...]:
    """The characters of base64/base64url that encode `raw` alone when it follows `offset`
    unknown bytes: those covering neither the unknown bytes nor whatever comes after."""
    bits = bytes(offset) + raw
    total = len(bits) * 8
    start = -(-offset * 8 // 6)  # the first 6-bit group wholly after the unknown bytes
    stop = total // 6  # the last 6-bit group wholly inside the value
    number = int.from_bytes(bits, "big")
    units = []
    for group in range(start, stop):
        index = (number >> (total - 6 * (group + 1))) & 63
        std = _B64_STD[index]
        units.append(((frozenset({std, _B64_URL.get(std, std)}),),))
    return tuple(units)


def _max_length(units: Iterable[Unit]) -> int:
    return sum(max(len(alternative) for alternative in unit) for unit in units)


def _render_atom(atom: Atom) -> bytes:
    if len(atom) == 1:
        return re.escape(bytes(atom))
    return b"[" + b"".join(re.escape(bytes((byte,))) for byte in sorted(atom)) + b"]"


def _render_alternative(alternative: Alternative) -> bytes:
    return b"".join(_render_atom(atom) for atom in alternative)


def _render_units(units: Iterable[Unit]) -> bytes:
    parts = []
    for unit in units:
        if len(unit) == 1:
            parts.append(_render_alternative(unit[0]))
        else:
            parts.append(b"(?:" + b"|".join(_render_alternative(a) for a in unit) + b")")
    return b"".join(parts)


def _branches(units: tuple[Unit, ...]) -> list[bytes]:
    """The form as top-level alternatives that each start with one literal byte (what lets `re`
    skip ahead by a first-byte set)."""
    rest = _render_units(units[1:])
    branches: list[bytes] = []
    for alternative in units[0]:
        tail = _render_alternative(alternative[1:]) + rest
        branches.extend(re.escape(bytes((byte,))) + tail for byte in sorted(alternative[0]))
    return branches


class _Form:
    """One form of one secret. Its own pattern is compiled on the first hit: hits are rare, and
    compiling a long value's forms costs as much as the whole alternation."""

    def __init__(self, name: str, source: bytes, max_length: int) -> None:
        self.name = name
        self.max_length = max_length
        self._source = source
        self._pattern: re.Pattern[bytes] | None = None

    def match(self, data: bytes, start: int) -> re.Match[bytes] | None:
        if self._pattern is None:
            self._pattern = re.compile(self._source)
        return self._pattern.match(data, start)


class Redactor:
    """The forms of the given secrets ({name: value}), compiled once: build one per set of
    values and share it (a long value takes a while to compile). `redact_bytes` and `stream()`
    give the same output for the same bytes, however they are split; `redact_text` is for a
    whole message that may be JSON."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        forms: list[tuple[str, tuple[Unit, ...]]] = []
        # Longer values first: where a shorter secret is a prefix of a longer one, the longer
        # one's mark comes first.
        for name, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
            check_scannable(value)
            raw = value.encode("utf-8", "surrogatepass")
            forms.append((name, _text_units(value)))
            forms.append((name, _hex_units(raw)))
            forms.extend((name, _base64_units(raw, offset)) for offset in range(3))
        self._forms = tuple(
            _Form(name, _render_units(units), _max_length(units)) for name, units in forms
        )
        branches = [branch for _name, units in forms for branch in _branches(units)]
        self._any = re.compile(b"|".join(branches)) if branches else None
        self.max_length = max((form.max_length for form in self._forms), default=0)
        # What a stream holds back: a match starting earlier would already be whole.
        self.holdback = max(0, self.max_length - 1)

    def redact_bytes(self, data: bytes) -> tuple[bytes, list[str]]:
        """`data` with every region where a secret was found replaced by its marks, and the names
        found (each once, in the order found)."""
        stream = self.stream()
        out = stream.feed(data) + stream.finish()
        return out, stream.names_hit

    def redact_text(self, text: str) -> tuple[str, list[str]]:
        """`text` redacted as `redact_bytes` redacts its UTF-8, except that a region that starts
        inside a JSON escape (`\\n` + the rest of a value that starts with n, part of a `\\uXXXX`)
        or ends inside one (on a backslash that escapes what follows) takes the whole escape
        with it: a JSON text stays JSON. Returns the text and the names found."""
        data = text.encode("utf-8", "surrogatepass")
        stream = self.stream()
        regions = stream.scan(data, final=True)
        parts: list[bytes] = []
        cursor = 0
        for region in _escape_aligned(data, regions):
            parts.append(data[cursor : region.start])
            parts.append(region.marks())
            cursor = region.end
        parts.append(data[cursor:])
        return b"".join(parts).decode("utf-8", "surrogatepass"), stream.names_hit

    def stream(self) -> StreamRedactor:
        """A redactor for one stream of bytes (a response body, a child's stderr)."""
        return StreamRedactor(self)

    def _longest_at(self, data: bytes, start: int) -> tuple[int, list[str]]:
        """Where the longest match starting at `start` ends, and which secrets match there."""
        end, names = start, []
        for form in self._forms:
            found = form.match(data, start)
            if found:
                end = max(end, found.end())
                if form.name not in names:
                    names.append(form.name)
        return end, names


class StreamRedactor:
    """Redacts a stream chunk by chunk. It holds back at most `holdback` bytes (what could
    still be the start of a match) and emits the rest at once; a redacted region's marks come
    out when the region can grow no further. Memory stays bounded: the bytes of a region are
    dropped as they are passed, only its names are kept."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._buffer = b""
        self._base = 0  # the stream offset of _buffer[0]
        self._cursor = 0  # stream offset: everything before it is emitted (or redacted)
        self._search = 0  # stream offset: every match that starts before it is handled
        self._region: _Region | None = None  # the redacted region that may still grow
        self.names_hit: list[str] = []

    def feed(self, chunk: bytes) -> bytes:
        """Take the next chunk; return what can be emitted now."""
        return self._emit(chunk, final=False)

    def finish(self) -> bytes:
        """The end of the stream: return everything still held, redacted."""
        return self._emit(b"", final=True)

    @property
    def held(self) -> int:
        """How many bytes are held back: neither emitted nor inside a redacted region."""
        done = self._cursor if self._region is None else self._region.end
        return max(0, self._base + len(self._buffer) - done)

    def scan(self, data: bytes, *, final: bool) -> list[_Region]:
        """Add `data`, then return the redacted regions (stream offsets and names, in order)
        that can grow no further. `Redactor.redact_text` uses it on a whole text."""
        self._buffer += data
        redactor = self._redactor
        closed: list[_Region] = []
        limit = self._limit(final)
        while redactor._any is not None:
            found = redactor._any.search(self._buffer, self._search - self._base)
            if found is None or found.start() + self._base >= limit:
                break
            start = found.start() + self._base
            end, names = redactor._longest_at(self._buffer, found.start())
            end += self._base
            region = self._region
            if region is not None and start < region.end:
                region.end = max(region.end, end)
                region.names.extend(n for n in names if n not in region.names)
            else:
                if region is not None:
                    closed.append(region)
                self._region = _Region(start, end, list(names))
            self.names_hit.extend(n for n in names if n not in self.names_hit)
            self._search = start + 1
        region = self._region
        if region is not None and region.end <= limit:
            # Every match that could start inside the region has been tried: it is closed.
            closed.append(region)
            self._region = None
        if self._region is None:
            self._search = max(self._search, limit)
        return closed

    def _emit(self, chunk: bytes, *, final: bool) -> bytes:
        out: list[bytes] = []
        for region in self.scan(chunk, final=final):
            out.append(self._slice(self._cursor, region.start))
            out.append(region.marks())
            self._cursor = region.end
        if self._region is None:
            upto = self._limit(final)
            out.append(self._slice(self._cursor, upto))
            self._cursor = upto
            keep = upto
        else:
            out.append(self._slice(self._cursor, self._region.start))
            self._cursor = self._region.start
            keep = self._search  # the region's bytes are redacted: only later starts matter
        if keep > self._base:
            self._buffer = self._buffer[keep - self._base :]
            self._base = keep
        return b"".join(out)

    def _limit(self, final: bool) -> int:
        """Matches that start before this stream offset are decided by the bytes held."""
        end = self._base + len(self._buffer)
        if final:
            return end
        return max(self._search, end - self._redactor.holdback)

    def _slice(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return self._buffer[start - self._base : end - self._base]


@dataclass(slots=True)
class _Region:
    """Bytes [start, end) of a stream where secrets `names` were found."""

    start: int
    end: int
    names: list[str]

    def marks(self) -> bytes:
        return "".join(mark(name) for name in self.names).encode()


def _escape_aligned(data: bytes, regions: list[_Region]) -> list[_Region]:
    """Widen regions that start inside a JSON escape or end on a backslash that escapes what
    follows, merging any that then overlap."""
    aligned: list[_Region] = []
    for region in regions:
        start = _escape_start(data, region.start)
        end = _whole_character(data, _escape_end(data, start, region.end))
        if aligned and start < aligned[-1].end:
            last = aligned[-1]
            last.end = max(last.end, end)
            last.names.extend(n for n in region.names if n not in last.names)
        else:
            aligned.append(_Region(start, end, list(region.names)))
    return aligned


def _whole_character(data: bytes, end: int) -> int:
    """`end` moved past the UTF-8 continuation bytes it would cut off (a region widened to take
    the character a backslash escapes must take all of that character's bytes)."""
    while end < len(data) and 0x80 <= data[end] < 0xC0:
        end += 1
    return end


_PARTIAL_U = re.compile(rb"\\u[0-9A-Fa-f]{0,3}\Z")


def _escaping(data: bytes, index: int) -> bool:
    """Whether the backslash at `index` starts an escape (an even run of backslashes before it)."""
    run = 0
    while index - run - 1 >= 0 and data[index - run - 1] == ord("\\"):
        run += 1
    return run % 2 == 0


def _escape_start(data: bytes, start: int) -> int:
    partial = _PARTIAL_U.search(data, max(0, start - 5), start)
    if partial and _escaping(data, partial.start()):
        return partial.start()
    if start > 0 and data[start - 1] == ord("\\") and _escaping(data, start - 1):
        return start - 1
    return start


def _escape_end(data: bytes, start: int, end: int) -> int:
    # The backslash that escapes what follows the region, if any: the last of an odd run
    # counted from the region's start (which is itself escape-aligned).
    run = 0
    while end - run - 1 >= start and data[end - run - 1] == ord("\\"):
        run += 1
    if run % 2 == 1 and end < len(data):
        if data[end] == ord("u"):
            tail = re.match(rb"u[0-9A-Fa-f]{0,4}", data[end : end + 5])
            return end + (tail.end() if tail else 1)
        return end + 1
    # A region that ends inside a \uXXXX escape takes the rest of it.
    partial = _PARTIAL_U.search(data, max(start, end - 5), end)
    if partial and _escaping(data, partial.start()):
        tail = re.match(rb"[0-9A-Fa-f]*", data[end : end + 6 - (end - partial.start())])
        return end + (tail.end() if tail else 0)
    return end
