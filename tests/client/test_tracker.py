"""Positions and dedup as the SDK applies them: blobs by `seq` within an epoch, events by offset."""

from __future__ import annotations

import msgspec
import pytest

from roomcast.client.tracker import RoomTracker
from roomcast.core.blob import Blob, decode_blob, encode_blob, sequenced
from roomcast.core.errors import ProtocolError
from roomcast.core.protocol import Count, Joined, Position, Reset

EPOCH = 1764117000123456


def blob(room: str, offsets: list[int], seq: int = 0, prev: int = 0, epoch: int = EPOCH) -> Blob:
    data = encode_blob(room, 2, offsets, [b'{"o":%d}' % o for o in offsets])
    return decode_blob(sequenced(data, epoch, seq, prev) if seq else data)


def offsets(b: Blob | None) -> list[int]:
    return [] if b is None else b.offsets


def test_live_blobs_move_the_position_and_pass_whole() -> None:
    t = RoomTracker()
    b1 = blob("lobby", [10, 11], seq=5)
    assert t.blob(b1) is b1
    assert offsets(t.blob(blob("lobby", [12], seq=9, prev=5))) == [12]
    assert t.position_strings() == {"lobby": f"{EPOCH}:9"}
    assert t.since(["lobby", "news"]) == [f"lobby:{EPOCH}:9"]


def test_a_blob_at_or_below_the_position_in_the_same_epoch_is_dropped_whole() -> None:
    """A resume that overlaps what came live: the same blob twice is shown once."""
    t = RoomTracker()
    t.blob(blob("lobby", [10, 11], seq=5))
    t.blob(blob("lobby", [12], seq=9, prev=5))
    assert t.blob(blob("lobby", [12], seq=9, prev=5)) is None
    assert t.blob(blob("lobby", [10, 11], seq=5)) is None
    assert t.stale_blobs == 2
    assert t.position_strings() == {"lobby": f"{EPOCH}:9"}


def test_a_kafka_replay_in_new_blobs_shows_each_event_once() -> None:
    """Ingest restarted without a commit: events 10..12 come again, merged differently, with
    new seqs; only 13 is new."""
    t = RoomTracker()
    t.blob(blob("lobby", [10, 11], seq=5))
    t.blob(blob("lobby", [12], seq=9, prev=5))
    assert t.blob(blob("lobby", [10, 11, 12], seq=14, prev=9)) is None
    fresh = t.blob(blob("lobby", [12, 13], seq=20, prev=14))
    assert fresh is not None and fresh.offsets == [13]
    assert [bytes(e) for e in fresh.events] == [b'{"o":13}']
    assert fresh.seq == 20 and fresh.room == "lobby"  # the rest of the blob as it came
    # The position moved past the all-repeat blob too: a resume asks for what follows it.
    assert t.position_strings() == {"lobby": f"{EPOCH}:20"}


def test_a_new_epoch_is_not_compared_with_the_old_one() -> None:
    """The history was reset: seq starts again low; the blob is taken, offsets still dedup."""
    t = RoomTracker()
    t.blob(blob("lobby", [10], seq=500))
    got = t.blob(blob("lobby", [11], seq=3, epoch=EPOCH + 1))
    assert offsets(got) == [11]
    assert t.position_strings() == {"lobby": f"{EPOCH + 1}:3"}


def test_blobs_without_a_position_leave_it_alone_and_are_deduped_by_offset() -> None:
    t = RoomTracker()
    t.blob(blob("lobby", [10], seq=7))
    assert offsets(t.blob(blob("lobby", [10, 11]))) == [11]
    assert t.position_strings() == {"lobby": f"{EPOCH}:7"}


def test_rooms_are_independent() -> None:
    t = RoomTracker()
    t.blob(blob("a", [10], seq=7))
    assert offsets(t.blob(blob("b", [3], seq=2))) == [3]
    assert t.position_strings() == {"a": f"{EPOCH}:7", "b": f"{EPOCH}:2"}


def test_since_seeds_positions_and_a_bad_one_is_refused() -> None:
    t = RoomTracker({"lobby": f"{EPOCH}:40", "news": Position(EPOCH, 2)})
    assert t.blob(blob("lobby", [1], seq=40)) is None
    assert t.since(["lobby", "news"]) == [f"lobby:{EPOCH}:40", f"news:{EPOCH}:2"]
    with pytest.raises(ProtocolError):
        RoomTracker({"lobby": "yesterday"})


def test_joined_reset_and_count_are_remembered() -> None:
    t = RoomTracker()
    assert not t.joined(Joined("lobby"))
    assert t.recovered == {"lobby": None}
    assert not t.joined(Joined("lobby", recovered=True))
    assert t.joined(Joined("lobby", recovered=False, oldest=f"{EPOCH}:100"))
    assert t.recovered == {"lobby": False} and t.resets == 1
    t.reset(Reset("lobby", None))
    assert t.resets == 2
    t.count(Count("lobby", 12))
    t.count(Count("lobby", 11))
    assert t.counts == {"lobby": 11}


def test_trimmed_blob_is_still_a_blob() -> None:
    t = RoomTracker()
    t.blob(blob("lobby", [1, 2], seq=3))
    got = t.blob(blob("lobby", [2, 3], seq=4))
    assert got is not None
    assert msgspec.json.decode(msgspec.json.encode(got))["offsets"] == [3]
