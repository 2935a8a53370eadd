"""What each viewer got, checked against what was produced: pure, no I/O.

Producers number every event of a room 0, 1, 2, ... (`n`) and stamp it with the time it was
produced. A viewer records, per room, every event its client hands it (after the client's own
dedup), with the time it arrived, and every `joined{recovered:false}` and `reset` it was sent.
From that, per viewer and room (`RoomLog`):

- **delivered**: distinct events received within the expected range;
- **lost**: events of the expected range never received, except those of a gap the viewer was
  told about (a `recovered:false` or a `reset` before the gap closed: `announced`);
- **duplicated**: an event received a second time;
- **out of order**: an event that filled an earlier hole (order not kept);
- **max gap**: the longest time between two arrivals of data, while events were flowing.

The expected range of a room starts at the first event the viewer got or at `base` (what the
room's producer had written once every viewer had joined), whichever is lower, and ends with the
last event produced. Latency (arrival - production) goes into histograms keyed by the second
the event was produced (`Latencies`), so that the phases of a run (calm, fault) are chosen after
the fact and the histograms of many viewers and processes merge.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a latency in ms: 1 ms wide below 1 s, 10 ms below 10 s, then
    100 ms. The bucket's value is its lower bound, in ms."""
    if ms < 1000:
        return max(0, int(ms))
    if ms < 10_000:
        return int(ms) // 10 * 10
    return int(ms) // 100 * 100


class Latencies:
    """Latency histograms (ms), one per second of production time; they merge."""

    __slots__ = ("by_second",)

    def __init__(self) -> None:
        self.by_second: dict[int, Counter[int]] = {}

    def add(self, produced_at: float, received_at: float) -> None:
        second = int(produced_at)
        hist = self.by_second.get(second)
        if hist is None:
            hist = self.by_second[second] = Counter()
        hist[latency_bucket((received_at - produced_at) * 1000.0)] += 1

    def merge(self, other: Latencies) -> None:
        for second, hist in other.by_second.items():
            mine = self.by_second.get(second)
            if mine is None:
                self.by_second[second] = Counter(hist)
            else:
                mine.update(hist)

    def select(self, keep: Callable[[int], bool]) -> Counter[int]:
        """One histogram of the seconds `keep` accepts."""
        out: Counter[int] = Counter()
        for second, hist in self.by_second.items():
            if keep(second):
                out.update(hist)
        return out

    def __getstate__(self) -> dict[int, Counter[int]]:
        return self.by_second

    def __setstate__(self, state: dict[int, Counter[int]]) -> None:
        self.by_second = state


def percentile(hist: Counter[int], q: float) -> float | None:
    """The q-quantile (0..1) of a histogram, as its bucket's lower bound (ms); None if empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return float(bucket)
    return float(max(hist))


@dataclass
class RoomResult:
    """One viewer's account of one room."""

    expected: int
    delivered: int
    lost: int
    duplicated: int
    out_of_order: int
    recovered_false: int
    resets: int
    announced: int  # events missing in gaps the viewer was told about
    max_gap_s: float


