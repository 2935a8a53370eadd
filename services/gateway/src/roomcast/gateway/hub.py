"""The hub: one worker's registry of viewers and rooms, and the fan-out. Pure: no sockets, no NATS.

Like websockets' `protocol.py`, the hub is driven from outside and answers with decisions: the I/O
shell (`engine.Gateway`, `connection.Viewer`) tells it that a viewer opened, joined, left, got slow
or went away, and hands it the blobs that arrived; the hub writes frames to the viewers' transports
and returns what the shell must do about the outside world: rooms to subscribe or unsubscribe
(interest), viewers whose transport broke, counts for the metrics. Its tests drive it with fake
transports in microseconds.

A viewer's life is a state machine, and only the hub moves it:

    HANDSHAKING --open()--> OPEN --close()--> CLOSING --close(final=True)--> CLOSED
         \\_____________________________________________________________/^
                    (close() from any state; CLOSED is final)

Invariants (checked by the property tests): every viewer in `viewers`, in a room or in `slow` is
OPEN; `close()` is the one place a viewer leaves every room and registry, whatever ends it; a
viewer that is not OPEN is never added to a room; the rooms with local viewers are exactly the rooms
the shell has been told to subscribe (and not since told to unsubscribe).
"""

from __future__ import annotations

import enum
import errno
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from roomcast.core.frames import Deflater, text_frame
from roomcast.core.protocol import Joined, Left, Position, Reset, encode_server_message
from roomcast.core.rooms import ALL_ROOM
from roomcast.gateway.history import UNKNOWN, Entry, RoomLog


class ViewerState(enum.Enum):
    HANDSHAKING = "handshaking"  # TCP accepted; no complete WebSocket upgrade yet
    OPEN = "open"  # upgraded: may join rooms and receives blobs
    CLOSING = "closing"  # failed or closing: nothing it sends is acted on, it receives nothing
    CLOSED = "closed"  # the TCP connection is gone


HANDSHAKING, OPEN, CLOSING, CLOSED = ViewerState

MAX_HELD_REPLIES = 256  # replies one viewer may have queued behind a join not yet confirmed


class Transport(Protocol):
    def write(self, data: bytes) -> object: ...

    def get_write_buffer_size(self) -> int: ...


Sender = Callable[[list[tuple["array[int]", bytes]]], list[tuple[int, int, int]]]
"""Writes frames to descriptors, several (descriptors, frame) pairs in one call (`roomcast.uring`:
`Ring.send_many`, whose io_uring submissions all pairs share, or `write_many`, a C send() loop):
returns (pair, index, bytes sent or -errno) for each send it did not complete. A descriptor may
appear at most once in a call."""


class Peer(Protocol):
    """What the hub needs of a viewer connection (`connection.Viewer`, or a fake in tests)."""

    state: ViewerState
    rooms: list[str]  # the rooms it is in (not counting push-to-all)
    slow_since: float  # > 0 from when its write buffer went over the high-water mark until
    # it has caught up again
    paused: bool  # its write buffer is over the high-water mark right now
    lagging: bool  # slow: out of its rooms' live fan-out, to be caught up from their logs
    deflate: bool  # negotiated permessage-deflate: gets the compressed frame
    fd: int  # the socket's descriptor (for a Sender), valid while the viewer is OPEN
    queued: bool  # its transport holds unsent bytes: no direct send may overtake them
    replies: list[bytes | PendingJoin] | None  # replies held behind a join not yet confirmed

    @property
    def transport(self) -> Transport | None: ...

    def send(self, message: bytes) -> None:
        """Send one protocol message (ack, error) on the viewer's WebSocket."""


P = TypeVar("P", bound=Peer)


@dataclass(slots=True, eq=False)
class PendingJoin:
    """A `joined` owed to a viewer once its room's subscription is confirmed (and, for a
    resume, once the room's log reaches back to `since`)."""

    room: str
    since: Position | None = None


@dataclass(slots=True, eq=False)
class Room(Generic[P]):
    name: str
    viewers: set[P] = field(default_factory=set)
    subscribed: bool = False  # the feed confirmed the subscription
    subscribing: bool = False  # asked for, not confirmed yet
    waiting: list[P] = field(default_factory=list)  # owed a `joined` once subscribed
    # The viewers' bound `transport.write`s (`plain` and `deflated`: viewers that negotiated
    # permessage-deflate get the compressed frame), while every viewer of the room watches no
    # other room and is not slow (`bare`: the fan-out is then a bare loop of calls). `plain` is
    # None when they must be worked out again (a join, a leave, slow, caught up).
    plain: list[Callable[[bytes], object]] | None = None
    deflated: list[Callable[[bytes], object]] = field(default_factory=list)
    bare: bool = False
    # With a Sender: the same viewers' descriptors, and the viewers in the same order.
    plain_fds: array[int] = field(default_factory=lambda: array("i"))
    deflated_fds: array[int] = field(default_factory=lambda: array("i"))
    plain_viewers: list[P] = field(default_factory=list)
    deflated_viewers: list[P] = field(default_factory=list)
    # The room's recent blobs (None until its first blob with a history position), and its
    # viewers that are not on the live fan-out: resuming (a join with `since`) or slow, each
    # with the seq of the last blob it has. `tried`: a history read already covered them.
    log: RoomLog | None = None
    behind: dict[P, int] = field(default_factory=dict)
    tried: set[P] = field(default_factory=set)


