"""How agents, grants and audiences are named: the rules every reader of a name or an id holds
it to.

Standard library only (`re`): shell completion checks every value it offers against them, at
every TAB, without loading the model.
"""

from __future__ import annotations

import re

AGENT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
GRANT_ID = re.compile(r"g[a-z2-7]{26}")  # `g` and 26 lowercase base32 characters
GRANT_ID_PREFIX = re.compile(r"g[a-z2-7]{0,26}")  # what `revoke` and `show` look up
MAX_AUDIENCE_LENGTH = 256  # an audience: printable, no whitespace, at most this long
