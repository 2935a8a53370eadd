"""Cluster-wide viewer counts per room. Pure: messages and time in, messages and decisions out.

Every gateway worker publishes, on one NATS subject (`roomcast.counts`), its own count of each room
whose local count changed since its last message, and sums the latest share of every worker it
hears from. No member lists and no message per join: one message per worker per interval, however
many viewers come and go.

A message (`CountMessage`, JSON) carries the sender's id (unique per process and worker), a
sequence number, and `rooms: {room: count}`, each count absolute (0: the room emptied there).
`full` marks a snapshot of all the sender's rooms: its share is replaced by it (a snapshot too big
for one message is split: the first part is `full`, every part but the last carries `more`).
Snapshots go out as the first message, every `full_every`th message, when a new worker is heard
from (it learns everything within one interval) and when a worker asks for one (`want`: it saw a
gap in our sequence). With nothing to say, a worker still publishes an empty heartbeat every
interval; one silent for three of its intervals is gone (it died) and its share is forgotten, as is
the share of one that says `bye` (it stops).

A missed message (a sequence gap) loses only rooms that changed in it: every count received is
absolute, so the others stay right. The share is marked incomplete, the receiver puts the sender in
`want` of its next messages, and the sender's next message is a snapshot that replaces the share.

The I/O shell (`engine.Gateway`) feeds this object: the local counts (`update_local`), messages
received (`receive`) and the time (`outgoing`, `expire`, `pushes`), and publishes and pushes what
it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

SUBJECT = "roomcast.counts"
"""The one NATS subject every gateway worker publishes its counts on and listens to."""

EXPIRE_INTERVALS = 3  # a worker silent this many of its intervals is gone
FULL_EVERY = 10  # a snapshot every this many messages, whatever else happens
MAX_ROOMS_PER_MESSAGE = 4096  # 4096 rooms of 128 characters stay well under NATS's 1 MiB payload


class CountMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """One worker's message on `roomcast.counts`."""

    worker: str  # unique per process and worker (a random id and the worker number)
    seq: int  # 1, 2, 3... per sender: a gap means a message was missed
    interval: float  # the sender's interval (s): it is gone after EXPIRE_INTERVALS of silence
    rooms: dict[str, int] = {}  # room -> this sender's viewers; only rooms changed unless `full`
    full: bool = False  # a snapshot starts: every room of the sender (rooms absent have 0)
    more: bool = False  # the snapshot goes on in the next message (too many rooms for one)
    want: list[str] = []  # workers whose snapshot the sender asks for (it saw a gap)
    bye: bool = False  # the sender stops: forget it now (its viewers are gone)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CountMessage)


def encode_message(msg: CountMessage) -> bytes:
    return _encoder.encode(msg)


def decode_message(data: bytes) -> CountMessage:
    """Raises msgspec.DecodeError (a ValueError) on anything that is not a CountMessage."""
    return _decoder.decode(data)


@dataclass(slots=True)
class Share:
    """What one other worker said it holds."""

    seq: int  # the last sequence number heard
    heard: float  # when (monotonic seconds)
    interval: float  # its interval: silent for EXPIRE_INTERVALS of these, it is gone
    rooms: dict[str, int] = field(default_factory=dict)  # rooms with a count > 0
    complete: bool = False  # a whole snapshot since the last gap: every room it has is here
    snapshot: set[str] | None = None  # rooms of a split snapshot being received


