"""A RemoteVerifier remembers verified claims, and the memory never changes an answer: times,
the use limit and the status list are decided on every call, a status is asked again of every
status list fetched, and everything is forgotten when the JWKS is fetched again."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nhidel.verifiers.remote as remote_module
from nhidel.keys.material import generate_private_key, public_jwk, public_x, thumbprint
from nhidel.tokens.decision import Decision, Reason
from nhidel.tokens.jws import mint
from nhidel.tokens.statuslist import INVALID, SUSPENDED, VALID, encode
from nhidel.verifiers.remote import JWKS_TTL, STATUS_LIST_TYPE, RemoteVerifier

ISSUER = "nhidel:alice"
URI = "https://example.test/status.jwt"
START = 1_900_000_000
SCOPES = ("repo:read:acme/api", "repo:write:acme/api", "mail:send")


@dataclass
class Publisher:
    """The documents a principal publishes, as a fetcher serves them, with fetches counted."""

    seed: bytes = field(default_factory=generate_private_key)
    statuses: list[int] = field(default_factory=lambda: [VALID] * 8)
    list_ttl: int = 60
    fetched: list[str] = field(default_factory=list)
    extra_keys: list[bytes] = field(default_factory=list)
    now: int = START

    @property
    def kid(self) -> str:
        return thumbprint(public_x(self.seed))

    def fetch(self, source: str) -> bytes:
        self.fetched.append(source)
        if source == "jwks.json":
            seeds = [self.seed, *self.extra_keys]
            return json.dumps({"keys": [public_jwk(public_x(s)) for s in seeds]}).encode()
        claims = {"iss": ISSUER, "sub": URI, "iat": self.now, "ttl": self.list_ttl,
                  "exp": self.now + 3600,
                  "status_list": {"bits": 2, "lst": encode(self.statuses, 2)}}  # fmt: skip
        return mint(claims, self.seed, self.kid, typ=STATUS_LIST_TYPE).encode()

    def token(self, idx: int, *, scope: str = SCOPES[0], exp: int = START + 600,
              nbf: int = START, aud: str | None = None, uses: int | None = None,
              status: bool = True) -> str:  # fmt: skip
        claims: dict[str, object] = {
            "iss": ISSUER, "sub": "alice", "act": {"sub": "bot"}, "scope": scope,
            "iat": nbf, "nbf": nbf, "exp": exp, "jti": "g" + "abcdefgh"[idx] * 26,
        }  # fmt: skip
        if aud is not None:
            claims["aud"] = aud
        if uses is not None:
            claims["max_uses"] = uses
        if status:
            claims["status"] = {"status_list": {"idx": idx, "uri": URI}}
        return mint(claims, self.seed, self.kid)

    def verifier(self, clock: Callable[[], float], *, status: bool = True,
                 memory_size: int = 4096) -> RemoteVerifier:  # fmt: skip
        return RemoteVerifier("jwks.json", "status.jwt" if status else None, issuer=ISSUER,
                              clock=clock, fetcher=self.fetch, memory_size=memory_size)  # fmt: skip


@pytest.fixture
def signatures_checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every grant token whose signature the remote verifier checks."""
    checked: list[str] = []
    real = remote_module.decode_verified

    def counting(token: str, *args: object, **kwargs: object) -> dict[str, object]:
        if "typ" not in kwargs:
            checked.append(token)
        return real(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(remote_module, "decode_verified", counting)
    return checked


def test_the_same_token_again_is_not_verified_again(signatures_checked: list[str]) -> None:
    publisher = Publisher()
    verifier = publisher.verifier(lambda: START + 1)
    token = publisher.token(1)
    for _ in range(5):
        assert verifier.check(token, [SCOPES[0]]).allowed
    assert signatures_checked == [token]
    assert publisher.fetched == ["jwks.json", "status.jwt"]


def test_a_remembered_token_still_expires_and_is_still_not_valid_early() -> None:
    publisher = Publisher()
    now = [START - 10]
    verifier = publisher.verifier(lambda: now[0])
    token = publisher.token(1, exp=START + 100)
    assert verifier.check(token, [SCOPES[0]]).reason is Reason.NOT_YET_VALID
    now[0] = START + 99
    assert verifier.check(token, [SCOPES[0]]).allowed
    now[0] = START + 100
    assert verifier.check(token, [SCOPES[0]]).reason is Reason.EXPIRED


def test_a_revocation_in_the_next_status_list_is_seen_once_it_is_fetched(
    signatures_checked: list[str],
) -> None:
    publisher = Publisher(list_ttl=30)
    now = [START]
    verifier = publisher.verifier(lambda: now[0])
    token = publisher.token(3)
    assert verifier.check(token, [SCOPES[0]]).allowed
    publisher.statuses[3] = INVALID
    now[0] = START + 29  # the list fetched is still within its time to live
    assert verifier.check(token, [SCOPES[0]]).allowed
    now[0] = START + 30
    assert verifier.check(token, [SCOPES[0]]).reason is Reason.REVOKED
    assert signatures_checked == [token]  # its signature still holds: only the status changed


def test_a_status_list_past_its_expiry_denies_a_remembered_token() -> None:
    publisher = Publisher(list_ttl=10_000)  # kept far longer than it may be used
    now = [START]
    verifier = publisher.verifier(lambda: now[0])
    token = publisher.token(2, exp=START + 10_000)
    assert verifier.check(token, [SCOPES[0]]).allowed
    now[0] = START + 3600  # the list's own exp
    decision = verifier.check(token, [SCOPES[0]])
    assert decision.reason is Reason.STATUS_UNAVAILABLE


def test_a_key_dropped_from_the_jwks_denies_once_the_jwks_is_fetched_again() -> None:
    old = Publisher()
    now = [START]
    verifier = old.verifier(lambda: now[0], status=False)
    token = old.token(1, exp=START + 2 * JWKS_TTL)
    assert verifier.check(token, [SCOPES[0]]).allowed
    old.seed, old.extra_keys = generate_private_key(), []  # rotated: the old key is gone
    now[0] = START + JWKS_TTL
    assert verifier.check(token, [SCOPES[0]]).reason is Reason.UNKNOWN_KEY


def test_each_question_is_decided_for_itself() -> None:
    publisher = Publisher()
    verifier = publisher.verifier(lambda: START, status=False)
    token = publisher.token(1, aud="api.test")
    assert verifier.check(token, [SCOPES[0]], aud="api.test").allowed
    assert verifier.check(token, [SCOPES[0]]).reason is Reason.WRONG_AUDIENCE
    assert verifier.check(token, [SCOPES[1]], aud="api.test").reason is Reason.SCOPE_NOT_GRANTED
    assert verifier.check(token, [], any_scope=True, aud="api.test").allowed


def test_the_memory_is_bounded_and_a_forgotten_token_is_verified_again(
    signatures_checked: list[str],
) -> None:
    publisher = Publisher()
    verifier = publisher.verifier(lambda: START, status=False, memory_size=2)
    tokens = [publisher.token(i) for i in range(4)]
    for token in tokens:
        assert verifier.check(token, [SCOPES[0]]).allowed
    assert len(verifier._memory) == 2
    assert verifier.check(tokens[0], [SCOPES[0]]).allowed
    assert signatures_checked == [*tokens, tokens[0]]


# -- the memory against a verifier that remembers nothing ------------------------------------

step = st.one_of(
    st.tuples(
        st.just("check"),
        st.integers(0, 5),
        st.sampled_from(SCOPES),
        st.sampled_from([None, "api.test"]),
    ),  # fmt: skip
    st.tuples(st.just("tick"), st.integers(0, 400)),
    st.tuples(st.just("status"), st.integers(0, 5), st.sampled_from([VALID, INVALID, SUSPENDED])),
    st.tuples(st.just("rotate")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, max_size=40))
def test_remembering_never_changes_a_decision(steps: list[tuple[object, ...]]) -> None:
    publisher = Publisher(list_ttl=45)
    now = [START]
    remembering = publisher.verifier(lambda: now[0], memory_size=3)
    tokens = [
        publisher.token(0),
        publisher.token(1, exp=START + 200),
        publisher.token(2, nbf=START + 100, scope=SCOPES[1]),
        publisher.token(3, aud="api.test"),
        publisher.token(4, uses=2),
        publisher.token(5, status=False),
    ]
    for action, *args in steps:
        if action == "tick":
            now[0] += int(args[0])  # type: ignore[call-overload]
        elif action == "status":
            publisher.statuses[args[0]] = args[1]  # type: ignore[index]
        elif action == "rotate":
            publisher.extra_keys = [generate_private_key()]
        else:
            index, scope, aud = args
            token = tokens[index]  # type: ignore[index]
            # A verifier that remembers nothing, seeing the documents as the remembering one
            # last fetched them: its answer is the one a memory must not change.
            fresh = _fresh_like(remembering, publisher, now[0])
            expected: Decision = fresh.check(token, [scope], aud=aud)  # type: ignore[list-item, arg-type]
            got = remembering.check(token, [scope], aud=aud)  # type: ignore[list-item, arg-type]
            assert (got.allowed, got.reason, got.detail) == (
                expected.allowed, expected.reason, expected.detail,
            )  # fmt: skip


def _fresh_like(remembering: RemoteVerifier, publisher: Publisher, now: int) -> RemoteVerifier:
    """A new verifier that first fetches the documents the remembering one would hold at
    `now`: whatever it fetched last, unless their time is up, when both fetch anew."""
    remembering._keys(now)  # (fetches again exactly when a check at `now` would)
    if remembering._status is None or now >= remembering._status.until:
        listed = None
    else:
        listed = remembering._status
    fresh = RemoteVerifier("jwks.json", "status.jwt", issuer=ISSUER, clock=lambda: now,
                           fetcher=publisher.fetch, memory_size=0)  # fmt: skip
    fresh._jwks, fresh._jwks_fetched_at = remembering._jwks, remembering._jwks_fetched_at
    fresh._status = listed
    return fresh
