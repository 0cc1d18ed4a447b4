"""An enforcement point's approvals desk as a command, for the crash harness
(tests/integration/test_crash_harness.py runs it in its child, the crash hook installed):

    desk open CONTENT    open a request for reviewer's call with this content (prints its id)
    desk ask CONTENT     what the desk says of that call now (prints go, pending, denied...)
    desk close ID        withdraw a request (approval.lapsed)

The call is always reviewer's write of CONTENT to /srv/crash.txt under the grant
$NHIDEL_DESK_GRANT.
"""

from __future__ import annotations

import os
import sys
import time

from nhidel.actions.approvals import Desk
from nhidel.audit import AuditKeys
from nhidel.integrity.approvals import Call, canonical_sha256
from nhidel.keys.keystore import open_keystore
from nhidel.ledger.store import Ledger
from nhidel.paths import Paths

TIMEOUT = 4 * 3600


def main(argv: list[str]) -> int:
    """Run one desk command; 0 when it ran."""
    paths = Paths.from_env()
    action, value = argv
    with Ledger(paths) as ledger:
        desk = Desk(paths, AuditKeys.of(open_keystore(paths)), ledger, clock=time.time,
                    timeout=TIMEOUT)  # fmt: skip
        if action == "close":
            row = ledger.approval(value)
            assert row is not None
            from nhidel.integrity.approvals import open_request

            desk.close(open_request(desk.keys.seal_key, row), "withdrawn by the client")
            return 0
        arguments = {"path": "/srv/crash.txt", "content": value}
        call = Call("reviewer", os.environ["NHIDEL_DESK_GRANT"], "files", "write_file",
                    ("/srv/crash.txt",), canonical_sha256(arguments))  # fmt: skip
        verdict = desk.consider(call, via="mcp", mark="files:write_file:*", arguments=arguments)
    if action == "open":
        assert verdict.request is not None
        sys.stdout.write(verdict.request.id + "\n")
    else:
        sys.stdout.write(verdict.outcome + "\n")
    return 0
