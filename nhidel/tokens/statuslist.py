"""The IETF OAuth Token Status List encoding (draft-ietf-oauth-status-list).

A list holds one status of `bits` bits (1, 2, 4 or 8) per token index. Statuses are packed
into bytes so that index 0 sits in the least significant bits of byte 0; the bytes are
compressed with DEFLATE in the ZLIB format and base64url-encoded without padding (`lst`). A
token points at its entry with the claim `status: {"status_list": {"idx": N, "uri": URI}}`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from nhidel.base64url import b64url_decode, b64url_encode

VALID = 0
INVALID = 1
SUSPENDED = 2
BITS = (1, 2, 4, 8)
# A published list this large would be absurd; refusing more stops a zip bomb early.
MAX_DECODED_BYTES = 16 * 1024 * 1024
MAX_ENCODED_LENGTH = 4 * MAX_DECODED_BYTES


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ValueError(f"bits must be 1, 2, 4 or 8, not {bits!r}")
    return bits


def pack(statuses: Sequence[int], bits: int) -> bytes:
    """The uncompressed byte array: index 0 in the least significant bits of byte 0."""
    _check_bits(bits)
    per_byte = 8 // bits
    top = (1 << bits) - 1
    packed = bytearray((len(statuses) + per_byte - 1) // per_byte)
    for idx, status in enumerate(statuses):
        if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= top:
            raise ValueError(f"status {status!r} at index {idx} does not fit in {bits} bits")
        packed[idx // per_byte] |= status << (idx % per_byte * bits)
    return bytes(packed)


def encode(statuses: Sequence[int], bits: int) -> str:
    """The `lst` of a list of statuses: packed, ZLIB-compressed (level 9), base64url."""
    return b64url_encode(zlib.compress(pack(statuses, bits), 9))


def decode(lst: str, bits: int) -> bytes:
    """The uncompressed byte array of `lst`; ValueError on anything malformed or absurd."""
    _check_bits(bits)
    if not isinstance(lst, str) or not lst or len(lst) > MAX_ENCODED_LENGTH:
        raise ValueError("lst is not a non-empty string of a sane length")
    try:
        compressed = b64url_decode(lst)
    except ValueError:
        raise ValueError("lst is not base64url without padding") from None
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(compressed, MAX_DECODED_BYTES + 1)
    except zlib.error as exc:
        raise ValueError(f"lst is not ZLIB data: {exc}") from None
    if len(data) > MAX_DECODED_BYTES:
        raise ValueError(f"lst decompresses to more than {MAX_DECODED_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise ValueError("lst is truncated or has trailing data")
    if not data:
        raise ValueError("lst holds no statuses")
    return data


def unpack(data: bytes, bits: int) -> list[int]:
    """Every status in a byte array (the last byte's padding included)."""
    _check_bits(bits)
    per_byte = 8 // bits
    top = (1 << bits) - 1
    return [(byte >> (shift * bits)) & top for byte in data for shift in range(per_byte)]


def status_at(data: bytes, bits: int, idx: int) -> int:
    """The status at `idx` in a decoded byte array; ValueError when out of range."""
    per_byte = 8 // _check_bits(bits)
    if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(data) * per_byte:
        raise ValueError(f"index {idx!r} is outside the status list")
    return (data[idx // per_byte] >> (idx % per_byte * bits)) & ((1 << bits) - 1)


def status_of(status_list: Mapping[str, Any], idx: int) -> int:
    """The status of token `idx` in a status list token's `status_list` claim `{bits, lst}`.

    Raises ValueError when the claim is malformed or `idx` is outside the list.
    """
    if not isinstance(status_list, Mapping):
        raise ValueError("status_list is not an object")
    bits = _check_bits(status_list.get("bits"))
    lst = status_list.get("lst")
    if not isinstance(lst, str):
        raise ValueError("status_list.lst is not a string")
    return status_at(decode(lst, bits), bits, idx)
