"""Viewer counts across workers (counts.py), pure: messages handed from one Counts to another;
and the hub's side of them (local counts, `count` pushes), with fake viewers."""

from __future__ import annotations

import json

import msgspec
import pytest

from roomcast.core.protocol import Count, Position, encode_server_message
from roomcast.gateway.counts import CountMessage, Counts, decode_message, encode_message
from roomcast.gateway.hub import Hub
from tests.gateway.test_hub import FakeViewer, live_room, opened

IV = 2.0  # the interval


def deliver(messages: list[CountMessage], now: float, *to: Counts) -> list[bool]:
    """Each message through the wire format to every receiver; the gaps they report."""
    gaps = []
    for m in messages:
        wire = decode_message(encode_message(m))
        gaps += [c.receive(wire, now) for c in to]
    return gaps


def exchange(workers: list[Counts], now: float) -> None:
    """One round: every worker publishes what is due and everyone else hears it."""
    for w in workers:
        deliver(w.outgoing(now), now, *[o for o in workers if o is not w])


def settle(workers: list[Counts]) -> None:
    """Two rounds, at 0 and at IV: the first snapshots, then the answers to the newcomers."""
    exchange(workers, 0.0)
    exchange(workers, IV)


def test_the_message_is_json_with_only_what_is_needed() -> None:
    c = Counts("abc-0", IV)
    c.update_local({"lobby": 3})
    [first] = c.outgoing(0.0)
    assert json.loads(encode_message(first)) == {
        "worker": "abc-0", "seq": 1, "interval": 2.0, "rooms": {"lobby": 3}, "full": True,
    }  # fmt: skip
    assert c.outgoing(0.1) == []  # nothing new, and the interval has not passed
    [beat] = c.outgoing(IV)
    assert json.loads(encode_message(beat)) == {"worker": "abc-0", "seq": 2, "interval": 2.0}
    with pytest.raises(msgspec.DecodeError):
        decode_message(b'{"worker":"x"}')


def test_totals_add_up_every_workers_share() -> None:
    a, b, c = Counts("a", IV), Counts("b", IV), Counts("c", IV)
    a.update_local({"lobby": 3, "news": 1})
    b.update_local({"lobby": 2})
    exchange([a, b, c], 0.0)  # each one's first message is a snapshot
    for w in (a, b, c):
        assert (w.total("lobby"), w.total("news"), w.total("nobody")) == (5, 1, 0)
        assert w.cluster_viewers() == 6


def test_only_changed_rooms_are_sent_and_an_emptied_room_is_sent_as_0() -> None:
    a, b = Counts("a", IV), Counts("b", IV)
    a.update_local({"r1": 1, "r2": 5, "r3": 7})
    settle([a, b])
    a.update_local({"r1": 2, "r3": 7})  # r1 grew, r2 emptied, r3 as it was
    [delta] = a.outgoing(2 * IV)
    assert (delta.full, delta.rooms) == (False, {"r1": 2, "r2": 0})
    deliver([delta], 2 * IV, b)
    assert (b.total("r1"), b.total("r2"), b.total("r3")) == (2, 0, 7)
    assert "r2" not in b.totals  # rooms nobody watches are not kept


def test_changes_after_a_quiet_interval_go_at_once_then_at_most_once_per_interval() -> None:
    a = Counts("a", IV)
    assert a.outgoing(0.0)[0].full  # the first message
    assert a.outgoing(1.0) == []
    [beat] = a.outgoing(IV)
    assert beat.rooms == {}
    a.update_local({"r": 1})
    assert a.outgoing(IV + 0.25)[0].rooms == {"r": 1}  # the last change went out long ago: now
    a.update_local({"r": 2})
    assert a.outgoing(IV + 0.5) == []  # a change went out 0.25 s ago: wait for the interval
    assert a.outgoing(2 * IV + 0.25)[0].rooms == {"r": 2}


def test_a_snapshot_every_tenth_message() -> None:
    a = Counts("a", IV)
    a.update_local({"r": 1})
    fulls = [m.full for t in range(30) for m in a.outgoing(t * IV)]
    assert fulls == [True] + ([False] * 9 + [True]) * 2 + [False] * 9