class RoomLog:
    """What one viewer got of one room, in arrival order. See the module docstring."""

    __slots__ = (
        "announce_pending",
        "announced",
        "delivered",
        "duplicated",
        "first",
        "last_arrival",
        "max_gap_s",
        "missing",
        "next",
        "out_of_order",
        "recovered_false",
        "resets",
    )

    def __init__(self) -> None:
        self.first = -1  # the first n received (-1: none yet)
        self.next = 0  # 1 + the highest n received
        self.missing: set[int] = set()  # holes below `next` not (yet) received, unannounced
        self.announced = 0
        self.announce_pending = False  # told about a gap: the next hole is not a loss
        self.delivered = 0
        self.duplicated = 0
        self.out_of_order = 0
        self.recovered_false = 0
        self.resets = 0
        self.last_arrival = 0.0
        self.max_gap_s = 0.0

    def told_recovered_false(self) -> None:
        """`joined` with `recovered:false`: the gap since the last event is announced."""
        self.recovered_false += 1
        self._announce()

    def told_reset(self) -> None:
        """`reset`: blobs of the room could not be delivered; the gap is announced."""
        self.resets += 1
        self._announce()

    def _announce(self) -> None:
        # Holes already open are what the viewer is being told about; so is the next one.
        self.announced += len(self.missing)
        self.missing.clear()
        self.announce_pending = True

    def event(self, n: int, received_at: float) -> None:
        """Event `n` of the room arrived at `received_at` (seconds, the producers' clock)."""
        if self.last_arrival:
            gap = received_at - self.last_arrival
            if gap > self.max_gap_s:
                self.max_gap_s = gap
        self.last_arrival = received_at
        if self.first < 0:
            self.first = self.next = n
        if n >= self.next:
            if n > self.next:
                if self.announce_pending:
                    self.announced += n - self.next
                else:
                    self.missing.update(range(self.next, n))
            self.announce_pending = False
            self.next = n + 1
            self.delivered += 1
        elif n in self.missing:
            self.missing.discard(n)
            self.out_of_order += 1
            self.delivered += 1
        elif n < self.first:  # older than the first one received: the head grows
            self.missing.update(range(n + 1, self.first))
            self.first = n
            self.out_of_order += 1
            self.delivered += 1
        else:
            self.duplicated += 1

    def events(self, ns: Iterable[int], received_at: float) -> None:
        for n in ns:
            self.event(n, received_at)

    def result(self, produced: int, base: int, flowing_until: float = 0.0) -> RoomResult:
        """The account once the run is over: `produced` events were written to the room, `base`
        of them before every viewer had joined; data flowed until `flowing_until` (0: unknown).
        """
        start = base if self.first < 0 else min(self.first, base)
        holes = len(self.missing)
        tail = max(0, produced - max(self.next, start))
        announced = self.announced
        if self.announce_pending:
            announced += tail
        else:
            holes += tail
        if self.first > start:  # joined before `base`, yet the first events never came
            holes += self.first - start
        gap = self.max_gap_s
        if flowing_until and self.last_arrival and flowing_until - self.last_arrival > gap:
            gap = flowing_until - self.last_arrival
        return RoomResult(
            expected=max(0, produced - start),
            delivered=self.delivered,
            lost=holes,
            duplicated=self.duplicated,
            out_of_order=self.out_of_order,
            recovered_false=self.recovered_false,
            resets=self.resets,
            announced=announced,
            max_gap_s=gap,
        )


@dataclass
class Summary:
    """A scenario's viewers together."""

    viewer_rooms: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    recovered_false: int = 0
    resets: int = 0
    announced: int = 0
    max_gap_s: float = 0.0
    silent: int = 0  # viewer-rooms that never got an event
    worst: list[tuple[str, str, RoomResult]] = field(default_factory=list)

    def add(self, viewer: str, room: str, r: RoomResult, silent: bool = False) -> None:
        self.viewer_rooms += 1
        self.expected += r.expected
        self.delivered += r.delivered
        self.lost += r.lost
        self.duplicated += r.duplicated
        self.out_of_order += r.out_of_order
        self.recovered_false += r.recovered_false
        self.resets += r.resets
        self.announced += r.announced
        self.max_gap_s = max(self.max_gap_s, r.max_gap_s)
        self.silent += int(silent)
        if r.lost or r.duplicated or r.out_of_order:
            self.worst.append((viewer, room, r))
            self.worst.sort(key=lambda w: -(w[2].lost + w[2].duplicated + w[2].out_of_order))
            del self.worst[5:]


def summarize(
    logs: Iterable[tuple[str, str, RoomLog]],
    produced: dict[str, int],
    base: dict[str, int],
    flowing_until: float = 0.0,
) -> Summary:
    """Every (viewer, room, log) against the rooms' `produced` and `base` counts."""
    out = Summary()
    for viewer, room, log in logs:
        r = log.result(produced.get(room, 0), base.get(room, 0), flowing_until)
        out.add(viewer, room, r, silent=log.first < 0)
    return out
