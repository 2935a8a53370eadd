"""The per-room merge window: many events in, at most one blob per room per window out.

Leading edge: the first event of a room that has been quiet for a whole window is published
at once, so sparse rooms get no added delay. Events arriving within a window of the last blob
are merged and published when that window ends. A hot room thus gets at most one blob per
window (ceil(T / window) + 1 blobs over T seconds), whatever its event rate. A buffer is
flushed early when it reaches `max_events` or `max_bytes`. `window_s == 0` disables merging.

Each blob also carries when its first (oldest) event was produced: the caller passes every
event's Kafka timestamp, and it is kept once per blob, when the blob starts (never per event).

Pure: the caller passes `now` (monotonic seconds) and publishes what comes back.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from roomcast.core.blob import blob_msg_id, encode_blob

DEFAULT_WINDOW_S = 1.0
DEFAULT_MAX_EVENTS = 2000
DEFAULT_MAX_BYTES = 256 * 1024


@dataclass(slots=True)
class PendingBlob:
    """Events of one room and partition, waiting to be published as one blob."""

    room: str
    partition: int
    offsets: list[int] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)
    nbytes: int = 0
    produced_ms: int = -1  # Kafka timestamp (ms) of the first event; -1: unknown

    def encode(self) -> bytes:
        return encode_blob(self.room, self.partition, self.offsets, self.events)

    @property
    def msg_id(self) -> str:
        return blob_msg_id(self.room, self.partition, self.offsets)


@dataclass(slots=True)
class _Room:
    last_flush: float
    due: float  # the one heap entry of this room: when its window ends
    buf: PendingBlob | None = None


_NONE: tuple[PendingBlob, ...] = ()


class MergeWindow:
    """Per-room merge state for one ingest worker. See the module docstring."""

    def __init__(
        self,
        window_s: float = DEFAULT_WINDOW_S,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if window_s < 0:
            raise ValueError("window must be >= 0 seconds")
        self.window_s = window_s
        self.max_events = max(1, max_events)
        self.max_bytes = max_bytes
        self._rooms: dict[str, _Room] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0

    def add(
        self,
        room: str,
        partition: int,
        offset: int,
        event: bytes,
        now: float,
        produced_ms: int = -1,
    ) -> tuple[PendingBlob, ...] | list[PendingBlob]:
        """Add one event (`produced_ms`: its Kafka timestamp); return the blobs to publish now
        (often none). A blob keeps the timestamp of the event that started it."""
        state = self._rooms.get(room)
        if state is None:
            # Leading edge: the room was idle for a whole window (or merging is off).
            blob = PendingBlob(room, partition, [offset], [event], len(event), produced_ms)
            if self.window_s > 0:
                self._schedule(room, _Room(last_flush=now, due=now + self.window_s))
            return (blob,)
        buf = state.buf
        if buf is not None and buf.partition == partition:  # the hot path: append, no list
            buf.offsets.append(offset)
            buf.events.append(event)
            buf.nbytes += len(event)
            if len(buf.offsets) < self.max_events and buf.nbytes < self.max_bytes:
                return _NONE
            return (self._take(state),)
        out: list[PendingBlob] = []
        if buf is not None:
            # Should not happen with room-keyed records; keep positions exact if it does.
            out.append(self._take(state))
            buf = None
        if buf is None:
            buf = state.buf = PendingBlob(room, partition, produced_ms=produced_ms)
        buf.offsets.append(offset)
        buf.events.append(event)
        buf.nbytes += len(event)
        if len(buf.offsets) >= self.max_events or buf.nbytes >= self.max_bytes:
            out.append(self._take(state))
        return out or _NONE

    def next_due(self) -> float | None:
        """When `due` will next have something to do (None: nothing pending)."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[PendingBlob]:
        """Blobs whose window has ended by `now`; forgets rooms idle for a whole window."""
        out: list[PendingBlob] = []
        heap, rooms = self._heap, self._rooms
        while heap and heap[0][0] <= now:
            _, _, room = heapq.heappop(heap)
            state = rooms[room]
            if state.buf is None:
                del rooms[room]  # idle for a window: its next event is a leading edge
                continue
            out.append(self._take(state))
            state.last_flush = now
            self._schedule(room, state, now + self.window_s)
        return out

    def drain(self, partitions: set[int] | None = None) -> list[PendingBlob]:
        """Take every buffered blob now (shutdown, or `partitions` revoked by a rebalance)."""
        out = []
        for state in self._rooms.values():
            if state.buf is not None and (partitions is None or state.buf.partition in partitions):
                out.append(self._take(state))
        return out

    @property
    def rooms(self) -> int:
        return len(self._rooms)

    @property
    def buffered_events(self) -> int:
        """Events waiting in a window (counted when asked, not on every add)."""
        return sum(len(s.buf.offsets) for s in self._rooms.values() if s.buf is not None)

    def _take(self, state: _Room) -> PendingBlob:
        buf = state.buf
        assert buf is not None
        state.buf = None
        return buf

    def _schedule(self, room: str, state: _Room, due: float | None = None) -> None:
        if due is not None:
            state.due = due
        self._rooms[room] = state
        self._seq += 1
        heapq.heappush(self._heap, (state.due, self._seq, room))
