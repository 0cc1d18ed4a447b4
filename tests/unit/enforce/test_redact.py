"""Known secrets never flow back: every form of an injected value is found and replaced by
`[redacted:NAME]`, whole or split across chunks anywhere, without touching other text."""

from __future__ import annotations

import base64
import json
import re
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhidel.enforce.redact import MIN_SCANNABLE_BYTES, Redactor, check_scannable
from nhidel.errors import UsageError

KEY = 'sk-live/ab"c\\déf 1+2~x'  # a slash, a quote, a backslash, a non-ASCII letter, a space
TOKEN = "ghp_Q9w8E7r6T5y4U3i2O1p0"
ASTRAL = "key-😀-0123456789"  # beyond the BMP: a surrogate pair in \uXXXX form


def redactor() -> Redactor:
    return Redactor({"KEY": KEY, "TOKEN": TOKEN, "ASTRAL": ASTRAL})


def forms(value: str) -> dict[str, str]:
    """Every way the value is expected to come back, by a label for the test id."""
    raw = value.encode()
    found = {
        "exact": value,
        "json ascii": json.dumps(value)[1:-1],
        "json utf-8": json.dumps(value, ensure_ascii=False)[1:-1],
        "json escaped slash": json.dumps(value)[1:-1].replace("/", "\\/"),
        "json every char \\u": "".join(
            f"\\u{int.from_bytes(pair, 'big'):04x}"
            for pair in zip(*[iter(value.encode("utf-16-be"))] * 2, strict=True)
        ),
        "json upper \\u": json.dumps(value)[1:-1].replace("\\u00e9", "\\u00E9"),
        "quote": urllib.parse.quote(value),
        "quote lower hex": re.sub(
            r"%[0-9A-F]{2}", lambda m: m[0].lower(), urllib.parse.quote(value)
        ),
        "quote_plus": urllib.parse.quote_plus(value),
        "percent every byte upper": "".join(f"%{b:02X}" for b in raw),
        "percent every byte lower": "".join(f"%{b:02x}" for b in raw),
        "hex lower": raw.hex(),
        "hex upper": raw.hex().upper(),
    }
    return found


def base64_forms(value: str) -> dict[str, str]:
    """base64 and base64url of the value after 0, 1, 2 other bytes and before a few more."""
    found = {}
    for offset in range(3):
        for after in (b"", b"!", b"!?", b"!?#"):
            data = b"\xfb\xff\xfe"[:offset] + value.encode() + after
            found[f"base64 offset {offset} +{len(after)}"] = base64.b64encode(data).decode()
            found[f"base64url offset {offset} +{len(after)}"] = base64.urlsafe_b64encode(
                data
            ).decode()
    return found


def all_forms() -> list[tuple[str, str, str]]:
    return [
        (name, label, text)
        for name, value in (("KEY", KEY), ("TOKEN", TOKEN), ("ASTRAL", ASTRAL))
        for label, text in (forms(value) | base64_forms(value)).items()
    ]


