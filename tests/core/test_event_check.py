"""check_event: what ingest dead-letters, with the reason it gives (the pure rule, no brokers)."""

from __future__ import annotations

import pytest

from roomcast.core.blob import check_event
from roomcast.core.errors import EventError


@pytest.mark.parametrize(
    "value",
    [
        b'{"text":"\xff"}',  # a byte that is never UTF-8, inside a string
        b'{"\xc3(":1}',  # a broken two-byte sequence, in a key
        b'["\xed\xa0\x80"]',  # a UTF-16 surrogate encoded as UTF-8
        b'"\xc0\xaf"',  # an overlong encoding of "/"
        b'"\xf4\x90\x80\x80"',  # above U+10FFFF
        b'"caf\xc3"',  # truncated at the end of the string
    ],
)
def test_invalid_utf8_inside_json_strings_is_rejected(value: bytes) -> None:
    with pytest.raises(EventError) as info:
        check_event(value)
    assert info.value.reason == "not_utf8"


@pytest.mark.parametrize(
    "value", [b'{"text":"caf\xc3\xa9 \xf0\x9f\x8e\x89"}', b'{"text":"\\u00e9\\ud83c\\udf89"}']
)
def test_valid_utf8_and_escapes_are_accepted(value: bytes) -> None:
    assert check_event(value) is value