def test_a_new_worker_learns_everything_within_one_interval() -> None:
    a, b = Counts("a", IV), Counts("b", IV)
    a.update_local({"r": 4, "s": 1})
    for t in range(5):  # a runs alone for a while: its next messages are deltas or heartbeats
        a.outgoing(t * IV)
    late = Counts("late", IV, now=5 * IV)
    late.update_local({"r": 1})
    deliver(late.outgoing(5 * IV), 5 * IV, a)
    assert a.total("r") == 5
    [answer] = a.outgoing(5 * IV + 0.25)  # a heard a newcomer: its next message is a snapshot
    assert answer.full and answer.rooms == {"r": 4, "s": 1}
    deliver([answer], 5 * IV + 0.25, late)
    assert (late.total("r"), late.total("s")) == (5, 1)
    assert late.known(6 * IV)  # an interval on, every worker it heard has sent it everything
    assert not b.known(0.5 * IV)


def test_a_missed_message_asks_for_a_snapshot_and_the_snapshot_repairs_the_share() -> None:
    a, b = Counts("a", IV), Counts("b", IV)
    a.update_local({"r": 3, "s": 2})
    settle([a, b])
    a.update_local({"r": 3})  # s emptied...
    lost = a.outgoing(2 * IV)  # ...in a message b never gets
    assert lost[0].rooms == {"s": 0}
    a.update_local({"r": 4})
    [after_gap] = a.outgoing(3 * IV)
    assert deliver([after_gap], 3 * IV, b) == [True]  # b sees the gap
    assert b.total("r") == 4  # what it did get is right: counts are absolute
    assert b.total("s") == 2  # what it missed is not (yet)
    assert not b.shares["a"].complete
    [ask] = b.outgoing(3 * IV)
    assert ask.want == ["a"]
    deliver([ask], 3 * IV, a)
    [snapshot] = a.outgoing(4 * IV)  # asked: its next message is a snapshot
    assert snapshot.full
    assert deliver([snapshot], 4 * IV, b) == [False]
    assert (b.total("r"), b.total("s")) == (4, 0)
    assert b.shares["a"].complete and b.outgoing(4 * IV)[0].want == []


def test_a_silent_worker_expires_after_three_intervals() -> None:
    a, b, dead = Counts("a", IV), Counts("b", IV), Counts("dead", IV)
    a.update_local({"r": 1})
    dead.update_local({"r": 10})
    for t in range(3):
        exchange([a, b, dead], t * IV)
    assert b.total("r") == 11
    for t in range(3, 7):  # dead says nothing more; a keeps sending heartbeats
        exchange([a, b], t * IV)
        assert b.expire(t * IV) == ([] if t * IV - 2 * IV <= 3 * IV else ["dead"])
    assert b.total("r") == 1 and set(b.shares) == {"a"}
    assert b.expire(100 * IV) == ["a"]  # a heard last at 6 IV
    assert b.total("r") == 0 and b.totals == {} and b.cluster_viewers() == 0


def test_heartbeats_keep_a_worker_with_no_change_alive() -> None:
    a, b = Counts("a", IV), Counts("b", IV)
    a.update_local({"r": 2})
    for t in range(20):
        exchange([a, b], t * IV)
        assert b.expire(t * IV + 0.25) == []
    assert b.total("r") == 2


def test_a_stopping_worker_takes_its_viewers_with_it() -> None:
    a, b = Counts("a", IV), Counts("b", IV)
    a.update_local({"r": 2})
    exchange([a, b], 0.0)
    assert b.total("r") == 2
    deliver([a.farewell()], 0.5, b)
    assert b.total("r") == 0 and b.shares == {}  # forgotten at once, not after 3 intervals