@dataclass(slots=True)
class Interest:
    """Rooms whose feed subscription must now start or stop."""

    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.subscribe or self.unsubscribe)


@dataclass(slots=True)
class FanoutResult(Generic[P]):
    sent: int = 0  # frames written
    nbytes: int = 0  # bytes written
    dropped: int = 0  # frames not written to slow viewers
    coalesced: int = 0  # writes that carried several frames to one viewer
    rejected: int = 0  # blobs that were not valid UTF-8 (never sent: clients would fail)
    deflated: int = 0  # frames sent compressed (permessage-deflate)
    broken: list[P] = field(default_factory=list)  # write raised: closed here, abort them
    interest: Interest = field(default_factory=Interest)


@dataclass(slots=True)
class Counters:
    """What the hub did that the shell turns into metrics (cumulative)."""

    replayed_slow: int = 0  # frames a slow viewer was caught up with
    replayed_resume: int = 0  # frames sent to resuming viewers before they went live
    resumed: int = 0  # joins with `since` answered recovered:true
    not_recovered: int = 0  # ... answered recovered:false
    resets: int = 0  # `reset` messages: blobs a viewer could not be given
    history_reads: int = 0  # rooms' history reads (one serves every viewer waiting on it)


class Hub(Generic[P]):
    """One worker's viewers and rooms. Single-threaded by design (one asyncio loop per worker)."""

    def __init__(
        self,
        max_handshakes: int = 1024,
        deflater: Deflater | None = None,
        sender: Sender | None = None,
        ring_blobs: int = 64,
        max_replay_blobs: int = 1000,
    ) -> None:
        self.max_handshakes = max_handshakes
        self.ring_blobs = ring_blobs
        self.max_replay_blobs = max_replay_blobs
        self.epoch = 0  # the history's epoch (0: unknown, no resume possible)
        self.all_log = RoomLog(0, ring_blobs)  # push-to-all's recent blobs
        self.all_behind: dict[P, int] = {}  # slow viewers' position in push-to-all
        self.want_history: set[str] = set()  # rooms whose waiting viewers need a history read
        self.want_head: set[str] = set()  # rooms whose newest stored position must be read
        self.counters = Counters()
        self._fanning = False
        self._newly_slow: list[P] = []
        self.deflater = deflater  # None: never compress
        # None: every frame goes through its viewer's transport.write. Else bare rooms' frames go
        # to their viewers' descriptors in one call; what a descriptor did not take is handed to
        # that viewer's transport, which then holds bytes (`queued`) until it has drained.
        # The bare rooms of one loop turn share one call (rooms of tens of viewers then still
        # send in batches of hundreds).
        self.sender = sender
        self.queued: set[P] = set()
        self.viewers: set[P] = set()  # OPEN viewers
        self.rooms: dict[str, Room[P]] = {}
        self.slow: set[P] = set()
        # Deadlines. Insertion order = start order, so the oldest handshake is first.
        self.handshaking: dict[P, list[float]] = {}  # viewer -> [started, last byte]
        self.closing: dict[P, float] = {}  # viewer -> when we began closing

    # ---- life cycle ---------------------------------------------------------------------------

    def connected(self, v: P, now: float) -> P | None:
        """A TCP connection was accepted. Returns the oldest handshake to drop if at the cap."""
        v.state = HANDSHAKING
        evict = None
        if len(self.handshaking) >= self.max_handshakes:
            evict = next(iter(self.handshaking))
        self.handshaking[v] = [now, now]
        return evict

    def handshake_activity(self, v: P, now: float) -> None:
        times = self.handshaking.get(v)
        if times is not None:
            times[1] = now

    def open(self, v: P) -> bool:
        """The upgrade completed. Only a HANDSHAKING viewer can open."""
        if v.state is not HANDSHAKING:
            return False
        self.handshaking.pop(v, None)
        v.state = OPEN
        self.viewers.add(v)
        return True

    def close(self, v: P, now: float = 0.0, final: bool = False) -> Interest:
        """The one way out of OPEN, whatever ends it: leaves every room and registry.

        `final`: the TCP connection is gone (CLOSED). Otherwise the viewer is CLOSING: its close
        handshake has begun, and `overdue` reports it if the peer does not finish it in time.
        Idempotent; returns the rooms that no longer have a local viewer.
        """
        interest = Interest()
        state = v.state
        if state is CLOSED:
            return interest
        v.state = CLOSED if final else CLOSING
        self.handshaking.pop(v, None)
        if final:
            self.closing.pop(v, None)
        elif state is not CLOSING:
            self.closing[v] = now
        if state is OPEN:
            self.viewers.discard(v)
            self.slow.discard(v)
            self.queued.discard(v)
            self.all_behind.pop(v, None)
            for name in v.rooms:
                self._remove(v, name, interest)
            v.rooms = []
            v.replies = None
        return interest

    # ---- rooms --------------------------------------------------------------------------------

    def join(self, v: P, name: str, since: Position | None = None) -> Interest | None:
        """Add an OPEN viewer to a room; None (and nothing changes) if it is not OPEN.

        The `joined` ack is sent now if the room's subscription is live, else once `subscribed`.
        With `since` (a resume) the viewer stays off the live fan-out until it has been sent
        every blob after that position (`joined` says `recovered`), or told it cannot be.
        """
        if v.state is not OPEN:
            return None
        interest = Interest()
        room = self.rooms.get(name)
        if name in v.rooms and room is not None:  # joined again: ack again, in order
            if room.subscribed and self._head_known(room):
                ack = self._joined(room, v) if since is None else Joined(name, True)
                self.reply(v, encode_server_message(ack))
            else:
                self._owe_join(v, room, None)
                if room.subscribed:
                    self._settle(v)
            return interest
        if room is None:
            room = self.rooms[name] = Room(name)
        v.rooms.append(name)
        log = room.log
        if since is not None:
            room.behind[v] = since.seq
        elif (v.lagging or v.replies is not None) and log is not None and log.last != UNKNOWN:
            # Slow: caught up from here once it drains. Or its `joined` (with this position)
            # waits behind replies it is owed: the blobs after it follow that `joined`, never
            # come before it.
            room.behind[v] = log.last
        else:
            room.viewers.add(v)
        self._changed(v)
        if room.subscribed and since is None and self._head_known(room) and v.replies is None:
            self.reply(v, encode_server_message(self._joined(room, v)))
        else:
            self._owe_join(v, room, since)
            if room.subscribed:
                self._settle(v)
            elif not room.subscribing:
                room.subscribing = True
                interest.subscribe.append(name)
        return interest

    def _owe_join(self, v: P, room: Room[P], since: Position | None) -> None:
        room.waiting.append(v)
        if v.replies is None:
            v.replies = []
        v.replies.append(PendingJoin(room.name, since))

    def leave(self, v: P, name: str) -> Interest:
        """Take a viewer out of a room (if it is in it) and ack with `left`, in request order."""
        interest = Interest()
        if v.state is not OPEN:
            return interest
        if name in v.rooms:
            v.rooms.remove(name)
            self._changed(v)
            self._remove(v, name, interest)
            self._settle(v)  # a join still owed is answered first: joined, then left
        self.reply(v, encode_server_message(Left(name)))
        return interest

    def _remove(self, v: P, name: str, interest: Interest) -> None:
        room = self.rooms.get(name)
        if room is None:
            return
        room.viewers.discard(v)
        room.behind.pop(v, None)
        room.tried.discard(v)
        room.plain = None
        if v in room.waiting:
            room.waiting = [w for w in room.waiting if w is not v]
        if not room.viewers and not room.behind and not room.subscribing:
            del self.rooms[name]
            if room.subscribed:
                interest.unsubscribe.append(name)

    def subscribed(self, name: str) -> Interest:
        """The feed confirmed the room's subscription: every blob from now on reaches it."""
        interest = Interest()
        room = self.rooms.get(name)
        if room is None or not room.subscribing:
            return interest
        room.subscribing = False
        room.subscribed = True
        if not room.viewers and not room.behind:  # everyone left while it was being set up
            del self.rooms[name]
            interest.unsubscribe.append(name)
            return interest
        for v in list(room.waiting):
            self._settle(v)
        return interest

    def subscribe_failed(self, name: str) -> list[P]:
        """The feed could not subscribe: returns the viewers of the room, to be closed (1011)."""
        room = self.rooms.pop(name, None)
        if room is None:
            return []
        room.subscribing = False
        victims = list(room.viewers) + list(room.behind)
        for v in victims:
            v.rooms.remove(name)
            self._changed(v)
        return victims

    def interest(self) -> set[str]:
        """Rooms the shell has been asked to subscribe and not to unsubscribe."""
        return {n for n, r in self.rooms.items() if r.subscribed or r.subscribing}

    # ---- replies in request order -------------------------------------------------------------

    def reply(self, v: P, message: bytes) -> None:
        """Send a reply after every earlier reply the viewer is still owed (request order)."""
        if v.replies is None:
            v.send(message)
        else:
            v.replies.append(message)

    @staticmethod
    def flooding(v: P) -> bool:
        """The viewer has MAX_HELD_REPLIES replies held behind a join: it must be closed."""
        return v.replies is not None and len(v.replies) >= MAX_HELD_REPLIES

    def _settle(self, v: P) -> None:
        """Send the viewer's held replies that are now in order to send: up to the first join
        whose room is not subscribed yet, or whose resume waits on a history read."""
        replies = v.replies
        if replies is None:
            return
        n = 0
        while n < len(replies) and v.state is OPEN:
            r = replies[n]
            if isinstance(r, PendingJoin):
                room = self.rooms.get(r.room)
                if room is not None and r.room in v.rooms:
                    if not room.subscribed:
                        break
                    if r.since is not None:
                        if not self._resume(v, room, r.since):
                            break
                        self._done_waiting(v, room)
                        n += 1
                        continue
                    if not self._head_known(room):
                        self.want_head.add(room.name)
                        break
                    self._done_waiting(v, room)
                    v.send(encode_server_message(self._joined(room, v)))
                    n += 1
                    continue
                v.send(encode_server_message(Joined(r.room)))  # moot: it left meanwhile
            else:
                v.send(r)
            n += 1
        del replies[:n]
        if not replies and v.replies is replies:
            v.replies = None
        if n:
            self._catch_up(v)  # rooms whose joined was owed: from the position it gave

    def _head_known(self, room: Room[P]) -> bool:
        """A plain join can be confirmed with the room's newest position (or there is no
        history to give one from)."""
        return not self.epoch or (room.log is not None and room.log.last != UNKNOWN)

    def _joined(self, room: Room[P], v: P) -> Joined:
        """A plain join's ack, with where the viewer is in the room: the newest blob if it is
        live, else the last one it has (it is being caught up)."""
        log = room.log
        if not self.epoch or log is None or log.last == UNKNOWN:
            return Joined(room.name)
        return Joined(room.name, position=f"{self.epoch}:{room.behind.get(v, log.last)}")

    def head_read(self, name: str, seq: int, read_for: object = None) -> None:
        """The room's newest stored blob is `seq` (0: it has none), read after its
        subscription (`read_for`: the Room it was read for, if not the current one): joins
        waiting to be confirmed with a position can be now."""
        self.want_head.discard(name)
        room = self.rooms.get(name)
        if room is None or not room.subscribed or (read_for is not None and read_for is not room):
            return  # read for a subscription since given up: the next one asks again
        log = self.log_for(name)
        assert log is not None
        if log.last == UNKNOWN:  # (live blobs that came meanwhile know better)
            log.last = seq
        for v in list(room.waiting):
            self._settle(v)

    @staticmethod
    def _done_waiting(v: P, room: Room[P]) -> None:
        waiting = room.waiting
        for i, w in enumerate(waiting):
            if w is v:
                del waiting[i]
                return

    # ---- resume: a join with `since` ----------------------------------------------------------

    def _resume(self, v: P, room: Room[P], since: Position) -> bool:
        """Answer a resume if it can be answered now: `joined` with `recovered`, the blobs
        after `since`, then the live fan-out. False if it waits on a history read."""
        log = room.log
        entries: list[Entry] | None = None
        if self.epoch and since.epoch == self.epoch:
            entries = log.after(since.seq) if log is not None else None
            if entries is None and v not in room.tried:
                self.want_history.add(room.name)
                return False
            if entries is not None and len(entries) > self.max_replay_blobs:
                entries = None
        if entries is None:
            self.counters.not_recovered += 1
            oldest = self._oldest(room)
            v.send(encode_server_message(Joined(room.name, False, oldest)))
        else:
            self.counters.resumed += 1
            v.send(encode_server_message(Joined(room.name, True)))
            self.counters.replayed_resume += self._write_entries(v, entries)
        self._go_live(v, room)
        return True

    def _oldest(self, room: Room[P]) -> str | None:
        log = room.log
        if log is None or not log.entries:
            return None
        return f"{log.epoch}:{log.entries[0].seq}"

    def _write_entries(self, v: P, entries: list[Entry]) -> int:
        """Blobs of a room's log to one viewer, in one write. Returns how many."""
        if not entries or v.state is not OPEN:
            return 0
        deflater, deflate = self.deflater, v.deflate
        data = b"".join([e.frame(deflater, deflate) for e in entries])
        try:
            v.transport.write(data)  # type: ignore[union-attr]
        except Exception:
            return 0  # the connection is going: connection_lost closes it
        if self.sender is not None and v.transport.get_write_buffer_size():  # type: ignore[union-attr]
            self.mark_queued(v)
        return len(entries)

    def _go_live(self, v: P, room: Room[P]) -> None:
        """Caught up in `room`: on its live fan-out (or, if its buffer is full again, at the
        room's newest position, to be caught up once it drains)."""
        room.tried.discard(v)
        if v.paused and room.log is not None and room.log.last != UNKNOWN:
            room.behind[v] = room.log.last
            return
        room.behind.pop(v, None)
        room.viewers.add(v)
        room.plain = None

    # ---- the history: logs, reads, resets -----------------------------------------------------

    def log_for(self, name: str) -> RoomLog | None:
        """The log of a room with local viewers (made on its first blob), push-to-all's for
        `_all`; None if the room has no viewer here."""
        if name == ALL_ROOM:
            return self.all_log
        room = self.rooms.get(name)
        if room is None:
            return None
        if room.log is None:
            room.log = RoomLog(self.epoch, self.ring_blobs)
        return room.log

    def history_request(self, name: str) -> int | None:
        """Where to start reading the room's history for the viewers waiting in it (the read
        stops at `history_head`); None if nobody needs a read."""
        self.want_history.discard(name)
        room = self.rooms.get(name)
        if room is None or not room.subscribed:
            return None
        log = room.log
        need = [
            seq
            for v, seq in room.behind.items()
            if v not in room.tried and (log is None or log.after(seq) is None)
        ]
        return min(need) if need else None

    def history_head(self, name: str) -> int | None:
        """Where a read for the room must stop (its log's oldest blob): None: not known yet."""
        room = self.rooms.get(name)
        if room is None or room.log is None or not room.log.entries:
            return None
        return room.log.first

    def history_read(
        self, name: str, start: int, found: list[tuple[int, bytes]], connected: bool
    ) -> None:
        """A history read for the room is done: `found` (seq, blob as stored) from `start`
        on, `connected`: it reached the room's log (or the end of the history), so it is
        prepended. Then every viewer it covered is answered or caught up."""
        room = self.rooms.get(name)
        if room is None:
            return
        self.counters.history_reads += 1
        log = self.log_for(name)
        assert log is not None
        if connected:
            log.prepend(found, self.max_replay_blobs + log.size)
        stored = {seq for seq, _ in found}
        for v, seq in room.behind.items():
            if seq < start or (not connected and seq != start):
                continue
            if seq > log.last and seq in stored:
                continue  # newer than our live blobs: it will be answered once they arrive
            room.tried.add(v)
        for v in list(room.behind):
            if v not in room.waiting:
                self._catch_up(v)
            elif v.replies is not None:
                self._settle(v)
        if not room.behind:
            log.trim()

    def settle_room(self, name: str) -> None:
        """Blobs were added to the room's log: resumes waiting for them may go on."""
        room = self.rooms.get(name)
        if room is None:
            return
        for v in list(room.waiting):
            if v in room.behind:
                self._settle(v)
        for v in list(room.behind):
            if v.lagging and not v.paused and v not in room.waiting:
                self._catch_up(v)

    def reset_room(self, name: str) -> None:
        """The room's log skipped blobs the history no longer had: tell its viewers."""
        room = self.rooms.get(name)
        if room is None:
            return
        message = encode_server_message(Reset(name, self._oldest(room)))
        for v in list(room.viewers):
            self.counters.resets += 1
            self.reply(v, message)

    def new_epoch(self, epoch: int) -> None:
        """The history is another one now (first known, or reset): logs start again, and
        viewers already in rooms are told that what came before cannot be resumed."""
        old, self.epoch = self.epoch, epoch
        self.all_log.reset(epoch)
        for name, room in self.rooms.items():
            if room.log is not None:
                room.log.reset(epoch)
            if old:
                self.reset_room(name)

    # ---- slow viewers -------------------------------------------------------------------------

    def slow_down(self, v: P, now: float) -> None:
        """The viewer's write buffer went over the high-water mark: it leaves the live fan-out
        of its rooms (after the fan-out under way, which it still gets) and will be caught up
        from their logs once it drains."""
        if v.state is not OPEN:
            return
        v.paused = True
        if not v.slow_since:
            v.slow_since = now
            self.slow.add(v)
        if self._fanning:
            self._newly_slow.append(v)
        else:
            self._lag(v)

    def _lag(self, v: P) -> None:
        if v.state is not OPEN:
            return
        v.lagging = True
        for name in v.rooms:
            room = self.rooms.get(name)
            if room is None or v not in room.viewers:
                continue
            log = room.log
            if log is not None and log.last != UNKNOWN:
                room.viewers.discard(v)
                room.behind[v] = log.last
            room.plain = None  # else it stays, skipped while lagging: no position to resume
        if self.all_log.last != UNKNOWN:
            self.all_behind.setdefault(v, self.all_log.last)

    def caught_up(self, v: P) -> None:
        """The viewer's write buffer drained: send it what it missed, then back to live."""
        v.paused = False
        if v.lagging:
            self._catch_up(v)
        elif v.slow_since:
            v.slow_since = 0.0
            self.slow.discard(v)

    def _catch_up(self, v: P) -> None:
        if v.state is not OPEN or v.paused:
            return
        for name in list(v.rooms):
            room = self.rooms.get(name)
            if room is None or v not in room.behind or v in room.waiting:
                continue
            log = room.log
            seq = room.behind[v]
            entries = log.after(seq) if log is not None else None
            if entries is None:
                if v not in room.tried:
                    self.want_history.add(name)
                    continue
                self.counters.resets += 1  # the history no longer has what it missed
                v.send(encode_server_message(Reset(name, self._oldest(room))))
            else:
                self.counters.replayed_slow += self._write_entries(v, entries)
            self._go_live(v, room)
            if v.paused:
                return
        all_seq = self.all_behind.get(v)
        if all_seq is not None:
            entries = self.all_log.after(all_seq)
            if entries is None:
                self.counters.resets += 1
                v.send(encode_server_message(Reset(ALL_ROOM, None)))
            else:
                self.counters.replayed_slow += self._write_entries(v, entries)
            if v.paused:
                self.all_behind[v] = self.all_log.last
                return
            del self.all_behind[v]
        if v.state is not OPEN or any(
            v in r.behind and v not in r.waiting
            for r in (self.rooms.get(n) for n in v.rooms)
            if r is not None
        ):
            return
        v.lagging = False
        v.slow_since = 0.0
        self.slow.discard(v)
        self._changed(v)

    def overdue_slow(self, now: float, grace_s: float) -> list[P]:
        """Viewers slow for longer than the grace period (to be closed with 4008)."""
        return [v for v in self.slow if now - v.slow_since >= grace_s]

    # ---- deadlines ----------------------------------------------------------------------------

    def overdue_handshakes(self, now: float, timeout_s: float, idle_s: float) -> list[P]:
        """Handshakes past their deadline, or silent for longer than `idle_s`."""
        return [
            v
            for v, (started, last) in self.handshaking.items()
            if now - started >= timeout_s or now - last >= idle_s
        ]

    def overdue_closes(self, now: float, timeout_s: float) -> list[P]:
        """Viewers whose close handshake we began that the peer has not finished in time."""
        return [v for v, since in self.closing.items() if now - since >= timeout_s]

    # ---- fan-out (the hot path) ---------------------------------------------------------------

    def fanout(self, batch: list[tuple[str, bytes]]) -> FanoutResult[P]:
        """Write each blob, framed once, to every OPEN viewer of its room (push-to-all: all).

        Framed once means twice at most: plain, and compressed once for the viewers that
        negotiated permessage-deflate. Several blobs in one batch (one loop turn) reach a viewer
        that gets more than one of them in one write. A write that raises closes that viewer
        (reported in `broken`); everyone else still gets the frame.
        """
        result: FanoutResult[P] = FanoutResult()
        self._fanning = True
        try:
            self._fanout(batch, result)
        finally:
            self._fanning = False
        if self._newly_slow:  # off the live fan-out now that everyone has had this turn's blobs
            newly, self._newly_slow = self._newly_slow, []
            for v in newly:
                self._lag(v)
        if result.broken:
            result.broken = list(dict.fromkeys(result.broken))
            for v in result.broken:
                self._close_broken(v, result)
        return result

    def _fanout(self, batch: list[tuple[str, bytes]], result: FanoutResult[P]) -> None:
        if len(batch) == 1 and batch[0][0] != ALL_ROOM:
            name, data = batch[0]
            room = self.rooms.get(name)
            if room is None:
                return
            if not _is_utf8(data):
                result.rejected = 1
                return
            if room.behind:
                result.dropped += sum(1 for v in room.behind if v.lagging)
            frame = text_frame(data)
            if room.plain is None:
                self._writers(room)
            if room.bare:
                self._write_bare(room, frame, data, result)
            else:
                self._write_viewers(room.viewers, frame, data, result)
        else:
            self._fanout_many(batch, result)

    def _write_bare(
        self, room: Room[P], frame: bytes, data: bytes, result: FanoutResult[P]
    ) -> None:
        if self.sender is not None:  # no viewer here has bytes queued: direct sends keep order
            wave: _Wave[P] = _Wave()
            self._add_to_wave(wave, room, frame, data, result)
            self._send_wave(wave, result)
            return
        plain, deflated = room.plain, room.deflated
        assert plain is not None
        broken = len(result.broken)
        if plain:
            self._write_each(plain, frame, room, result)
            result.nbytes += len(plain) * len(frame)
        if deflated:
            zframe = self._deflate(data) or frame
            self._write_each(deflated, zframe, room, result)
            result.nbytes += len(deflated) * len(zframe)
            if zframe is not frame:
                result.deflated += len(deflated)
        result.sent += len(plain) + len(deflated) - (len(result.broken) - broken)

    def _add_to_wave(
        self, wave: _Wave[P], room: Room[P], frame: bytes, data: bytes, result: FanoutResult[P]
    ) -> None:
        wave.rooms.add(room.name)
        if room.plain_fds:
            wave.items.append((room.plain_fds, frame))
            wave.viewers.append(room.plain_viewers)
            result.sent += len(room.plain_fds)
            result.nbytes += len(room.plain_fds) * len(frame)
        if room.deflated_fds:
            zframe = self._deflate(data) or frame
            wave.items.append((room.deflated_fds, zframe))
            wave.viewers.append(room.deflated_viewers)
            result.sent += len(room.deflated_fds)
            result.nbytes += len(room.deflated_fds) * len(zframe)
            if zframe is not frame:
                result.deflated += len(room.deflated_fds)

    def _send_wave(self, wave: _Wave[P], result: FanoutResult[P]) -> None:
        """One call for the wave's frames. What a socket did not take goes on through that
        viewer's own transport queue, in order (a short write: the remainder; EAGAIN: all of it);
        any other error means the connection is gone."""
        send = self.sender
        assert send is not None
        if not wave.items:
            return
        broken = len(result.broken)
        for item, index, sent in send(wave.items):
            v = wave.viewers[item][index]
            frame = wave.items[item][1]
            if sent >= 0:
                rest = frame[sent:]
            elif sent == -errno.EAGAIN:
                rest = frame
            else:
                result.broken.append(v)
                continue
            try:
                v.transport.write(rest)  # type: ignore[union-attr]
            except Exception:
                result.broken.append(v)
                continue
            self.mark_queued(v)
        result.sent -= len(result.broken) - broken

    def mark_queued(self, v: P) -> None:
        """The viewer's transport holds unsent bytes: out of the direct-send lists until drained."""
        if not v.queued and v.state is OPEN:
            v.queued = True
            self.queued.add(v)
            self._changed(v)

    def drained(self) -> None:
        """Viewers whose queued bytes have all gone out may be sent to directly again."""
        for v in [v for v in self.queued if not v.transport.get_write_buffer_size()]:  # type: ignore[union-attr]
            v.queued = False
            self.queued.discard(v)
            self._changed(v)

    def _deflate(self, data: bytes) -> bytes | None:
        return None if self.deflater is None else self.deflater.frame(data)

    def _write_each(
        self,
        writers: list[Callable[[bytes], object]],
        frame: bytes,
        room: Room[P],
        result: FanoutResult[P],
    ) -> None:
        """The bare loop; the try costs nothing until a write raises (then find who it was)."""
        it = iter(writers)
        while True:
            try:
                for write in it:
                    write(frame)
                return
            except Exception:
                result.broken.append(self._writer_owner(room, write))

    @staticmethod
    def _writer_owner(room: Room[P], write: Callable[[bytes], object]) -> P:
        owner = getattr(write, "__self__", None)
        for v in room.viewers:
            if v.transport is owner:
                return v
        raise LookupError(f"a writer of room {room.name!r} has no viewer")  # pragma: no cover

    def _write_viewers(
        self,
        viewers: Iterable[P],
        frame: bytes,
        data: bytes,
        result: FanoutResult[P],
        combined: dict[P, list[bytes]] | None = None,
        combine_all: bool = False,
    ) -> None:
        """Each viewer's frame (plain or compressed) through its transport; with `combined`, the
        frames of viewers that get several this turn (several rooms, or `combine_all`: push-to-all
        is in the turn) are gathered there, to go out in one write each."""
        zframe = None
        for v in viewers:
            if v.lagging:
                result.dropped += 1  # (caught up from the log once it drains, if it has one)
                continue
            out = frame
            if v.deflate:
                if zframe is None:
                    zframe = self._deflate(data) or frame
                out = zframe
            if combined is not None and (combine_all or len(v.rooms) > 1):
                frames = combined.get(v)
                if frames is None:
                    combined[v] = [out]
                else:
                    frames.append(out)
            elif self._write(v, out, result):
                result.sent += 1
                result.nbytes += len(out)
                result.deflated += out is not frame

    def _write(self, v: P, data: bytes, result: FanoutResult[P]) -> bool:
        """One write through the viewer's transport (the paths that are not a bare loop)."""
        try:
            v.transport.write(data)  # type: ignore[union-attr]
        except Exception:
            result.broken.append(v)
            return False
        if self.sender is not None and v.transport.get_write_buffer_size():  # type: ignore[union-attr]
            self.mark_queued(v)  # no direct send may overtake what it left queued
        return True

    def _fanout_many(self, batch: list[tuple[str, bytes]], result: FanoutResult[P]) -> None:
        has_all = any(name == ALL_ROOM for name, _ in batch)
        combined: dict[P, list[bytes]] = {}
        wave: _Wave[P] | None = _Wave() if self.sender is not None else None
        for name, data in batch:
            room = None
            if name == ALL_ROOM:
                targets: Iterable[P] = self.viewers
            else:
                room = self.rooms.get(name)
                if room is None:
                    continue
                targets = room.viewers
            if not _is_utf8(data):
                result.rejected += 1
                continue
            if room is not None and room.behind:
                result.dropped += sum(1 for v in room.behind if v.lagging)
            frame = text_frame(data)
            if room is not None and not has_all:
                if room.plain is None:
                    self._writers(room)
                if room.bare and wave is not None:  # sent with the turn's other bare rooms
                    if room.name in wave.rooms:  # one descriptor at most once per submission
                        self._send_wave(wave, result)
                        wave = _Wave()
                        if room.plain is None:  # some of its viewers queued bytes meanwhile
                            self._writers(room)
                    if room.bare:
                        self._add_to_wave(wave, room, frame, data, result)
                        continue
                elif room.bare:  # nobody here gets another frame this turn: write it now
                    self._write_bare(room, frame, data, result)
                    continue
            self._write_viewers(targets, frame, data, result, combined, has_all)
        if wave is not None and wave.items:
            self._send_wave(wave, result)
        for v, frames in combined.items():
            if len(frames) == 1:
                out = frames[0]
            else:
                out = b"".join(frames)
                result.coalesced += 1
            if not self._write(v, out, result):
                continue
            result.sent += len(frames)
            result.nbytes += len(out)
            if v.deflate:
                result.deflated += sum(f[0] & 0x40 != 0 for f in frames)

    def _close_broken(self, v: P, result: FanoutResult[P]) -> None:
        interest = self.close(v, final=True)
        result.interest.unsubscribe += interest.unsubscribe

    def _writers(self, room: Room[P]) -> None:
        """Work out the room's bare-loop lists (plain and deflate viewers apart): writers, or
        with a Sender the descriptors (viewers with queued bytes are not bare)."""
        vs = room.viewers
        room.bare = all(not v.lagging and not v.queued and len(v.rooms) == 1 for v in vs)
        plain = [v for v in vs if not v.deflate] if room.bare else []
        deflated = [v for v in vs if v.deflate] if room.bare else []
        if self.sender is not None:
            room.plain_viewers, room.deflated_viewers = plain, deflated
            room.plain_fds = array("i", [v.fd for v in plain])
            room.deflated_fds = array("i", [v.fd for v in deflated])
            room.plain, room.deflated = [], []
        else:
            room.plain = [v.transport.write for v in plain]  # type: ignore[union-attr]
            room.deflated = [v.transport.write for v in deflated]  # type: ignore[union-attr]

    def _changed(self, v: P) -> None:
        """`v` joined, left, got slow or caught up: its rooms' writer lists are stale."""
        rooms = self.rooms
        for name in v.rooms:
            room = rooms.get(name)
            if room is not None:
                room.plain = None

    # ---- viewer counts ------------------------------------------------------------------------

    def local_count(self, name: str) -> int:
        """Viewers of the room on this worker: live, resuming or slow (being caught up)."""
        room = self.rooms.get(name)
        return 0 if room is None else len(room.viewers) + len(room.behind)

    def local_counts(self) -> dict[str, int]:
        """Every room with a viewer on this worker -> its viewers."""
        counts = {}
        for name, room in self.rooms.items():
            n = len(room.viewers) + len(room.behind)
            if n:
                counts[name] = n
        return counts

    def broadcast(self, name: str, message: bytes) -> int:
        """A protocol message (not a blob) to every OPEN viewer of the room, live or not, each
        after the replies it is still owed (a `count` never overtakes the `joined` of its room).
        Returns how many got it (or have it queued behind their replies)."""
        room = self.rooms.get(name)
        if room is None:
            return 0
        n = 0
        for v in [*room.viewers, *room.behind]:
            if v.state is OPEN:
                self.reply(v, message)
                n += 1
        return n


@dataclass(slots=True)
class _Wave(Generic[P]):
    """Bare rooms' frames of one loop turn, to be sent in one submission."""

    items: list[tuple[array[int], bytes]] = field(default_factory=list)
    viewers: list[list[P]] = field(default_factory=list)  # per item, in the fds' order
    rooms: set[str] = field(default_factory=set)


def _is_utf8(data: bytes) -> bool:
    """Blobs go out as text frames: every client fails the connection on bad UTF-8 (RFC 6455
    8.1). Checked once per blob, never per viewer; an ASCII blob (most) needs no decode."""
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