class Counts:
    """One worker's view of every room's viewers across the cluster."""

    def __init__(
        self,
        worker: str,
        interval: float = 2.0,
        now: float = 0.0,
        full_every: int = FULL_EVERY,
        max_rooms: int = MAX_ROOMS_PER_MESSAGE,
    ) -> None:
        self.worker = worker
        self.interval = interval
        self.full_every = full_every
        self.max_rooms = max_rooms
        self.started = now
        self.local: dict[str, int] = {}  # this worker's rooms with a viewer -> count
        self.shares: dict[str, Share] = {}  # the other workers heard from, by id
        self.totals: dict[str, int] = {}  # room -> viewers cluster-wide (rooms with any)
        self._sum = 0  # of the totals
        self.seq = 0  # of the last message sent
        self._pending: set[str] = set()  # local rooms changed since the last message
        self._full_due = True  # the first message is a snapshot
        self._since_full = 0  # messages sent since the last snapshot
        self._last_sent = -1e18
        self._last_change_sent = -1e18
        self._changed: set[str] = set()  # rooms whose total changed since looked at by pushes
        self._pushed: dict[str, tuple[int, float]] = {}  # local room -> (total pushed, when)

    # ---- totals -------------------------------------------------------------------------------

    def total(self, room: str) -> int:
        """The room's viewers across the cluster, as this worker knows them (0: nobody)."""
        return self.totals.get(room, 0)

    def cluster_viewers(self) -> int:
        """Viewers of every room across the cluster (a viewer in two rooms counts twice)."""
        return self._sum

    def known(self, now: float) -> bool:
        """Whether the totals can be trusted: an interval has passed since this worker started
        (every live worker has spoken, and heard our first message, so sends us its snapshot),
        and no share is waiting for a snapshot; or three intervals have passed, whatever."""
        elapsed = now - self.started
        if elapsed >= EXPIRE_INTERVALS * self.interval:
            return True
        return elapsed >= self.interval and all(s.complete for s in self.shares.values())

    def _add(self, room: str, delta: int) -> None:
        if not delta:
            return
        self._sum += delta
        n = self.totals.get(room, 0) + delta
        if n > 0:
            self.totals[room] = n
        else:
            self.totals.pop(room, None)
        self._changed.add(room)

    def _set(self, rooms: dict[str, int], room: str, n: int) -> None:
        """Set a count in `rooms` (a share's or the local one) and follow it in the totals."""
        old = rooms.get(room, 0)
        if n > 0:
            rooms[room] = n
        else:
            rooms.pop(room, None)
        self._add(room, n - old)

    # ---- this worker --------------------------------------------------------------------------

    def update_local(self, counts: dict[str, int]) -> None:
        """This worker's viewers per room now (rooms with at least one)."""
        local = self.local
        for room in [r for r in local if r not in counts]:
            self._set(local, room, 0)
            self._pending.add(room)
        for room, n in counts.items():
            if local.get(room, 0) != n:
                self._set(local, room, n)
                self._pending.add(room)

    def outgoing(self, now: float) -> list[CountMessage]:
        """What to publish now: nothing, or one message (a snapshot may take several).

        Changes go out at once after a quiet interval and then at most once per interval; with
        no change, a heartbeat every interval.
        """
        urgent = bool(self._pending) or self._full_due
        if not (
            (urgent and now - self._last_change_sent >= self.interval)
            or now - self._last_sent >= self.interval
        ):
            return []
        self._last_sent = now
        if urgent:
            self._last_change_sent = now
        want = sorted(w for w, s in self.shares.items() if not s.complete)
        full = self._full_due or self._since_full >= self.full_every - 1
        if full:
            self._full_due = False
            self._since_full = 0
            rooms = list(self.local.items())
        else:
            self._since_full += 1
            rooms = [(r, self.local.get(r, 0)) for r in self._pending]
        self._pending.clear()
        step = self.max_rooms
        parts = [dict(rooms[i : i + step]) for i in range(0, len(rooms), step)] or [{}]
        out = []
        for i, part in enumerate(parts):
            self.seq += 1
            more = full and i < len(parts) - 1
            first = full and i == 0
            out.append(CountMessage(self.worker, self.seq, self.interval, part, first, more, want))
        return out

    def farewell(self) -> CountMessage:
        """The last message of a worker that stops."""
        self.seq += 1
        return CountMessage(self.worker, self.seq, self.interval, bye=True)

    # ---- the others ---------------------------------------------------------------------------

    def receive(self, msg: CountMessage, now: float) -> bool:
        """A message heard on the subject (our own are ignored). True: a gap, messages of that
        worker were missed (its snapshot is asked for)."""
        if msg.worker == self.worker:
            return False
        if msg.bye:
            self._forget(msg.worker)
            return False
        if self.worker in msg.want:
            self._full_due = True
        share = self.shares.get(msg.worker)
        if share is None:  # a new worker (or one we had given up on): it needs our rooms
            self._full_due = True
            share = self.shares[msg.worker] = Share(msg.seq - 1, now, msg.interval)
        share.heard = now
        share.interval = msg.interval
        if msg.seq <= share.seq:  # a repeat, or from before what we have: nothing new
            return False
        gap = msg.seq != share.seq + 1
        if gap:
            share.snapshot = None
            share.complete = False
        share.seq = msg.seq
        rooms = share.rooms
        for room, n in msg.rooms.items():  # every count is absolute: right whatever was missed
            self._set(rooms, room, n)
        if msg.full:  # a snapshot starts
            share.snapshot = set(msg.rooms)
        elif share.snapshot is not None:  # the next part of one (no gap since it started)
            share.snapshot.update(msg.rooms)
        if share.snapshot is not None and not msg.more:  # ... and ends: the rest are 0
            seen, share.snapshot = share.snapshot, None
            for room in [r for r in rooms if r not in seen]:
                self._set(rooms, room, 0)
            share.complete = True
        return gap

    def expire(self, now: float) -> list[str]:
        """Forget the workers silent for EXPIRE_INTERVALS of their intervals; their ids."""
        gone = [w for w, s in self.shares.items() if now - s.heard > EXPIRE_INTERVALS * s.interval]
        for w in gone:
            self._forget(w)
        return gone

    def _forget(self, worker: str) -> None:
        share = self.shares.pop(worker, None)
        if share is not None:
            for room, n in share.rooms.items():
                self._add(room, -n)

    # ---- viewers ------------------------------------------------------------------------------

    def pushes(self, now: float) -> list[tuple[str, int]]:
        """(room, total) to send to the room's local viewers now: rooms with a local viewer whose
        total changed since it was last pushed, at most one push per room per interval."""
        if not self._changed or not self.known(now):
            return []
        out = []
        for room in list(self._changed):
            if room not in self.local:  # no viewer here to tell
                self._changed.discard(room)
                self._pushed.pop(room, None)
                continue
            total = self.totals.get(room, 0)
            last = self._pushed.get(room)
            if last is not None:
                if last[0] == total:
                    self._changed.discard(room)
                    continue
                if now - last[1] < self.interval:
                    continue  # pushed not long ago: it goes at the end of the interval
            self._pushed[room] = (total, now)
            self._changed.discard(room)
            out.append((room, total))
        return out
