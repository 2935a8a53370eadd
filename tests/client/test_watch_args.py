"""`roomcast watch` argument checks and the blob line's frame, no network needed."""

from __future__ import annotations

import subprocess

from roomcast.client.viewer import wire_bytes
from roomcast.core.blob import decode_blob, encode_blob, sequenced
from tests.support import ROOMCAST


def test_a_blob_line_shows_the_frame_exactly_as_the_gateway_sent_it() -> None:
    plain = encode_blob("lobby", 3, [10, 11], [b'{"text":"hi"}', b'{"like":1}'])
    framed = sequenced(plain, 1764117000123456, 1234, 1201)
    assert wire_bytes(decode_blob(framed)) == framed
    assert wire_bytes(decode_blob(plain)) == plain


def test_watch_refuses_a_bad_since_and_one_for_a_room_it_does_not_watch() -> None:
    bad = subprocess.run(
        [*ROOMCAST, "watch", "lobby", "--since", "lobby:yesterday"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "since must be" in bad.stderr, bad.stderr
    other = subprocess.run(
        [*ROOMCAST, "watch", "lobby", "--since", "news:17:4"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert other.returncode == 2 and "news is not one of the rooms" in other.stderr, other.stderr
