"""The merge window: leading edge, one blob per room per window, limits, drain."""

from __future__ import annotations

import itertools
import math

import msgspec
import pytest

from roomcast.core.blob import decode_blob
from roomcast.core.merge import MergeWindow, PendingBlob


def ev(i: int) -> bytes:
    return b'{"seq":%d}' % i


Timed = list[tuple[float, PendingBlob]]


def run(window: MergeWindow, events: list[tuple[float, str, int]]) -> Timed:
    """Feed (time, room, offset) events, calling due() as a real loop would; return (t, blob)."""
    out: Timed = []
    for t, room, off in events:
        nd = window.next_due()
        while nd is not None and nd <= t:
            out += [(nd, b) for b in window.due(nd)]
            nd = window.next_due()
        out += [(t, b) for b in window.add(room, 0, off, ev(off), t)]
    nd = window.next_due()
    while nd is not None:
        out += [(nd, b) for b in window.due(nd)]
        nd = window.next_due()
    return out


def test_first_event_of_idle_room_is_published_at_once() -> None:
    w = MergeWindow(1.0)
    blobs = w.add("lobby", 0, 7, ev(7), now=100.0)
    assert [b.offsets for b in blobs] == [[7]]


def test_events_within_window_merge_into_one_blob_at_window_end() -> None:
    w = MergeWindow(1.0)
    w.add("r", 0, 0, ev(0), now=0.0)
    assert w.add("r", 0, 1, ev(1), now=0.2) == ()
    assert w.add("r", 0, 2, ev(2), now=0.7) == ()
    assert w.due(0.99) == []
    (blob,) = w.due(1.0)
    assert blob.offsets == [1, 2]
    assert decode_blob(blob.encode()).decoded_events() == [{"seq": 1}, {"seq": 2}]


def test_room_idle_for_a_window_gets_leading_edge_again() -> None:
    w = MergeWindow(1.0)
    w.add("r", 0, 0, ev(0), now=0.0)
    assert w.due(1.0) == []  # nothing buffered: the room is forgotten
    assert w.rooms == 0
    assert [b.offsets for b in w.add("r", 0, 1, ev(1), now=1.5)] == [[1]]


@pytest.mark.parametrize("window_s,rate_hz,duration_s", [(1.0, 500, 10.0), (0.25, 90, 3.3)])
def test_hot_room_gets_at_most_one_blob_per_window_plus_leading(
    window_s: float, rate_hz: int, duration_s: float
) -> None:
    w = MergeWindow(window_s)
    n = int(rate_hz * duration_s)
    events = [(i / rate_hz, "hot", i) for i in range(n)]
    out = run(w, events)
    assert len(out) <= math.ceil(duration_s / window_s) + 1
    # every event exactly once, in order
    assert [o for _, b in out for o in b.offsets] == list(range(n))
    # consecutive blobs are at least a window apart, except the leading one
    times = [t for t, _ in out]
    assert all(b - a >= window_s - 1e-9 for a, b in itertools.pairwise(times[1:]))


def test_rooms_are_merged_independently() -> None:
    w = MergeWindow(1.0)
    events = [(i * 0.01, f"room-{i % 3}", i) for i in range(300)]
    out = run(w, events)
    for r in range(3):
        offs = [o for _, b in out if b.room == f"room-{r}" for o in b.offsets]
        assert offs == [i for i in range(300) if i % 3 == r]


def test_max_events_flushes_early() -> None:
    w = MergeWindow(1.0, max_events=3)
    w.add("r", 0, 0, ev(0), now=0.0)
    assert w.add("r", 0, 1, ev(1), now=0.1) == ()
    assert w.add("r", 0, 2, ev(2), now=0.1) == ()
    (blob,) = w.add("r", 0, 3, ev(3), now=0.1)
    assert blob.offsets == [1, 2, 3]
    assert w.buffered_events == 0


