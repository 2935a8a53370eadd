"""Kafka positions: what ingest may commit, and how viewers drop duplicates.

Every event has a position: its Kafka (partition, offset). Two rules follow from it.

Commit (ingest): a partition's offset is committed only below the oldest event whose blob is
not yet acknowledged by JetStream (`PartitionOffsets.committable`). A crash replays from there;
nothing is lost.

Dedup (viewers, gateways, tests): a replay after a crash or a rebalance can deliver events a
second time, merged into different blobs. Per room and partition, keep the highest offset
seen; drop any event at or below it (`Deduper`). Events of one room are in one partition (the
Kafka key is the room) and arrive in offset order, so this leaves each event exactly once, in
order.
"""

from __future__ import annotations

from roomcast.core.blob import Blob


class PartitionOffsets:
    """Offsets of one partition that are consumed but not yet safely published.

    One set of the unacknowledged offsets: a fetched batch goes in and an acknowledged blob's
    offsets come out with one C-level set operation each, and the commit point is the smallest
    offset left, looked up only when a commit is due. No Python work per event.
    """

    __slots__ = ("_low", "_unacked", "last_consumed")

    def __init__(self) -> None:
        self._unacked: set[int] = set()
        self._low = -1  # the last commit point found while something was unacked
        self.last_consumed = -1

    def consumed(self, offset: int) -> None:
        """An event (or a dead letter) at `offset` now needs publishing before commit."""
        self._unacked.add(offset)
        if offset > self.last_consumed:
            self.last_consumed = offset

    def consumed_many(self, offsets: list[int]) -> None:
        """`consumed` for a whole fetched batch, in order (one call instead of one per event)."""
        if offsets:
            self._unacked.update(offsets)
            if offsets[-1] > self.last_consumed:
                self.last_consumed = offsets[-1]

    def done(self, offsets: list[int]) -> None:
        """These offsets are acknowledged downstream (JetStream, or the dead-letter topic)."""
        self._unacked.difference_update(offsets)

    def committable(self) -> int | None:
        """The offset to commit (Kafka's "next offset to read"), or None if nothing consumed."""
        unacked = self._unacked
        if unacked:
            # Offsets only grow, so the oldest unacked one stays the minimum until it is acked.
            if self._low not in unacked:
                self._low = min(unacked)
            return self._low
        return None if self.last_consumed < 0 else self.last_consumed + 1

    @property
    def in_flight(self) -> int:
        """Events consumed and not yet acknowledged: buffered, in flight, or waiting to retry."""
        return len(self._unacked)


class Deduper:
    """Drops events already seen, by (room, partition, offset). See the module docstring."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], int] = {}

    def fresh(self, blob: Blob) -> list[tuple[int, bytes]]:
        """The (offset, event JSON) pairs of `blob` not seen before, in order."""
        key = (blob.room, blob.partition)
        last = self._last.get(key, -1)
        out = [(o, bytes(e)) for o, e in zip(blob.offsets, blob.events, strict=True) if o > last]
        if out:
            self._last[key] = out[-1][0]
        return out

    def last(self, room: str, partition: int) -> int:
        return self._last.get((room, partition), -1)
