"""Commit-after-ack tracking and event-level dedup."""

from __future__ import annotations

import random

import msgspec

from roomcast.core.blob import decode_blob, encode_blob
from roomcast.core.positions import Deduper, PartitionOffsets


def test_nothing_consumed_means_nothing_to_commit() -> None:
    assert PartitionOffsets().committable() is None


def test_commit_stops_below_the_oldest_unacked_event() -> None:
    p = PartitionOffsets()
    for o in range(10, 16):
        p.consumed(o)
    assert p.committable() == 10
    p.done([12, 13])  # a later blob acked first
    assert p.committable() == 10
    p.done([10, 11])
    assert p.committable() == 14
    p.done([14, 15])
    assert p.committable() == 16
    assert p.in_flight == 0


def test_gaps_in_offsets_are_fine() -> None:
    p = PartitionOffsets()
    for o in (3, 7, 20):
        p.consumed(o)
    p.done([3, 7])
    assert p.committable() == 20
    p.done([20])
    assert p.committable() == 21


def test_a_batch_consumed_at_once_commits_like_one_by_one() -> None:
    p = PartitionOffsets()
    p.consumed_many([5, 6, 9])
    p.consumed_many([])
    assert p.committable() == 5
    p.done([6, 9])
    assert p.committable() == 5
    p.done([5])
    assert p.committable() == 10
    assert p.last_consumed == 9


def test_commit_point_matches_a_model_under_any_ack_order() -> None:
    rng = random.Random(7)
    p = PartitionOffsets()
    unacked: set[int] = set()
    offset = 100
    for _ in range(300):
        if rng.random() < 0.5:  # a fetched batch, with an occasional gap (compaction, markers)
            batch = []
            for _ in range(rng.randint(1, 20)):
                offset += rng.choice((1, 1, 1, 3))
                batch.append(offset)
            p.consumed_many(batch)
            unacked.update(batch)
        elif unacked:  # a blob of some of them is acked, in any order
            acked = rng.sample(sorted(unacked), rng.randint(1, min(8, len(unacked))))
            p.done(acked)
            unacked.difference_update(acked)
        expected = min(unacked) if unacked else offset + 1
        assert p.committable() == expected
        assert p.in_flight == len(unacked)


def blob(room: str, part: int, offsets: list[int]) -> bytes:
    return encode_blob(room, part, offsets, [b'{"o":%d}' % o for o in offsets])


def test_dedup_drops_replayed_events_even_when_merged_differently() -> None:
    d = Deduper()
    first = [blob("r", 0, [1, 2, 3]), blob("r", 0, [4, 5])]
    replay = [blob("r", 0, [3, 4]), blob("r", 0, [5, 6, 7])]  # other merge boundaries
    got = [o for b in first + replay for o, _ in d.fresh(decode_blob(b))]
    assert got == [1, 2, 3, 4, 5, 6, 7]


def test_dedup_is_per_room_and_partition() -> None:
    d = Deduper()
    assert [o for o, _ in d.fresh(decode_blob(blob("a", 0, [5])))] == [5]
    assert [o for o, _ in d.fresh(decode_blob(blob("b", 0, [1])))] == [1]
    assert [o for o, _ in d.fresh(decode_blob(blob("a", 1, [1])))] == [1]
    assert d.fresh(decode_blob(blob("a", 0, [5]))) == []
    assert d.last("a", 0) == 5


def test_dedup_returns_the_event_bytes() -> None:
    d = Deduper()
    ((off, raw),) = d.fresh(decode_blob(blob("r", 3, [42])))
    assert off == 42 and msgspec.json.decode(raw) == {"o": 42}
