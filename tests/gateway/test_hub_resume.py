"""Resume and catch-up in the hub, sans I/O: a state machine against a model of the history.

The machine stores blobs in a model history, delivers them live to subscribed rooms as the feed
would (through each room's log, like the engine), serves the history reads the hub asks for, and
lets viewers join (fresh, or resuming from a position they had, or one that is too old), leave,
close, fill their buffers mid fan-out and drain. What every viewer receives is checked:

- per room, from its join on, each blob's `prev` is the `seq` of the blob before it: no gap, no
  duplicate, in order; a break is allowed only right after `reset` or `recovered:false`;
- a resume answered `recovered:true` continues exactly after its position;
- once nothing is pending (no subscription or history read in flight, buffer drained), a viewer
  has its rooms' newest blob.
"""

from __future__ import annotations

import itertools
import json

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from roomcast.core.blob import encode_blob, sequenced
from roomcast.core.protocol import Position
from roomcast.gateway.hub import OPEN, Hub, PendingJoin, ViewerState

EPOCH = 1764117000123456
ROOMS = ["a", "b"]
_FD = itertools.count(5000)
CLOCK = [0]  # blobs published so far: stamps what viewers get


class Peer:
    """A viewer whose transport and protocol messages land in one ordered stream (`got`)."""

    def __init__(self, hub: Hub[Peer], name: str) -> None:
        self.hub = hub
        self.name = name
        self.state = ViewerState.HANDSHAKING
        self.rooms: list[str] = []
        self.slow_since = 0.0
        self.paused = False
        self.lagging = False
        self.deflate = False
        self.queued = False
        self.fd = next(_FD)
        self.replies: list[bytes | PendingJoin] | None = None
        self.got: list[dict[str, object]] = []
        self.buffered = 0  # bytes the peer has not read
        self.limit = 0  # > 0: over this many unread bytes the transport pauses (pause_writing)
        self.transport = self

    def write(self, data: bytes) -> None:
        i = 0
        while i < len(data):  # server frames: final text frames, unmasked
            assert data[i] == 0x81
            n, i = data[i + 1], i + 2
            if n == 126:
                n, i = int.from_bytes(data[i : i + 2], "big"), i + 2
            elif n == 127:
                n, i = int.from_bytes(data[i : i + 8], "big"), i + 8
            self.got.append(json.loads(data[i : i + n]))
            i += n
        self.buffered += len(data)
        if self.limit and self.buffered > self.limit and not self.paused:
            self.hub.slow_down(self, 1.0)  # asyncio calls pause_writing from inside write()

    def get_write_buffer_size(self) -> int:
        return 0

    def send(self, message: bytes) -> None:
        assert self.state is OPEN
        self.got.append({**json.loads(message), "_at": CLOCK[0]})
        self.buffered += len(message)

    def __repr__(self) -> str:
        return f"<{self.name} {self.rooms} lag={self.lagging}>"


def raw(room: str, n: int) -> bytes:
    return encode_blob(room, 0, [n], [json.dumps({"n": n}).encode()])


class ResumeMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.hub: Hub[Peer] = Hub(ring_blobs=3, max_replay_blobs=4)
        self.hub.new_epoch(EPOCH)
        CLOCK[0] = 0
        self.seq = itertools.count(1)
        self.stored: dict[str, list[tuple[int, int, bytes]]] = {r: [] for r in ROOMS}
        self.keep = 12  # the history keeps this many blobs per room
        self.subscribed: set[str] = set()
        self.pending: set[str] = set()
        self.peers: list[Peer] = []
        self.n = 0

    # ---- the world ----------------------------------------------------------------------------

    def _apply(self, interest: object) -> None:
        if interest is None:
            return
        for room in interest.subscribe:  # type: ignore[attr-defined]
            self.pending.add(room)
        for room in interest.unsubscribe:  # type: ignore[attr-defined]
            self.subscribed.discard(room)

    @rule(rooms=st.lists(st.sampled_from(ROOMS), min_size=1, max_size=3))
    def publish(self, rooms: list[str]) -> None:
        """Blobs stored, then republished to the rooms subscribed here, through their logs."""
        batch = []
        for room in rooms:
            seq = next(self.seq)
            stored = self.stored[room]
            prev = stored[-1][0] if stored else 0
            stored.append((seq, prev, raw(room, self.n)))
            self.n += 1
            CLOCK[0] += 1
            del stored[: -self.keep]
            if room not in self.subscribed:
                continue
            log = self.hub.log_for(room)
            assert log is not None
            entry = log.offer(seq, prev, sequenced(stored[-1][2], EPOCH, seq, prev))
            assert entry is not False, "live blobs arrive in order here: no gap"
            if entry is not None:
                batch.append((room, entry.data))
        result = self.hub.fanout(batch)
        assert not result.broken
        for room in {r for r, _ in batch}:
            self.hub.settle_room(room)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def subscription_done(self, data: st.DataObject) -> None:
        room = data.draw(st.sampled_from(sorted(self.pending)))
        self.pending.discard(room)
        self.subscribed.add(room)
        self._apply(self.hub.subscribed(room))

    @precondition(lambda self: self.hub.want_head)
    @rule(data=st.data())
    def head_read(self, data: st.DataObject) -> None:
        """The newest stored blob of a room new here (plain joins are confirmed with it)."""
        room = data.draw(st.sampled_from(sorted(self.hub.want_head)))
        stored = self.stored[room]
        self.hub.head_read(room, stored[-1][0] if stored else 0)

    @precondition(lambda self: self.hub.want_history)
    @rule(data=st.data())
    def history_read(self, data: st.DataObject) -> None:
        """Serve one read as the engine does (bounded, stopping at the log's oldest blob)."""
        room = data.draw(st.sampled_from(sorted(self.hub.want_history)))
        start = self.hub.history_request(room)
        if start is None:
            return
        limit = self.hub.max_replay_blobs + 1
        found, connected = [], False
        for seq, _, blob in self.stored[room]:
            if seq < start:
                continue
            stop = self.hub.history_head(room)
            if stop is not None and seq >= stop:
                connected = True
                break
            if len(found) == limit:
                break
            found.append((seq, blob))
        else:
            connected = True
        self.hub.history_read(room, start, found, connected)

    # ---- viewers ------------------------------------------------------------------------------

    @precondition(lambda self: len(self.peers) < 5)
    @rule()
    def arrive(self) -> None:
        v = Peer(self.hub, f"v{len(self.peers)}")
        self.hub.connected(v, 0.0)
        self.hub.open(v)
        self.peers.append(v)

    def _pick(self, data: st.DataObject) -> Peer | None:
        live = [v for v in self.peers if v.state is OPEN]
        return data.draw(st.sampled_from(live)) if live else None

    @rule(
        data=st.data(),
        room=st.sampled_from(ROOMS),
        how=st.sampled_from(["fresh", "last", "old", "away"]),
    )
    def join(self, data: st.DataObject, room: str, how: str) -> None:
        v = self._pick(data)
        if v is None or room in v.rooms:
            return
        since = None
        if how == "last":  # where it was (a reconnect), if it ever was in the room
            seen = [m["seq"] for m in v.got if m.get("type") == "blob" and m["room"] == room]
            since = Position(EPOCH, int(seen[-1])) if seen else None  # type: ignore[arg-type]
        elif how == "old" and self.stored[room]:
            since = Position(EPOCH, self.stored[room][0][1])  # older than the history holds
        elif how == "away" and self.stored[room]:  # a position it had before it went away
            since = Position(EPOCH, data.draw(st.sampled_from(self.stored[room]))[0])
        # Could it be recovered? The position is still stored, few enough blobs after it.
        seqs = [s for s, _, _ in self.stored[room]]
        ok = (
            since is not None
            and since.seq in seqs[:-1]
            and (len(seqs) - 1 - seqs.index(since.seq) <= self.hub.max_replay_blobs)
        )
        v.got.append({"type": "_join", "room": room, "since": since and since.seq,
                      "_ok": ok, "_at": CLOCK[0]})  # fmt: skip
        self._apply(self.hub.join(v, room, since))

    @rule(data=st.data(), room=st.sampled_from(ROOMS))
    def leave(self, data: st.DataObject, room: str) -> None:
        v = self._pick(data)
        if v is not None and room in v.rooms:
            self._apply(self.hub.leave(v, room))
            v.got.append({"type": "_left", "room": room})

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        v = self._pick(data)
        if v is not None:
            self._apply(self.hub.close(v, 0.0, final=True))

    @rule(data=st.data(), limit=st.sampled_from([0, 1, 400]))
    def buffer_limit(self, data: st.DataObject, limit: int) -> None:
        """From now on the viewer's buffer fills up after `limit` unread bytes (0: never)."""
        v = self._pick(data)
        if v is not None:
            v.limit = limit
            if limit and v.buffered > limit:
                self.hub.slow_down(v, 1.0)

    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        """The peer read everything: the transport resumes writing."""
        v = self._pick(data)
        if v is not None:
            v.buffered = 0
            if v.paused:
                self.hub.caught_up(v)

    # ---- what viewers got ---------------------------------------------------------------------

    @invariant()
    def every_room_is_a_whole_chain_from_each_join(self) -> None:
        for v in self.peers:
            last: dict[str, int | None] = {}  # per room: seq of the last blob since the join
            for m in v.got:
                kind, room = m["type"], m.get("room")
                if kind == "_join":
                    last[room] = m["since"]  # type: ignore[index, assignment]
                elif kind in ("_left", "left"):  # (the server's `left` may come later)
                    last.pop(room, None)  # type: ignore[arg-type]
                elif kind == "reset" or (kind == "joined" and m.get("recovered") is False):
                    last[room] = None  # type: ignore[index]
                elif kind == "joined" and m.get("position"):  # a plain join: from here on
                    last[room] = int(str(m["position"]).split(":")[1])  # type: ignore[index]
                elif kind == "blob":
                    before = last.get(room)  # type: ignore[arg-type]
                    if before is not None:
                        assert m["prev"] == before, f"{v}: {room} jumped {before} -> {m}"
                    last[room] = m["seq"]  # type: ignore[index, assignment]

    @invariant()
    def recovered_false_only_when_the_history_could_not_serve_it(self) -> None:
        for v in self.peers:
            join: dict[str, dict[str, object]] = {}
            for m in v.got:
                if m["type"] == "_join":
                    join[m["room"]] = m  # type: ignore[index]
                elif m["type"] == "joined" and m.get("recovered") is False:
                    j = join[m["room"]]  # type: ignore[index]
                    if j["_ok"] and j["_at"] == m["_at"]:  # nothing was published meanwhile
                        raise AssertionError(f"{v}: {m['room']} from {j['since']} was recoverable")

    @invariant()
    def settled_viewers_are_live_and_up_to_date(self) -> None:
        if self.pending or self.hub.want_history or self.hub.want_head:
            return  # a subscription or a history read is still under way
        for v in self.peers:
            if v.state is not OPEN or v.paused or v.replies:
                continue
            assert not v.lagging, f"{v} drained but is still off the live fan-out"
            for name in v.rooms:
                room = self.hub.rooms[name]
                assert v in room.viewers and v not in room.behind, f"{v} not live in {name}"
                joined = max(i for i, m in enumerate(v.got) if m.get("room") == name
                             and m["type"] == "_join")  # fmt: skip
                got = [m for m in v.got[joined:] if m["type"] == "blob" and m["room"] == name]
                if got and room.log is not None:
                    assert got[-1]["seq"] == room.log.last, f"{v} is behind in {name}"


