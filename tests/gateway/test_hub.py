"""The hub, sans I/O: fake transports in, frames and decisions out. No sockets, no broker."""

from __future__ import annotations

import errno
import json
import struct

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from roomcast.core.blob import encode_blob
from roomcast.gateway.hub import (
    CLOSED,
    CLOSING,
    HANDSHAKING,
    MAX_HELD_REPLIES,
    OPEN,
    Hub,
    PendingJoin,
    ViewerState,
)


class FakeTransport:
    """What the peer has received (`data`), and what the transport still holds (`pending`)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.pending = bytearray()
        self.writes = 0
        self.broken = False
        self.full = False  # the socket takes nothing now: writes queue, direct sends get EAGAIN
        self.short = 0  # the next direct send takes only this many bytes

    def write(self, data: bytes) -> None:
        if self.broken:
            raise RuntimeError("unable to perform operation: the handler is closed")
        self.writes += 1
        if self.full or self.pending:
            self.pending += data
        else:
            self.data += data

    def get_write_buffer_size(self) -> int:
        return len(self.pending)

    def drain(self) -> None:
        self.full = False
        self.data += self.pending
        self.pending.clear()

    def frames(self) -> list[bytes]:
        """The text frames written so far, in the order the peer gets them (what the socket took,
        then what the transport still holds; server frames: unmasked, final)."""
        out, buf, i = [], bytes(self.data + self.pending), 0
        while i < len(buf):
            assert buf[i] == 0x81, "a final text frame"
            n, i = buf[i + 1], i + 2
            if n == 126:
                (n,), i = struct.unpack_from("!H", buf, i), i + 2
            elif n == 127:
                (n,), i = struct.unpack_from("!Q", buf, i), i + 8
            out.append(buf[i : i + n])
            i += n
        return out


_BY_FD: dict[int, FakeTransport] = {}  # every fake socket, for a FakeNet to send on
_NEXT_FD = iter(range(1000, 10**9))


class FakeViewer:
    def __init__(self, name: str = "v") -> None:
        self.name = name
        self.state = ViewerState.HANDSHAKING
        self.rooms: list[str] = []
        self.slow_since = 0.0
        self.paused = False
        self.lagging = False
        self.deflate = False
        self.queued = False
        self.replies: list[bytes | PendingJoin] | None = None
        self.transport = FakeTransport()
        self.fd = next(_NEXT_FD)
        _BY_FD[self.fd] = self.transport
        self.sent: list[dict[str, object]] = []  # protocol messages (acks, errors)

    def send(self, message: bytes) -> None:
        assert self.state is OPEN, "a protocol message to a viewer that is not open"
        self.sent.append(json.loads(message))

    def __repr__(self) -> str:
        return f"<{self.name} {self.state.value} {self.rooms}>"


def blob(room: str, n: int) -> bytes:
    return encode_blob(room, 0, [n], [json.dumps({"n": n}).encode()])


def opened(hub: Hub[FakeViewer], name: str = "v") -> FakeViewer:
    v = FakeViewer(name)
    assert hub.connected(v, 0.0) is None
    assert hub.open(v)
    return v


def live_room(hub: Hub[FakeViewer], room: str, *viewers: FakeViewer) -> None:
    for v in viewers:
        hub.join(v, room)
    hub.subscribed(room)


def test_joined_is_sent_once_the_subscription_is_confirmed() -> None:
    hub: Hub[FakeViewer] = Hub()
    v = opened(hub)
    interest = hub.join(v, "a")
    assert interest is not None and interest.subscribe == ["a"] and v.sent == []
    assert hub.join(opened(hub, "w"), "a").subscribe == []  # type: ignore[union-attr]
    hub.subscribed("a")
    assert v.sent == [{"type": "joined", "room": "a"}]
    hub.join(v, "a")  # again: acked again, no new interest
    assert v.sent[-1] == {"type": "joined", "room": "a"}


def test_replies_come_in_request_order_behind_a_pending_join() -> None:
    hub: Hub[FakeViewer] = Hub()
    v = opened(hub)
    live_room(hub, "b", opened(hub, "other"))
    hub.join(v, "a")  # pending
    hub.reply(v, b'{"type":"pong"}')
    hub.join(v, "b")  # live already, but after a's ack
    assert v.sent == []
    hub.subscribed("a")
    assert [m["type"] for m in v.sent] == ["joined", "pong", "joined"]
    assert [m.get("room") for m in v.sent] == ["a", None, "b"]
    assert v.replies is None


def test_join_then_leave_before_the_subscription_answers_joined_then_left() -> None:
    hub: Hub[FakeViewer] = Hub()
    v = opened(hub)
    assert hub.join(v, "x").subscribe == ["x"]  # type: ignore[union-attr]
    assert hub.leave(v, "x").unsubscribe == []  # still being set up: unsubscribed once confirmed
    assert v.sent == [{"type": "joined", "room": "x"}, {"type": "left", "room": "x"}]
    assert hub.subscribed("x").unsubscribe == ["x"]
    assert hub.interest() == set()


@pytest.mark.parametrize("state", [HANDSHAKING, CLOSING, CLOSED])
def test_a_viewer_that_is_not_open_can_never_join(state: ViewerState) -> None:
    hub: Hub[FakeViewer] = Hub()
    v = FakeViewer()
    hub.connected(v, 0.0)
    if state is not HANDSHAKING:
        hub.open(v)
        hub.close(v, final=state is CLOSED)
    assert v.state is state
    assert hub.join(v, "a") is None
    assert v.rooms == [] and "a" not in hub.rooms and hub.interest() == set()


def test_close_is_the_one_way_out_of_every_room_and_registry() -> None:
    hub: Hub[FakeViewer] = Hub()
    v, w = opened(hub, "v"), opened(hub, "w")
    live_room(hub, "a", v, w)
    live_room(hub, "b", v)
    hub.slow_down(v, 1.0)
    interest = hub.close(v, now=5.0)
    assert v.state is CLOSING and interest.unsubscribe == ["b"]
    assert v not in hub.viewers and v not in hub.slow and v.rooms == []
    assert hub.rooms["a"].viewers == {w} and "b" not in hub.rooms
    assert hub.overdue_closes(9.0, 5.0) == [] and hub.overdue_closes(10.0, 5.0) == [v]
    assert not hub.close(v, final=True) and v.state is CLOSED and not hub.closing
    assert not hub.close(v) and v.state is CLOSED  # final is final
    assert hub.open(v) is False


def test_one_broken_transport_never_stops_the_fanout_for_the_others() -> None:
    hub: Hub[FakeViewer] = Hub()
    viewers = [opened(hub, f"v{i}") for i in range(5)]
    live_room(hub, "r", *viewers)
    viewers[2].transport.broken = True  # e.g. closed under us
    result = hub.fanout([("r", blob("r", 1))])
    assert result.broken == [viewers[2]] and result.sent == 4
    assert viewers[2].state is CLOSED and viewers[2] not in hub.rooms["r"].viewers
    for v in viewers[:2] + viewers[3:]:
        assert v.transport.frames() == [blob("r", 1)]
    hub.fanout([("r", blob("r", 2))])  # the writer list no longer holds it
    assert viewers[0].transport.frames()[-1] == blob("r", 2)


def test_a_broken_transport_in_a_many_blob_turn_is_dropped_alone() -> None:
    hub: Hub[FakeViewer] = Hub()
    both, one, bad = opened(hub, "both"), opened(hub, "one"), opened(hub, "bad")
    live_room(hub, "a", both, one, bad)
    live_room(hub, "b", both, bad)
    bad.transport.broken = True
    result = hub.fanout([("a", blob("a", 1)), ("b", blob("b", 2)), ("_all", blob("_all", 3))])
    assert result.broken == [bad] and bad.state is CLOSED
    assert both.transport.frames() == [blob("a", 1), blob("b", 2), blob("_all", 3)]
    assert both.transport.writes == 1  # coalesced into one write
    assert one.transport.frames() == [blob("a", 1), blob("_all", 3)]


def test_the_last_viewer_broken_in_the_fanout_gives_up_the_room() -> None:
    hub: Hub[FakeViewer] = Hub()
    v = opened(hub)
    live_room(hub, "r", v)
    v.transport.broken = True
    assert hub.fanout([("r", blob("r", 1))]).interest.unsubscribe == ["r"]
    assert hub.interest() == set()


def test_a_blob_that_is_not_utf8_reaches_nobody() -> None:
    hub: Hub[FakeViewer] = Hub()
    v = opened(hub)
    live_room(hub, "r", v)
    bad = b'{"type":"blob","room":"r","events":["\xff"]}'
    assert hub.fanout([("r", bad)]).rejected == 1
    assert hub.fanout([("r", bad), ("_all", bad), ("r", blob("r", 2))]).rejected == 2
    assert v.transport.frames() == [blob("r", 2)]


def test_slow_viewers_drop_frames_counted_then_catch_up() -> None:
    hub: Hub[FakeViewer] = Hub()
    fast, slow = opened(hub, "fast"), opened(hub, "slow")
    live_room(hub, "r", fast, slow)
    hub.slow_down(slow, 10.0)
    assert hub.fanout([("r", blob("r", 1))]).dropped == 1
    assert hub.overdue_slow(12.0, 5.0) == [] and hub.overdue_slow(15.0, 5.0) == [slow]
    hub.caught_up(slow)
    hub.fanout([("r", blob("r", 2))])
    assert fast.transport.frames() == [blob("r", 1), blob("r", 2)]
    assert slow.transport.frames() == [blob("r", 2)]


def test_handshake_deadlines_and_the_cap_drop_the_oldest() -> None:
    hub: Hub[FakeViewer] = Hub(max_handshakes=2)
    a, b, c = FakeViewer("a"), FakeViewer("b"), FakeViewer("c")
    assert hub.connected(a, 0.0) is None and hub.connected(b, 1.0) is None
    assert hub.connected(c, 2.0) is a  # at the cap: the oldest goes
    hub.close(a, final=True)
    hub.handshake_activity(c, 4.0)
    assert hub.overdue_handshakes(4.5, timeout_s=10, idle_s=3) == [b]  # b silent for 3.5 s
    assert hub.overdue_handshakes(12.5, timeout_s=10, idle_s=100) == [b, c]
    assert hub.open(c) and hub.overdue_handshakes(99, 10, 3) == [b]


def test_subscribe_failure_hands_back_the_viewers_to_close() -> None:
    hub: Hub[FakeViewer] = Hub()
    v = opened(hub)
    hub.join(v, "a")
    assert hub.subscribe_failed("a") == [v]
    assert v.rooms == [] and hub.interest() == set()


def test_flooding_is_reported_past_the_held_replies_cap() -> None:
    hub: Hub[FakeViewer] = Hub()
    v = opened(hub)
    hub.join(v, "a")
    for _ in range(MAX_HELD_REPLIES - 1):
        assert not Hub.flooding(v)
        hub.reply(v, b'{"type":"pong"}')
    assert Hub.flooding(v)


# ---- property test: any interleaving keeps the invariants ---------------------------------------

ROOMS = ["a", "b", "c", "_all"]


class HubMachine(RuleBasedStateMachine):
    """Random interleavings of open / join / leave / violation / slow / caught-up / close /
    broken transport / subscription confirmed or failed / blobs, against a model."""

    @initialize()
    def setup(self) -> None:
        self.hub: Hub[FakeViewer] = Hub(max_handshakes=1000)
        self.all: list[FakeViewer] = []
        self.feed: set[str] = set()  # subscriptions the feed holds (as the shell applies them)
        self.pending: set[str] = set()  # subscribe asked, not confirmed
        self.member: dict[FakeViewer, set[str]] = {}  # the model: rooms each open viewer is in
        self.seq = 0
        self.now = 0.0

    def _apply(self, interest: object) -> None:
        if interest is None:
            return
        for room in interest.unsubscribe:  # type: ignore[attr-defined]
            assert room in self.feed, f"unsubscribe of {room}, never subscribed"
            self.feed.discard(room)
        for room in interest.subscribe:  # type: ignore[attr-defined]
            assert room not in self.feed and room not in self.pending
            self.pending.add(room)

    def _pick(self, data: st.DataObject, state: ViewerState | None = None) -> FakeViewer | None:
        pool = [v for v in self.all if state is None or v.state is state]
        return data.draw(st.sampled_from(pool)) if pool else None

    @rule()
    def connect(self) -> None:
        v = FakeViewer(f"v{len(self.all)}")
        self.all.append(v)
        assert self.hub.connected(v, self.now) is None

    @rule(data=st.data())
    def open(self, data: st.DataObject) -> None:
        v = self._pick(data, HANDSHAKING)
        if v is not None:
            assert self.hub.open(v)
            self.member[v] = set()

    @rule(room=st.sampled_from(ROOMS[:3]))
    def arrive(self, room: str) -> None:
        """The common life: connect, open, join."""
        v = FakeViewer(f"v{len(self.all)}")
        self.all.append(v)
        self.hub.connected(v, self.now)
        assert self.hub.open(v)
        self.member[v] = {room}
        self._apply(self.hub.join(v, room))

    @rule(data=st.data(), room=st.sampled_from(ROOMS[:3]), any_state=st.booleans())
    def join(self, data: st.DataObject, room: str, any_state: bool) -> None:
        v = self._pick(data, None if any_state else OPEN)
        if v is None:
            return
        interest = self.hub.join(v, room)
        if v.state is OPEN:
            assert interest is not None
            self.member[v].add(room)
        else:
            assert interest is None and room not in v.rooms
        self._apply(interest)

    @rule(data=st.data(), room=st.sampled_from(ROOMS[:3]))
    def leave(self, data: st.DataObject, room: str) -> None:
        v = self._pick(data, OPEN)
        if v is not None:
            self._apply(self.hub.leave(v, room))
            self.member[v].discard(room)

    @rule(data=st.data(), final=st.booleans())
    def close(self, data: st.DataObject, final: bool) -> None:
        """A violation (fail: CLOSING) or the connection lost (CLOSED), from any state."""
        v = self._pick(data)
        if v is not None:
            self._apply(self.hub.close(v, self.now, final=final))
            self.member.pop(v, None)

    @rule(data=st.data())
    def slow(self, data: st.DataObject) -> None:
        v = self._pick(data)
        if v is not None:
            self.hub.slow_down(v, self.now + 1)

    @rule(data=st.data())
    def caught_up(self, data: st.DataObject) -> None:
        v = self._pick(data)
        if v is not None:
            self.hub.caught_up(v)

    @rule(data=st.data())
    def break_transport(self, data: st.DataObject) -> None:
        v = self._pick(data, OPEN)
        if v is not None:
            v.transport.broken = True

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), ok=st.sampled_from([True, True, True, False]))
    def subscription_done(self, data: st.DataObject, ok: bool) -> None:
        room = data.draw(st.sampled_from(sorted(self.pending)))
        self.pending.discard(room)
        if ok:
            self.feed.add(room)
            self._apply(self.hub.subscribed(room))
        else:
            for v in self.hub.subscribe_failed(room):
                self.member[v].discard(room)
                self._apply(self.hub.close(v, self.now))  # the shell fails them (1011)
                self.member.pop(v, None)

    @rule(rooms=st.lists(st.sampled_from(ROOMS), min_size=1, max_size=4))
    def blobs(self, rooms: list[str]) -> None:
        """One loop turn of blobs, as the feed would deliver them (only subscribed rooms)."""
        live = self.feed | {"_all"}
        batch = [(r, blob(r, self.seq + i)) for i, r in enumerate(rooms) if r in live]
        self.seq += len(rooms)
        before = {v: len(v.transport.frames()) for v in self.all}
        expected: dict[FakeViewer, list[bytes]] = {}
        drops = 0
        for room, data in batch:
            for v, rooms_in in self.member.items():
                if room == "_all" or room in rooms_in:
                    expected.setdefault(v, []).append(data)
                    drops += bool(v.slow_since)
        if self.hub.queued:
            self.hub.drained()  # as the shell does before each fan-out
        result = self.hub.fanout(batch)
        assert result.dropped == drops
        for v, got in expected.items():
            new = v.transport.frames()[before[v] :]
            if v in result.broken:
                assert v.transport.broken and v.state is CLOSED
                self.member.pop(v, None)
            elif v.slow_since:
                assert new == []
            else:
                assert new == got, f"{v} missed blobs"
        assert set(result.broken) <= set(expected)
        self._apply(result.interest)

    @invariant()
    def registered_viewers_are_open(self) -> None:
        hub = self.hub
        in_rooms = {v for room in hub.rooms.values() for v in room.viewers | room.behind.keys()}
        for v in hub.viewers | hub.slow | in_rooms:
            assert v.state is OPEN, f"{v} registered but not open"
        assert set(self.member) == hub.viewers
        for v, rooms in self.member.items():
            assert set(v.rooms) == rooms
            for room in rooms:
                assert v in hub.rooms[room].viewers

    @invariant()
    def interest_is_the_rooms_with_local_viewers(self) -> None:
        """NATS interest == rooms with local viewers, but for subscriptions still being set up."""
        with_viewers = {r for rooms in self.member.values() for r in rooms}
        asked = self.feed | self.pending
        assert self.hub.interest() == asked
        assert with_viewers <= asked
        assert asked - with_viewers <= self.pending

    @invariant()
    def acks_only_to_open_viewers_and_no_stuck_replies(self) -> None:
        for v in self.all:
            if v.state is not OPEN:
                assert v.replies is None
            elif v.replies is not None:
                # Replies go out in order: what holds them is the first join owed, which must
                # be one whose subscription is still to be confirmed.
                first = next(r.room for r in v.replies if isinstance(r, PendingJoin))
                assert first in self.pending, f"{v} waits on a join nobody will confirm"


TestHubProperties = HubMachine.TestCase
TestHubProperties.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)


# ---- a batched sender (roomcast.uring's contract) in place of transport.write --------------------


class FakeNet:
    """`send_many([(fds, data), ...])` over fake sockets: short writes, EAGAIN and gone peers on
    demand; `waves` counts the calls."""

    def __init__(self) -> None:
        self.by_fd = _BY_FD
        self.waves = 0

    def add(self, *viewers: FakeViewer) -> None:
        for v in viewers:
            assert self.by_fd[v.fd] is v.transport

    def _send(self, fds: object, data: bytes) -> list[tuple[int, int]]:
        failed = []
        for i, fd in enumerate(fds):  # type: ignore[call-overload]
            t = self.by_fd[fd]
            assert not t.pending, "a direct send overtook bytes the transport still holds"
            if t.broken:
                failed.append((i, -errno.EPIPE))
            elif t.full:
                failed.append((i, -errno.EAGAIN))
            elif t.short:
                t.data += data[: t.short]
                failed.append((i, t.short))
                t.short = 0
            else:
                t.data += data
        return failed

    def send_many(self, items: list[tuple[object, bytes]]) -> list[tuple[int, int, int]]:
        self.waves += 1
        fds = [fd for item_fds, _ in items for fd in item_fds]  # type: ignore[attr-defined]
        assert len(fds) == len(set(fds)), "a descriptor twice in one submission"
        return [(j, i, r) for j, (f, data) in enumerate(items) for i, r in self._send(f, data)]


def sending_hub(*names: str) -> tuple[Hub[FakeViewer], FakeNet, list[FakeViewer]]:
    net = FakeNet()
    hub: Hub[FakeViewer] = Hub(sender=net.send_many)
    viewers = [opened(hub, n) for n in names]
    net.add(*viewers)
    return hub, net, viewers


def test_a_bare_room_is_one_send_call_per_frame() -> None:
    hub, net, viewers = sending_hub("a", "b", "c")
    live_room(hub, "r", *viewers)
    result = hub.fanout([("r", blob("r", 1))])
    assert net.waves == 1 and result.sent == 3
    assert all(v.transport.frames() == [blob("r", 1)] for v in viewers)
    assert all(v.transport.writes == 0 for v in viewers)  # no transport.write at all


def test_eagain_and_short_writes_go_on_through_the_viewers_own_queue_in_order() -> None:
    hub, net, (full, short, ok) = sending_hub("full", "short", "ok")
    live_room(hub, "r", full, short, ok)
    full.transport.full = True
    short.transport.short = 7
    hub.fanout([("r", blob("r", 1))])
    assert full.queued and short.queued and not ok.queued
    short.transport.full = True  # the socket fills up: the next frames queue behind the rest
    for i in (2, 3):
        hub.fanout([("r", blob("r", i))])  # the queued ones get it through their transport
    hub.drained()
    assert full.queued and short.queued  # still holding bytes
    full.transport.drain()
    short.transport.drain()
    hub.drained()
    assert not full.queued and not short.queued and not hub.queued
    calls = net.waves
    hub.fanout([("r", blob("r", 4))])
    assert net.waves == calls + 1  # back on direct sends
    for v in (full, short, ok):
        assert v.transport.frames() == [blob("r", i) for i in (1, 2, 3, 4)], v


def test_a_peer_gone_under_a_direct_send_is_dropped_alone() -> None:
    hub, _net, (gone, ok) = sending_hub("gone", "ok")
    live_room(hub, "r", gone, ok)
    gone.transport.broken = True
    result = hub.fanout([("r", blob("r", 1))])
    assert result.broken == [gone] and gone.state is CLOSED and result.sent == 1
    assert ok.transport.frames() == [blob("r", 1)]


def test_a_reply_left_queued_keeps_the_viewer_off_direct_sends() -> None:
    hub, _net, (v,) = sending_hub("v")
    live_room(hub, "r", v)
    v.transport.full = True
    v.transport.write(b"\x81\x02{}")  # e.g. a pong the shell wrote; the shell then marks it
    hub.mark_queued(v)
    hub.fanout([("r", blob("r", 1))])
    v.transport.drain()
    assert v.transport.frames() == [b"{}", blob("r", 1)]


def test_a_turn_of_several_bare_rooms_is_one_submission_and_a_room_twice_is_two() -> None:
    hub, net, (a1, a2, b1, c1) = sending_hub("a1", "a2", "b1", "c1")
    live_room(hub, "a", a1, a2)
    live_room(hub, "b", b1)
    live_room(hub, "c", c1)
    c1.transport.full = True  # its frames go on through its own queue
    hub.fanout([("a", blob("a", 1)), ("b", blob("b", 2)), ("c", blob("c", 3))])
    assert net.waves == 1 and c1.queued
    hub.fanout([("a", blob("a", 4)), ("a", blob("a", 5)), ("b", blob("b", 6))])
    assert net.waves == 3  # a room twice: the second frame in a submission of its own
    c1.transport.drain()
    assert a1.transport.frames() == a2.transport.frames() == [blob("a", i) for i in (1, 4, 5)]
    assert b1.transport.frames() == [blob("b", 2), blob("b", 6)]
    assert c1.transport.frames() == [blob("c", 3)]


def test_a_room_whose_viewer_queued_in_an_earlier_wave_leaves_the_bare_path() -> None:
    hub, _net, (a1, a2) = sending_hub("a1", "a2")
    live_room(hub, "a", a1, a2)
    a1.transport.short = 5
    a1.transport.full = True  # the rest of the first frame stays queued
    hub.fanout([("a", blob("a", 1)), ("a", blob("a", 2))])
    assert a1.queued
    a1.transport.drain()
    assert a1.transport.frames() == a2.transport.frames() == [blob("a", 1), blob("a", 2)]


class SenderHubMachine(HubMachine):
    """The same interleavings with a batched sender (roomcast.uring's contract) in place of
    transport.write, and sockets that fill up, take part of a frame, or drain: every viewer still
    gets every blob in order, and no direct send ever overtakes bytes its transport holds (FakeNet
    asserts it)."""

    @initialize()
    def setup(self) -> None:
        super().setup()
        self.net = FakeNet()
        self.hub = Hub(max_handshakes=1000, sender=self.net.send_many)

    @rule(data=st.data())
    def clog(self, data: st.DataObject) -> None:
        v = self._pick(data, OPEN)
        if v is not None:
            v.transport.full = True

    @rule(data=st.data(), n=st.integers(1, 40))
    def take_part(self, data: st.DataObject, n: int) -> None:
        v = self._pick(data, OPEN)
        if v is not None:
            v.transport.short = n

    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        v = self._pick(data)
        if v is not None:
            v.transport.drain()


TestHubPropertiesWithSender = SenderHubMachine.TestCase
TestHubPropertiesWithSender.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None
)
