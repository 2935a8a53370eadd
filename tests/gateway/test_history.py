"""The room log (pure): the chain check, gaps held and filled, and what resumes are served from."""

from __future__ import annotations

import json

from roomcast.core.blob import decode_blob, encode_blob, sequenced
from roomcast.gateway.history import UNKNOWN, RoomLog

EPOCH = 1764117000123456


def raw(n: int) -> bytes:
    return encode_blob("r", 0, [n], [json.dumps({"n": n}).encode()])


def offer(log: RoomLog, seq: int, prev: int) -> object:
    return log.offer(seq, prev, sequenced(raw(seq), EPOCH, seq, prev))


def seqs(entries: object) -> list[int]:
    return [e.seq for e in entries]  # type: ignore[attr-defined]


def test_the_chain_passes_blobs_in_order_and_drops_repeats() -> None:
    log = RoomLog(EPOCH, size=4)
    assert offer(log, 10, 7) is not False  # the first one starts the chain, whatever its prev
    assert offer(log, 12, 10) is not False
    assert offer(log, 12, 10) is None and offer(log, 10, 7) is None  # seen: dropped
    assert log.last == 12 and seqs(log.entries) == [10, 12]
    for s in (13, 14, 15, 16):
        assert offer(log, s, s - 1) is not False
    assert seqs(log.entries) == [13, 14, 15, 16]  # the ring keeps `size`


def test_a_gap_holds_everything_after_it_until_filled_in_order() -> None:
    log = RoomLog(EPOCH)
    offer(log, 10, 0)
    assert offer(log, 15, 12) is False  # 11..12 never came
    assert offer(log, 16, 15) is False  # held behind the gap too, in order
    assert offer(log, 15, 12) is None
    assert log.gap() == (11, 15)
    entries, whole = log.fill([(12, raw(12))])
    assert whole and seqs(entries) == [12, 15, 16] and log.gap() is None
    first = decode_blob(entries[0].data)
    assert (first.seq, first.prev, first.epoch) == (12, 10, EPOCH)  # the chain spliced in
    assert offer(log, 17, 16) is not False


def test_a_gap_the_history_cannot_fill_is_reported() -> None:
    log = RoomLog(EPOCH)
    offer(log, 10, 0)
    offer(log, 15, 12)
    entries, whole = log.fill([])  # the history no longer has 12
    assert not whole and seqs(entries) == [15]


def test_after_serves_positions_the_log_reaches_and_only_those() -> None:
    log = RoomLog(EPOCH)
    assert log.after(5) is None  # nothing known yet
    for s, p in ((10, 7), (12, 10), (20, 12)):
        offer(log, s, p)
    assert seqs(log.after(7)) == [10, 12, 20]  # the first entry's predecessor
    assert seqs(log.after(10)) == [12, 20]
    assert log.after(20) == []
    assert log.after(11) is None  # not a position of this room
    assert log.after(6) is None  # older than the log: read the history
    assert log.after(21) is None  # newer than anything here yet


def test_older_blobs_read_from_the_history_are_prepended_and_the_ring_trims_later() -> None:
    log = RoomLog(EPOCH, size=2)
    offer(log, 30, 25)
    log.prepend([(20, raw(20)), (22, raw(22)), (25, raw(25)), (30, raw(30))], grow_to=10)
    assert seqs(log.entries) == [20, 22, 25, 30]  # 30 was already there: not twice
    assert log.entries[0].prev == UNKNOWN and log.entries[1].prev == 20
    assert seqs(log.after(20)) == [22, 25, 30]
    offer(log, 31, 30)
    assert seqs(log.entries) == [20, 22, 25, 30, 31]  # kept while resumes may need them
    log.trim()
    assert seqs(log.entries) == [30, 31]


def test_an_empty_log_learns_the_newest_position_from_a_read() -> None:
    log = RoomLog(EPOCH)
    log.prepend([(5, raw(5)), (9, raw(9))], grow_to=10)
    assert log.last == 9 and seqs(log.after(5)) == [9]
    assert offer(log, 9, 5) is None and offer(log, 11, 9) is not False


def test_a_read_older_than_a_read_links_what_viewers_get() -> None:
    """Two resumes, the second from further back: the blob the first read started with learns
    its predecessor, in its `prev` and in the bytes and frame a viewer gets (the hub state
    machine found viewers given `prev` -1 there)."""
    log = RoomLog(EPOCH)
    log.prepend([(3, raw(3))], grow_to=10)
    assert log.entries[0].prev == UNKNOWN
    log.entries[0].frame(None, False)  # framed for someone already
    log.prepend([(2, raw(2))], grow_to=10)
    entry = log.after(2)[0]  # type: ignore[index]
    assert entry.seq == 3 and entry.prev == 2
    blob = decode_blob(entry.data)
    assert (blob.seq, blob.prev, blob.epoch) == (3, 2, EPOCH)
    assert entry.frame(None, False).endswith(entry.data)
    assert decode_blob(entry.data).events == decode_blob(sequenced(raw(3), EPOCH, 3, 2)).events


def test_a_quiet_room_whose_last_blob_aged_out_goes_on_and_keeps_its_ring() -> None:
    log = RoomLog(EPOCH)
    offer(log, 10, 0)
    offer(log, 12, 10)
    assert offer(log, 40, 0) is not False  # 12 expired before 40 was stored: prev 0
    assert seqs(log.after(10)) == [12, 40] and seqs(log.after(12)) == [40]