def test_max_bytes_flushes_early() -> None:
    w = MergeWindow(1.0, max_bytes=20)
    w.add("r", 0, 0, ev(0), now=0.0)
    w.add("r", 0, 1, ev(1), now=0.1)  # 9 bytes
    (blob,) = w.add("r", 0, 2, b'{"pad":"0123456789"}', now=0.1)
    assert blob.offsets == [1, 2]


def test_window_zero_means_one_blob_per_event() -> None:
    w = MergeWindow(0.0)
    for i in range(5):
        assert [b.offsets for b in w.add("r", 0, i, ev(i), now=0.0)] == [[i]]
    assert w.next_due() is None


def test_drain_takes_only_the_revoked_partitions() -> None:
    w = MergeWindow(1.0)
    for p in (0, 1):
        w.add(f"r{p}", p, 0, ev(0), now=0.0)
        w.add(f"r{p}", p, 1, ev(1), now=0.1)
    (blob,) = w.drain({1})
    assert (blob.room, blob.offsets) == ("r1", [1])
    assert [b.room for b in w.drain()] == ["r0"]
    assert w.buffered_events == 0


def test_partition_change_within_a_room_keeps_positions_exact() -> None:
    w = MergeWindow(1.0)
    w.add("r", 0, 0, ev(0), now=0.0)
    w.add("r", 0, 1, ev(1), now=0.1)
    (old,) = w.add("r", 5, 0, ev(9), now=0.2)
    assert (old.partition, old.offsets) == (0, [1])
    (new,) = w.due(1.0)
    assert (new.partition, new.offsets) == (5, [0])


def test_negative_window_is_rejected() -> None:
    with pytest.raises(ValueError):
        MergeWindow(-1)


def test_blob_msg_id_is_stable_and_distinct() -> None:
    a = PendingBlob("r", 1, [4, 5], [ev(4), ev(5)])
    b = PendingBlob("r", 1, [4, 5], [ev(4), ev(5)])
    c = PendingBlob("r", 1, [4], [ev(4)])
    assert a.msg_id == b.msg_id != c.msg_id


def test_encoded_blob_embeds_events_byte_for_byte() -> None:
    raw = b'{"text": "caf\\u00e9 \xf0\x9f\x8e\x89",  "n" : 1.50}'
    blob = PendingBlob("r", 2, [9], [raw]).encode()
    assert raw in blob
    decoded = decode_blob(blob)
    assert bytes(decoded.events[0]) == raw
    assert msgspec.json.decode(blob)["offsets"] == [9]


def test_each_blob_carries_the_produce_time_of_its_first_event() -> None:
    """The leading edge, a merged window, an early cut and a drain each keep the Kafka timestamp
    of the event that started the blob (its oldest), not of a later one."""
    w = MergeWindow(1.0, max_events=3)
    (lead,) = w.add("r", 0, 0, ev(0), now=0.0, produced_ms=1000)
    assert lead.produced_ms == 1000
    assert w.add("r", 0, 1, ev(1), now=0.1, produced_ms=1100) == ()
    assert w.add("r", 0, 2, ev(2), now=0.2, produced_ms=1200) == ()
    (cut,) = w.add("r", 0, 3, ev(3), now=0.3, produced_ms=1300)  # max_events: cut early
    assert (cut.offsets, cut.produced_ms) == ([1, 2, 3], 1100)
    w.add("r", 0, 4, ev(4), now=0.4, produced_ms=1400)
    w.add("r", 0, 5, ev(5), now=0.5, produced_ms=900)  # out of order: still the first one's
    (merged,) = w.due(1.0)
    assert (merged.offsets, merged.produced_ms) == ([4, 5], 1400)
    w.add("r", 0, 6, ev(6), now=1.1, produced_ms=2000)
    (drained,) = w.drain()
    assert (drained.offsets, drained.produced_ms) == ([6], 2000)
    assert w.add("q", 0, 0, ev(0), now=5.0)[0].produced_ms == -1  # not given: unknown
