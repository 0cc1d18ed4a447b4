"""Asking before a command revokes live grants: one way for every destructive command.

`revoke --agent`, `revoke --all`, `agent remove`, `agent update` (narrowing) and `key rotate
--now` say what they will do (how many live grants, of which agent) and ask on a terminal. With
no terminal to ask on they need `--yes`, so a script never waits on a prompt. A command with
nothing to revoke does not ask. A declined prompt changes nothing and exits 1 (SPEC.md: "a
confirmation declined"); Ctrl-C at the prompt is 130, as anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nhidel.cli.errors import ExitQuietly
from nhidel.errors import ExitStatus, UsageError
from nhidel.models import SHORT_ID_LENGTH

if TYPE_CHECKING:
    from nhidel.models import Grant

SHOWN_IDS = 10  # a longer list of grants to revoke ends with "and N more"


def confirm(plan: str, *, again: str) -> None:
    """Go on only if the user agrees to `plan` ("this revokes ..."), asked on a terminal: end
    the command (exit 1, nothing changed) unless the answer is yes. With no terminal,
    UsageError naming `again`, the command line with --yes (which skips the asking)."""
    from nhidel.cli.render import safe, say

    if sys.stdin is None or not sys.stdin.isatty():
        raise UsageError(
            f"refusing without --yes: {plan}",
            f"run it on a terminal to be asked, or confirm with --yes: {again}",
        )
    sys.stderr.write(f"{safe(plan)}. Continue? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if answer.strip().lower() in ("y", "yes"):
        return
    if not answer.endswith("\n"):  # end of input: the prompt's line is still open
        sys.stderr.write("\n")
    say("not confirmed: nothing changed")
    raise ExitQuietly(ExitStatus.DENIED)


def live_count(count: int) -> str:
    """`1 live grant`, `3 live grants`."""
    return f"{count} live grant{'s' if count != 1 else ''}"


def short_ids(grants: Sequence[Grant]) -> str:
    """The grants' short ids, the first SHOWN_IDS of them and how many more."""
    shown = " ".join(grant.id[:SHORT_ID_LENGTH] for grant in grants[:SHOWN_IDS])
    more = len(grants) - SHOWN_IDS
    return shown + (f" and {more} more" if more > 0 else "")
