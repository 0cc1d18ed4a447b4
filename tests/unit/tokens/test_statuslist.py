"""The token status list encoding: the draft's known answers, round trips, malformed input."""

from __future__ import annotations

import random
import zlib

import pytest

from nhidel.base64url import b64url_encode
from nhidel.tokens import statuslist
from nhidel.tokens.statuslist import (
    INVALID,
    SUSPENDED,
    VALID,
    decode,
    encode,
    pack,
    status_of,
    unpack,
)

# draft-ietf-oauth-status-list, section 4.1: the examples for 1 and 2 bits per status.
KAT_1BIT = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
KAT_1BIT_BYTES = bytes([0xB9, 0xA3])
KAT_1BIT_LST = "eNrbuRgAAhcBXQ"
KAT_2BIT = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3]
KAT_2BIT_BYTES = bytes([0xC9, 0x44, 0xF9])
KAT_2BIT_LST = "eNo76fITAAPfAgc"


def test_status_values_are_the_drafts() -> None:
    assert (VALID, INVALID, SUSPENDED) == (0, 1, 2)


@pytest.mark.parametrize(
    ("statuses", "bits", "packed", "lst"),
    [(KAT_1BIT, 1, KAT_1BIT_BYTES, KAT_1BIT_LST), (KAT_2BIT, 2, KAT_2BIT_BYTES, KAT_2BIT_LST)],
)
def test_the_drafts_examples_pack_and_decode_to_the_published_answers(
    statuses: list[int], bits: int, packed: bytes, lst: str
) -> None:
    assert pack(statuses, bits) == packed
    assert decode(lst, bits) == packed
    assert [status_of({"bits": bits, "lst": lst}, i) for i in range(len(statuses))] == statuses
    assert decode(encode(statuses, bits), bits) == packed


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_random_lists_round_trip_for_every_width(bits: int) -> None:
    rng = random.Random(bits)  # noqa: S311 - test data, not a secret
    for length in (1, 7, 8, 9, 1000):
        statuses = [rng.randrange(1 << bits) for _ in range(length)]
        lst = encode(statuses, bits)
        assert unpack(decode(lst, bits), bits)[:length] == statuses
        assert [status_of({"bits": bits, "lst": lst}, i) for i in range(length)] == statuses


def test_an_index_past_the_list_or_negative_is_refused() -> None:
    claim = {"bits": 1, "lst": KAT_1BIT_LST}
    for idx in (16, -1, 10**9):
        with pytest.raises(ValueError, match="outside"):
            status_of(claim, idx)


@pytest.mark.parametrize(
    "claim",
    [
        {"bits": 3, "lst": KAT_1BIT_LST},
        {"bits": True, "lst": KAT_1BIT_LST},
        {"bits": "1", "lst": KAT_1BIT_LST},
        {"lst": KAT_1BIT_LST},
        {"bits": 1},
        {"bits": 1, "lst": 5},
        {"bits": 1, "lst": ""},
        {"bits": 1, "lst": KAT_1BIT_LST + "="},
        {"bits": 1, "lst": "not base64!"},
        {"bits": 1, "lst": b64url_encode(b"plain bytes, not zlib")},
        {"bits": 1, "lst": b64url_encode(zlib.compress(b"\xff" * 100)[:-3])},
        {"bits": 1, "lst": b64url_encode(zlib.compress(b"\xff") + b"junk")},
        {"bits": 1, "lst": b64url_encode(zlib.compress(b""))},
        "not an object",
    ],
)
def test_malformed_claims_raise_value_error(claim: object) -> None:
    with pytest.raises(ValueError):
        status_of(claim, 0)  # type: ignore[arg-type]


def test_a_zip_bomb_is_refused_before_it_is_inflated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statuslist, "MAX_DECODED_BYTES", 1024)
    bomb = b64url_encode(zlib.compress(bytes(1025), 9))
    with pytest.raises(ValueError, match="more than 1024 bytes"):
        decode(bomb, 1)
    assert decode(b64url_encode(zlib.compress(bytes(1024), 9)), 1) == bytes(1024)


def test_the_real_limit_is_16_mib() -> None:
    assert statuslist.MAX_DECODED_BYTES == 16 * 1024 * 1024
    bomb = b64url_encode(zlib.compress(bytes(16 * 1024 * 1024 + 1), 9))
    with pytest.raises(ValueError, match="more than"):
        decode(bomb, 1)


@pytest.mark.parametrize(("statuses", "bits"), [([2], 1), ([4], 2), ([-1], 8), ([256], 8)])
def test_statuses_that_do_not_fit_their_width_are_refused(statuses: list[int], bits: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(statuses, bits)