def test_a_big_snapshot_is_split_and_a_missed_part_is_not_taken_for_the_whole() -> None:
    a = Counts("a", IV, max_rooms=2)
    rooms = {f"r{i}": i + 1 for i in range(5)}
    a.update_local(rooms)
    parts = a.outgoing(0.0)
    assert [(len(p.rooms), p.full, p.more) for p in parts] == [
        (2, True, True), (2, False, True), (1, False, False),
    ]  # fmt: skip
    whole = Counts("whole", IV)
    assert deliver(parts, 0.0, whole) == [False] * 3
    assert {r: whole.total(r) for r in rooms} == rooms and whole.shares["a"].complete

    # The next snapshot loses its middle part: the part after the gap does not end it, so no
    # room of the lost part is taken for emptied (r2 and r3 still have viewers).
    partial = Counts("partial", IV)
    deliver(parts, 0.0, partial)
    for t in range(1, 11):  # heartbeats up to the next snapshot (every 10th message)
        sent = a.outgoing(t * IV)
        if t < 10:
            deliver(sent, t * IV, partial)
    assert [(p.full, p.more) for p in sent] == [(True, True), (False, True), (False, False)]
    assert deliver([sent[0], sent[2]], 10 * IV, partial) == [False, True]
    assert not partial.shares["a"].complete
    assert {r: partial.total(r) for r in rooms} == rooms


def test_viewers_get_a_changed_total_at_most_once_per_interval() -> None:
    a, b = Counts("a", IV), Counts("b", IV)
    a.update_local({"r": 1})
    b.update_local({"r": 1, "only-b": 1})
    exchange([a, b], 0.0)
    assert a.pushes(0.5) == []  # not before the counts are known (an interval, all heard)
    exchange([a, b], 0.5)
    assert sorted(a.pushes(IV)) == [("r", 2)]  # only rooms with a local viewer
    b.update_local({"r": 2, "only-b": 1})
    deliver(b.outgoing(IV + 0.1), IV + 0.1, a)
    assert a.pushes(IV + 0.25) == []  # pushed 0.25 s ago: waits
    assert a.pushes(2 * IV) == [("r", 3)]
    assert a.pushes(5 * IV) == []  # no change, no push
    b.update_local({"r": 1, "only-b": 1})
    deliver(b.outgoing(2 * IV + 0.1), 2 * IV + 0.1, a)
    b.update_local({"r": 2, "only-b": 1})
    deliver(b.outgoing(3 * IV + 0.1), 3 * IV + 0.1, a)
    assert a.pushes(4 * IV) == []  # back to what its viewers were told last: nothing to push
    a.update_local({})  # nobody here: nothing to push, and nothing remembered
    assert a.pushes(5 * IV) == [] and a._pushed == {}


def test_the_hub_counts_its_rooms_and_a_count_never_overtakes_a_pending_joined() -> None:
    hub: Hub[FakeViewer] = Hub()
    early, late, elsewhere = opened(hub, "early"), opened(hub, "late"), opened(hub, "elsewhere")
    live_room(hub, "r", early)
    live_room(hub, "s", elsewhere)
    hub.join(late, "r")  # already subscribed: joined at once
    assert (hub.local_count("r"), hub.local_count("nobody")) == (2, 0)
    assert hub.local_counts() == {"r": 2, "s": 1}
    pending = opened(hub, "pending")
    hub.join(pending, "t")  # t is being subscribed: its `joined` is owed
    hub.join(pending, "r")  # r's `joined` queues behind t's
    count = encode_server_message(Count("r", 3))
    assert hub.broadcast("r", count) == 3 and hub.broadcast("nobody", count) == 0
    for v in (early, late):
        assert v.sent[-1] == {"type": "count", "room": "r", "viewers": 3}
    assert elsewhere.sent == [{"type": "joined", "room": "s"}]
    assert pending.sent == []  # nothing overtakes the `joined` it is owed
    hub.subscribed("t")
    assert [m["type"] for m in pending.sent] == ["joined", "joined", "count"]
    hub.close(late)
    assert hub.local_counts() == {"r": 2, "s": 1, "t": 1}
    resuming = opened(hub, "resuming")  # not on the live fan-out until it has what it missed
    hub.join(resuming, "u", Position(1, 5))
    assert hub.local_count("u") == 1
    assert hub.broadcast("u", encode_server_message(Count("u", 1))) == 1
    assert resuming.sent == []  # behind its `joined`, still owed
