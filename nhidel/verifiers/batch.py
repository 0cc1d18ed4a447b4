"""`nhidel verify --batch`: one token a line in, one JSON verdict a line out, in the same order.

Every input line gets exactly one verdict, so a gateway that writes a token and reads a line
never waits forever: a blank line, a line that is not ASCII, or one longer than a token may be
is decided like any other bad token (`malformed`, and audited as such), never skipped and never
a crash. Verdicts are written when the input runs dry, before waiting for more: a process
talking to `verify --batch` through pipes gets each answer as soon as it is decided, and a
large file in is still written out in large blocks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import BinaryIO

from nhidel.tokens.decision import Decision
from nhidel.tokens.jws import MAX_TOKEN_LENGTH

READ_SIZE = 64 * 1024
_MAX_REMEMBERED = 4096


class VerdictLines:
    """The JSON line for each decision, as `verify --json` shapes it (without the indent).

    A verifier hands back the same Decision object for a token it remembers, so the line is
    built once per decision and second (a grant's status depends on the time).
    """

    def __init__(self) -> None:
        self._lines: dict[int, tuple[Decision, int, bytes]] = {}

    def __call__(self, decision: Decision, now: int) -> bytes:
        known = self._lines.get(id(decision))
        if known is not None and known[0] is decision and known[1] == now:
            return known[2]
        line = json.dumps(decision.to_json(now), ensure_ascii=False).encode("utf-8") + b"\n"
        if len(self._lines) >= _MAX_REMEMBERED:
            self._lines.clear()
        self._lines[id(decision)] = (decision, now, line)  # holds it: its id stays unique
        return line


def verify_lines(
    source: BinaryIO,
    sink: BinaryIO,
    check: Callable[[str], Decision],
    clock: Callable[[], float] = time.time,
) -> bool:
    """Decide every line of `source` with `check`, writing one verdict line each to `sink`.

    Return True when every line was allowed (also when there were none).
    """
    read = getattr(source, "read1", source.read)
    verdict = VerdictLines()
    all_allowed = True
    partial = b""  # the start of a line whose end has not arrived yet
    overlong = False  # inside a line already answered as too long: drop the rest of it
    # A gateway sends the same token again and again: reuse the last line's text (whose hash
    # the verifier's memory has already computed) and, within the same second, its verdict.
    last_raw, last_text = b"", ""
    last_decision, last_second, last_line = None, 0, b""

    def decide(lines: list[bytes]) -> None:
        nonlocal all_allowed, last_raw, last_text, last_decision, last_second, last_line
        out = []
        try:
            for line in lines:
                if line != last_raw:
                    last_raw = line
                    last_text = line[: MAX_TOKEN_LENGTH + 1].decode("utf-8", "replace")
                decision = check(last_text)
                second = int(clock())
                if decision is not last_decision or second != last_second:
                    if not decision.allowed:
                        all_allowed = False
                    last_decision, last_second = decision, second
                    last_line = verdict(decision, second)
                out.append(last_line)
        finally:
            # Should a line fail (a corrupt ledger row), the lines decided before it, whose
            # uses may be spent already, still get their verdicts.
            sink.write(b"".join(out))
            sink.flush()

    while chunk := read(READ_SIZE):
        lines = chunk.split(b"\n")
        if overlong:
            if len(lines) == 1:
                continue  # still inside the long line
            del lines[0]  # its end
            overlong = False
        else:
            lines[0] = partial + lines[0]
        partial = lines.pop()
        if len(partial) > MAX_TOKEN_LENGTH:
            # Too long to be a token whatever follows: answer now, and skip to its end.
            lines.append(partial)
            partial = b""
            overlong = True
        if lines:
            decide(lines)
    if partial:  # a last line without its newline
        decide([partial])
    return all_allowed
