"""nhidel: mint scoped, time-boxed, revocable grants for named agents.

The public API is the verify check, for gateways that call it in-process:

    from nhidel import Verifier
    decision = Verifier().check(token, scopes=["ticket:create:queue/support"])
    if not decision.allowed: ...  # decision.reason is a SPEC.md reason code

`RemoteVerifier` does the same on another machine, from a published JWKS and status list.

It is imported lazily, so `import nhidel` (and shell completion) stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["Decision", "Reason", "RemoteVerifier", "Verifier", "__version__", "verify"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (completion's floor)
if TYPE_CHECKING:
    from typing import Any

    from nhidel.tokens.decision import Decision, Reason
    from nhidel.verifiers.local import Verifier, verify
    from nhidel.verifiers.remote import RemoteVerifier

_HOMES = {
    "Decision": "tokens.decision", "Reason": "tokens.decision",
    "RemoteVerifier": "verifiers.remote",
    "Verifier": "verifiers.local", "verify": "verifiers.local",
}  # fmt: skip


def __getattr__(name: str) -> "Any":
    if name in _HOMES:
        from importlib import import_module

        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'nhidel' has no attribute {name!r}")