ResumeMachine.TestCase.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)
TestResume = ResumeMachine.TestCase


def test_a_read_cut_short_answers_only_the_oldest_waiter_and_reads_again_for_the_rest() -> None:
    """Two resumes wait in one room: one far behind (more than --max-replay-blobs), one close.
    The read from the oldest position stops at the limit without reaching the log: only that
    viewer is told recovered:false; the other gets a read of its own and everything it missed."""
    hub: Hub[Peer] = Hub(ring_blobs=2, max_replay_blobs=3)
    hub.new_epoch(EPOCH)
    stored = [(s, raw("r", s)) for s in range(1, 11)]
    keeper, far, near = (Peer(hub, n) for n in ("keeper", "far", "near"))
    for v in (keeper, far, near):
        hub.connected(v, 0.0)
        hub.open(v)
    hub.join(keeper, "r")
    hub.subscribed("r")
    log = hub.log_for("r")
    assert log is not None
    for s in (9, 10):  # what arrived live since the subscription
        entry = log.offer(s, s - 1, sequenced(raw("r", s), EPOCH, s, s - 1))
        assert entry is not None and entry is not False
    hub.join(far, "r", Position(EPOCH, 1))
    hub.join(near, "r", Position(EPOCH, 7))
    reads = []
    while hub.want_history:
        start = hub.history_request(hub.want_history.pop())
        if start is None:
            continue
        reads.append(start)
        head, found, connected = hub.history_head("r"), [], True
        for s, b in stored:
            if s < start:
                continue
            if head is not None and s >= head:
                break
            if len(found) == hub.max_replay_blobs + 1:
                connected = False
                break
            found.append((s, b))
        hub.history_read("r", start, found, connected)
    assert reads == [1, 7]
    assert next(m for m in far.got if m["type"] == "joined")["recovered"] is False
    assert next(m for m in near.got if m["type"] == "joined")["recovered"] is True
    assert [m["seq"] for m in near.got if m["type"] == "blob"] == [8, 9, 10]


