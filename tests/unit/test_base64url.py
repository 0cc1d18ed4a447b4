"""base64url without padding, said once (nhidel.base64url) for JWK, JWS and status lists."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nhidel.base64url import b64url_decode, b64url_encode


@given(st.binary(max_size=64))
def test_what_is_encoded_decodes_to_the_same_bytes_without_padding(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize("text", ["AAE=", "+/8", "A", "AAAAA", "AA E", "ü"])
def test_padding_the_standard_alphabet_and_impossible_lengths_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not base64url"):
        b64url_decode(text)
