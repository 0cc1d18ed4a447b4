"""How agents, grants, approval requests and audiences are named: the rules every reader of a
name or an id holds it to.

Each rule is said twice, and a property test holds the two to each other: as a hand-written
check (`is_agent_name`, `is_grant_id`, `is_approval_id`), which shell completion applies to
every value it offers at every TAB without importing `re`, and as a pattern (`AGENT_NAME`,
`GRANT_ID`, `GRANT_ID_PREFIX`, `APPROVAL_ID`, `APPROVAL_ID_PREFIX`), compiled the first time a
module asks for it.
"""

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import re

    AGENT_NAME: re.Pattern[str]
    GRANT_ID: re.Pattern[str]
    GRANT_ID_PREFIX: re.Pattern[str]
    APPROVAL_ID: re.Pattern[str]
    APPROVAL_ID_PREFIX: re.Pattern[str]

MAX_AGENT_NAME_LENGTH = 64
MAX_AUDIENCE_LENGTH = 256  # an audience: printable, no whitespace, at most this long
GRANT_ID_LENGTH = 27  # `g` and 26 lowercase base32 characters
APPROVAL_ID_LENGTH = 17  # `a` and 16 lowercase base32 characters

_PATTERNS = {
    "AGENT_NAME": r"[a-z0-9][a-z0-9_.-]{0,63}",
    "GRANT_ID": r"g[a-z2-7]{26}",
    "GRANT_ID_PREFIX": r"g[a-z2-7]{0,26}",  # what `revoke` and `show` look up
    "APPROVAL_ID": r"a[a-z2-7]{16}",
    "APPROVAL_ID_PREFIX": r"a[a-z2-7]{0,16}",  # what `approve`, `deny` and `show` look up
}
_LOWER_OR_DIGIT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_NAME_CHARACTERS = _LOWER_OR_DIGIT | frozenset("_.-")
_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def is_agent_name(text: str) -> bool:
    """Whether `text` is an agent's name, as `AGENT_NAME.fullmatch` says."""
    return (
        0 < len(text) <= MAX_AGENT_NAME_LENGTH
        and text[0] in _LOWER_OR_DIGIT
        and _NAME_CHARACTERS.issuperset(text)
    )


def is_grant_id(text: str) -> bool:
    """Whether `text` is a grant id nhidel mints, as `GRANT_ID.fullmatch` says."""
    return len(text) == GRANT_ID_LENGTH and text[0] == "g" and _BASE32.issuperset(text[1:])


def is_approval_id(text: str) -> bool:
    """Whether `text` is an approval request's id as nhidel makes them, as `APPROVAL_ID.fullmatch`
    says."""
    return len(text) == APPROVAL_ID_LENGTH and text[0] == "a" and _BASE32.issuperset(text[1:])


def __getattr__(name: str) -> "re.Pattern[str]":
    """`AGENT_NAME`, `GRANT_ID`, `GRANT_ID_PREFIX`, `APPROVAL_ID` and `APPROVAL_ID_PREFIX`,
    compiled on first use and kept."""
    if name not in _PATTERNS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import re

    pattern = globals()[name] = re.compile(_PATTERNS[name])
    return pattern