def test_a_join_answered_behind_another_join_gets_the_blobs_after_its_position() -> None:
    """A viewer joins room a while its `joined` for room b still waits (b's newest position is
    being read): a's `joined` waits behind it, and a's blobs published meanwhile must come after
    that `joined`, none skipped (the state machine found one written straight away, ahead of it,
    and the `joined` then giving an older position)."""
    hub: Hub[Peer] = Hub(ring_blobs=3, max_replay_blobs=4)
    hub.new_epoch(EPOCH)
    seqs = itertools.count(1)
    last = {"a": 0}

    def publish(room: str) -> None:
        seq, prev = next(seqs), last[room]
        last[room] = seq
        log = hub.log_for(room)
        assert log is not None
        entry = log.offer(seq, prev, sequenced(raw(room, seq), EPOCH, seq, prev))
        assert entry not in (None, False)
        hub.fanout([(room, entry.data)])  # type: ignore[union-attr]
        hub.settle_room(room)

    v, w = Peer(hub, "v"), Peer(hub, "w")
    for p in (v, w):
        hub.connected(p, 0.0)
        hub.open(p)
    hub.join(v, "b")
    hub.join(w, "a")
    hub.subscribed("a")
    hub.head_read("a", 0)
    publish("a")  # seq 1
    hub.subscribed("b")  # v's joined for b waits for b's newest position
    assert "b" in hub.want_head
    hub.join(v, "a")  # answered behind b's: position a:1
    publish("a")  # seq 2: not to v yet
    assert [m["type"] for m in v.got] == []
    hub.head_read("b", 0)
    publish("a")  # seq 3
    got = [(m["type"], m.get("room"), m.get("position"), m.get("seq"), m.get("prev"))
           for m in v.got]  # fmt: skip
    assert got == [
        ("joined", "b", f"{EPOCH}:0", None, None),
        ("joined", "a", f"{EPOCH}:1", None, None),
        ("blob", "a", None, 2, 1),
        ("blob", "a", None, 3, 2),
    ]
    assert v in hub.rooms["a"].viewers and v not in hub.rooms["a"].behind