def survives(value: str, text: str) -> list[str]:
    """The forms of `value` still found in `text` (base64: the value's own characters)."""
    left = [label for label, form in forms(value).items() if form in text]
    raw = value.encode()
    for offset in range(3):
        core = base64.b64encode(bytes(offset) + raw)
        start, stop = -(-offset * 8 // 6), (offset + len(raw)) * 8 // 6
        encoded = (core, base64.urlsafe_b64encode(bytes(offset) + raw))
        left.extend(f"base64 offset {offset}" for e in encoded if e[start:stop].decode() in text)
    return left


@pytest.mark.parametrize(
    ("name", "label", "text"), all_forms(), ids=[f"{n}-{lbl}" for n, lbl, _ in all_forms()]
)
def test_each_form_of_each_secret_is_redacted_whole_and_streamed(
    name: str, label: str, text: str
) -> None:
    message = f"before {text} after"
    out, names = redactor().redact_text(message)
    assert names == [name]
    assert f"[redacted:{name}]" in out
    assert out.startswith("before ") and out.endswith(" after") or "base64" in label
    value = {"KEY": KEY, "TOKEN": TOKEN, "ASTRAL": ASTRAL}[name]
    assert survives(value, out) == []
    # One byte at a time gives the same.
    stream = redactor().stream()
    data = message.encode()
    streamed = b"".join(stream.feed(data[i : i + 1]) for i in range(len(data)))
    assert (streamed + stream.finish()).decode() == out


def test_base64_keeps_only_the_neighbours_characters() -> None:
    # Of "xx" + value, "eHh" encodes the two x's alone: it stays; the rest goes.
    out, _ = redactor().redact_text(base64.b64encode(b"xx" + TOKEN.encode()).decode())
    assert out.startswith("eHh[redacted:TOKEN]")
    assert len(out) - len("eHh[redacted:TOKEN]") <= 2  # a last character shared with what ends it


def test_text_without_secrets_is_untouched() -> None:
    text = (
        '{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"sk-live is a '
        'prefix, ghp_ too; %41%42 \\u0041 4142 QUJD 0123456789abcdef 😀"}]}}\n'
    )
    assert redactor().redact_text(text) == (text, [])
    assert redactor().redact_bytes(bytes(range(256)) * 64) == (bytes(range(256)) * 64, [])


def test_a_json_rpc_message_stays_valid_json_with_every_form_inside() -> None:
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "content": [
                {"type": "text", "text": f"{label}: {text}"} for _n, label, text in all_forms()
            ],
            "env": {"KEY": KEY, "ASTRAL": ASTRAL, f"{TOKEN}": "as a key"},
        },
    }
    for ensure_ascii in (True, False):
        line = json.dumps(message, ensure_ascii=ensure_ascii)
        out, names = redactor().redact_text(line)
        assert sorted(names) == ["ASTRAL", "KEY", "TOKEN"]
        decoded = json.loads(out)  # still JSON
        flat = json.dumps(decoded, ensure_ascii=False)
        for value in (KEY, TOKEN, ASTRAL):
            assert survives(value, flat) == []
            assert survives(value, out) == []


@pytest.mark.parametrize(
    ("secret", "inner"),
    [
        # decoded: a newline, then the rest of the value; raw: "\\" "n" + the rest
        ("nSECRETxyz1", r"\nSECRETxyz1"),
        # the same after an escaped backslash: three backslashes, the last escapes the n
        ("nSECRETxyz1", r"\\\nSECRETxyz1"),
        # an escaped backslash before the value: nothing to widen
        ("nSECRETxyz1", r"\\nSECRETxyz1"),
        # starting inside a \u escape
        ("41SECRETxyz", r"\u0041SECRETxyz"),
        # ending on a backslash that escapes the closing quote
        ("SECRETxyz1\\", r"SECRETxyz1\""),
        # ending inside a \u escape
        ("SECRETxyz\\u00", r"SECRETxyz\u0041"),
    ],
)
def test_a_region_next_to_a_json_escape_keeps_the_message_json(secret: str, inner: str) -> None:
    line = '{"text": "' + inner + '", "next": "kept"}'
    json.loads(line)  # the test's own input is JSON
    out, names = Redactor({"S": secret}).redact_text(line)
    assert names == ["S"]
    assert json.loads(out)["next"] == "kept"
    assert "SECRET" not in out


def test_overlapping_secrets_are_redacted_as_one_region_naming_both() -> None:
    r = Redactor({"LEFT": "xxxxabcd1234", "RIGHT": "abcd1234yyyy"})
    out, names = r.redact_text("<xxxxabcd1234yyyy>")
    assert out == "<[redacted:LEFT][redacted:RIGHT]>"
    assert names == ["LEFT", "RIGHT"]


def test_a_secret_that_is_a_prefix_of_another_leaves_nothing_of_the_longer() -> None:
    for order in ((("SHORT", "abcdefgh"), ("LONG", "abcdefgh-ijklmnop")),):
        for secrets in (dict(order), dict(reversed(order))):
            r = Redactor(secrets)
            assert r.redact_text("=abcdefgh-ijklmnop=")[0] == "=[redacted:LONG][redacted:SHORT]="
            assert r.redact_text("=abcdefgh=") == ("=[redacted:SHORT]=", ["SHORT"])
            hexed = b"abcdefgh-ijklmnop".hex()
            assert b"ijkl".hex() not in r.redact_text(hexed)[0]


def test_adjacent_hits_are_separate_regions() -> None:
    out, names = redactor().redact_text(TOKEN + TOKEN)
    assert out == "[redacted:TOKEN][redacted:TOKEN]"
    assert names == ["TOKEN"]


