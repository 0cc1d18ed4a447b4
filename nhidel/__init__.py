"""nhidel: mint scoped, time-boxed, revocable grants for named agents.

The public API is the verify check, for gateways that call it in-process:

    from nhidel import Verifier
    decision = Verifier().check(token, scopes=["ticket:create:queue/support"])
    if not decision.allowed: ...  # decision.reason is a SPEC.md reason code

It is imported lazily, so `import nhidel` (and shell completion) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Decision", "Reason", "Verifier", "__version__", "verify"]

if TYPE_CHECKING:
    from .verifier import Decision, Reason, Verifier, verify


def __getattr__(name: str) -> Any:
    if name in ("Decision", "Reason", "Verifier", "verify"):
        from . import verifier

        return getattr(verifier, name)
    raise AttributeError(f"module 'nhidel' has no attribute {name!r}")
