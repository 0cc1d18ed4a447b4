"""A fixed local time zone for tests of what people read: TZ set and the C library told.

POSIX TZ strings need no tz database, so the zones are the same on every machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

# Central European time: CET (UTC+1) in winter, CEST (UTC+2) from the last Sunday of March.
BERLIN = "CET-1CEST,M3.5.0,M10.5.0/3"
UTC = "UTC0"


@contextmanager
def pinned_zone(zone: str) -> Iterator[None]:
    """Run the body with the local zone `zone`, then restore the caller's."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()