def test_a_value_repeated_end_to_end_is_one_region_with_bounded_memory() -> None:
    r = Redactor({"A": "aaaaaaaaaa"})
    stream = r.stream()
    out = b"".join(stream.feed(b"a" * 1000) for _ in range(1000))
    assert out == b""  # all of it is one region that can still grow
    assert len(stream._buffer) < 2 * r.max_length
    assert stream.feed(b"!") + stream.finish() == b"[redacted:A]!"


def test_holdback_is_less_than_the_longest_form() -> None:
    r = redactor()
    stream = r.stream()
    for chunk in (b"x" * 5000, b"y", b"z" * 3, TOKEN.encode()[:5], b"tail" * 100):
        stream.feed(chunk)
        assert stream.held <= r.holdback == r.max_length - 1
    assert stream.finish().endswith(b"tail")


def test_what_cannot_start_a_match_is_emitted_at_once() -> None:
    stream = redactor().stream()
    assert stream.feed(b"data: hello\n\n" * 1000)[:13] == b"data: hello\n\n"
    assert stream.held <= redactor().holdback


def test_short_values_are_refused_as_unscannable() -> None:
    with pytest.raises(UsageError):
        check_scannable("a" * (MIN_SCANNABLE_BYTES - 1))
    with pytest.raises(UsageError):
        Redactor({"PIN": "1234"})
    check_scannable("é" * (MIN_SCANNABLE_BYTES // 2))  # bytes count, not characters


# -- any split of any text gives the whole text's output -------------------------------------

SECRETS = {"KEY": KEY, "TOKEN": TOKEN, "SHORT": "ghp_Q9w8", "OVER": "O1p0-overlap"}
REDACTOR = Redactor(SECRETS)


def _encodings() -> st.SearchStrategy[str]:
    values = st.sampled_from(sorted(SECRETS.values()))
    labelled = values.flatmap(
        lambda v: st.sampled_from(sorted((forms(v) | base64_forms(v)).values()))
    )
    return labelled


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.one_of(st.text(max_size=12), _encodings()), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=800), max_size=12),
)
def test_any_split_of_any_text_gives_the_whole_texts_output(
    pieces: list[str], cuts: list[int]
) -> None:
    data = "".join(pieces).encode("utf-8", "surrogatepass")
    whole, names = REDACTOR.redact_bytes(data)
    stream = REDACTOR.stream()
    out = []
    previous = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        out.append(stream.feed(data[previous:cut]))
        assert stream.held <= REDACTOR.holdback
        previous = cut
    out.append(stream.feed(data[previous:]))
    out.append(stream.finish())
    assert b"".join(out) == whole
    assert stream.names_hit == names
    text = whole.decode("utf-8", "surrogatepass")
    for value in SECRETS.values():
        assert survives(value, text) == []


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200), at=st.integers(min_value=0, max_value=200))
def test_every_chunk_boundary_through_a_secret_still_finds_it(text: str, at: int) -> None:
    data = (text[:at] + TOKEN + text[at:]).encode("utf-8", "surrogatepass")
    whole, _ = REDACTOR.redact_bytes(data)
    for cut in range(len(data) + 1):
        stream = REDACTOR.stream()
        assert stream.feed(data[:cut]) + stream.feed(data[cut:]) + stream.finish() == whole
    assert TOKEN.encode() not in whole


def test_with_no_secrets_everything_passes_at_once() -> None:
    stream = Redactor({}).stream()
    assert [stream.feed(b"abc"), stream.feed(b"def"), stream.finish()] == [b"abc", b"def", b""]
    assert Redactor({}).redact_text("anything") == ("anything", [])


@settings(max_examples=150, deadline=None)
@given(
    value=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=MIN_SCANNABLE_BYTES),
    before=st.text(max_size=6),
    after=st.text(max_size=6),
)
def test_any_value_is_found_in_every_form(value: str, before: str, after: str) -> None:
    r = Redactor({"V": value})
    for label, form in (forms(value) | base64_forms(value)).items():
        out, names = r.redact_text(before + form + after)
        assert names == ["V"], label
        assert survives(value, out) == [], label


def test_a_value_ending_in_a_backslash_before_a_multibyte_character_keeps_the_text_whole() -> None:
    # Found by hypothesis: the escape a trailing backslash starts took half of the UTF-8
    # character after it, and the redacted text could not be decoded.
    value = "0000000\\"
    out, names = Redactor({"V": value}).redact_text(value + "\x80é")
    assert names == ["V"] and "[redacted:V]" in out and value not in out
