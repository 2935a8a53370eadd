"""What a viewer knows about each of its rooms, from the messages it got: no I/O here.

Two rules keep what an app sees exact (docs/protocol.md, "Positions and duplicates"):

- blob positions: per room, the `seq` of the last blob taken (with its `epoch`) is the room's
  position, `EPOCH:SEQ`. A blob whose `seq` is at or below it, in the same epoch, was already
  taken (a resume that overlaps what arrived live) and is dropped whole;
- event positions: per (room, partition), events at or below the highest Kafka offset seen are
  dropped (`roomcast.core.positions.Deduper`): a Kafka replay stores events again in new blobs.

The tracker also keeps what the gateway said about each room: `recovered` from the last
`joined`, the viewer `counts`, and how many times continuity was lost (`resets`: a `joined` with
`recovered:false`, or a `reset`), which tells an app to reload the room's state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from roomcast.core.blob import Blob
from roomcast.core.positions import Deduper
from roomcast.core.protocol import Count, Joined, Position, Reset, parse_position
from roomcast.core.rooms import check_room


class RoomTracker:
    """Positions, dedup and room state of one viewer, across all its connections."""

    __slots__ = ("counts", "dedup", "positions", "recovered", "resets", "stale_blobs")

    def __init__(self, since: Mapping[str, str | Position] | None = None) -> None:
        self.positions: dict[str, Position] = {}
        for room, pos in (since or {}).items():
            check_room(room)
            self.positions[room] = pos if isinstance(pos, Position) else parse_position(pos)
        self.dedup = Deduper()
        self.recovered: dict[str, bool | None] = {}
        self.counts: dict[str, int] = {}
        self.resets = 0
        self.stale_blobs = 0  # blobs dropped whole by their position

    def blob(self, blob: Blob) -> Blob | None:
        """The blob with only the events not seen before, or None if it holds nothing new.

        A blob from the history (`seq` > 0) moves the room's position, even when every event
        in it is a repeat: the position says which blobs were taken, the offsets which events.
        """
        if blob.seq:
            pos = self.positions.get(blob.room)
            if pos is not None and pos.epoch == blob.epoch and blob.seq <= pos.seq:
                self.stale_blobs += 1
                return None
            self.positions[blob.room] = Position(blob.epoch, blob.seq)
        fresh = self.dedup.fresh(blob)
        if not fresh:
            return None
        if len(fresh) == len(blob.offsets):
            return blob
        return msgspec.structs.replace(
            blob,
            offsets=[offset for offset, _ in fresh],
            events=[msgspec.Raw(event) for _, event in fresh],
        )

    def joined(self, msg: Joined) -> bool:
        """Note a `joined`; True if the room lost continuity (`recovered: false`)."""
        self.recovered[msg.room] = msg.recovered
        if msg.recovered is False:
            self.resets += 1
            return True
        return False

    def reset(self, msg: Reset) -> None:
        """Note a `reset`: some blobs of the room will never come."""
        self.resets += 1

    def count(self, msg: Count) -> None:
        self.counts[msg.room] = msg.viewers

    def since(self, rooms: Iterable[str]) -> list[str]:
        """`ROOM:EPOCH:SEQ` for each of `rooms` with a position: the URL's `since` values."""
        return [f"{room}:{self.positions[room]}" for room in rooms if room in self.positions]

    def position_strings(self) -> dict[str, str]:
        return {room: str(pos) for room, pos in self.positions.items()}
