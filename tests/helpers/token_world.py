"""A principal, an agent and a verifier at a fixed time, and tokens forged by hand.

Adversarial tokens are assembled here (base64url JSON + signature), so the tests that use them
hold whatever a JOSE library would or would not refuse.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nhidel.actions.agents import add_agent
from nhidel.actions.grants import GrantRequest, issue
from nhidel.actions.keys import init_principal
from nhidel.keys.keystore import KeyStore, open_keystore
from nhidel.keys.material import private_key
from nhidel.keys.principal import Signer, load_signer
from nhidel.ledger.store import Ledger
from nhidel.models import Grant
from nhidel.paths import Paths
from nhidel.tokens.decision import Decision, Reason
from nhidel.verifiers.local import Verifier

T = 1_795_428_000  # 2026-11-23T10:00:00Z
SCOPE = "repo:read:acme/api"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def forge(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes] = lambda _: b""
) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"


def unsegment(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = unsegment(token.split(".")[1])
    return decoded


def attacker_key() -> tuple[Ed25519PrivateKey, dict[str, str]]:
    key = Ed25519PrivateKey.generate()
    x = b64url(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    return key, {"kty": "OKP", "crv": "Ed25519", "x": x}


@dataclass
class World:
    paths: Paths
    keystore: KeyStore
    signer: Signer

    def issue(self, scopes: tuple[str, ...] = (SCOPE,), **fields: Any) -> tuple[Grant, str]:
        return issue(self.paths, self.keystore, GrantRequest("reviewer", scopes, **fields), now=T)

    def decide(
        self,
        token: str,
        scopes: tuple[str, ...] = (SCOPE,),
        *,
        at: int = T,
        leeway: int = 0,
        **options: Any,
    ) -> Decision:
        with Verifier(self.paths, self.keystore, clock=lambda: at, leeway=leeway) as verifier:
            return verifier.check(token, scopes, **options)

    def sign(self, data: bytes) -> bytes:
        return private_key(self.signer.seed).sign(data)

    def header(self, **changes: Any) -> dict[str, Any]:
        return {"alg": "EdDSA", "typ": "nhidel+jwt", "kid": self.signer.kid, **changes}

    def uses(self, grant_id: str) -> int:
        with Ledger(self.paths) as ledger:
            found = ledger.get(grant_id)
        assert found is not None
        return found.uses


def make_world(paths: Paths) -> World:
    """alice's key, and the agent `reviewer` allowed repo:read:acme/* and ticket:create:queue/*."""
    keystore = open_keystore(paths, env={})
    init_principal(paths, keystore, principal="alice", issuer=None, now=T)
    add_agent(
        paths,
        "reviewer",
        allow=["repo:read:acme/*", "ticket:create:queue/*"],
        max_ttl="1h",
        default_ttl=None,
        audiences=[],
        now=T,
    )
    return World(paths, keystore, load_signer(keystore))


def assert_denied(decision: Decision, reason: Reason) -> None:
    assert decision.allowed is False
    assert decision.reason is reason, decision.detail
