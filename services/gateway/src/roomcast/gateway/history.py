"""A room's recent blobs, as one verified chain: what resumes and slow viewers are caught up from.

Every blob the history (JetStream) stores is republished to gateways with its stream sequence
(`seq`) and the sequence of the room's previous stored blob (`prev`). A `RoomLog` keeps the last
few of a room's blobs in that order and checks the chain as they arrive:

- `prev == last`: the next blob; appended (and fanned out).
- `seq <= last`: seen already; dropped.
- `prev < last < seq`: the stream no longer holds `last` (it aged out while the room was quiet)
  and chains the blob to what it has, often 0: the next blob all the same.
- `prev > last`: something between `last` and `prev` never arrived (core NATS dropped it, say
  during a reconnect): the blob is held, with every later one, until the missing blobs have been
  read from the history (`fill`), and then all go out in order.

Resumes ask `after(seq)`: the blobs after a position, if the log still reaches back to it. When it
does not, the shell reads the older part of the history once for the room (however many viewers
wait) and `prepend`s it. Pure: no I/O; the shell does the reads.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from roomcast.core.blob import relinked, sequenced
from roomcast.core.frames import Deflater, text_frame

UNKNOWN = -1
"""`prev` of an entry read from the history whose predecessor was not read with it."""


@dataclass(slots=True, eq=False)
class Entry:
    """One stored blob of the room, as viewers get it (`data`: position spliced in)."""

    seq: int
    prev: int
    data: bytes
    _frame: bytes | None = None
    _zframe: bytes | None = None

    def frame(self, deflater: Deflater | None, deflate: bool) -> bytes:
        """The WebSocket frame for a viewer (compressed if it negotiated it), built once."""
        if deflate and deflater is not None:
            if self._zframe is None:
                self._zframe = deflater.frame(self.data) or self.frame(None, False)
            return self._zframe
        if self._frame is None:
            self._frame = text_frame(self.data)
        return self._frame

    def link(self, prev: int, epoch: int) -> None:
        """Its predecessor is known now: so is what viewers get (`prev` is in the data)."""
        self.data = relinked(self.data, epoch, self.seq, self.prev, prev)
        self.prev = prev
        self._frame = self._zframe = None


@dataclass(slots=True)
class RoomLog:
    """The chain of a room's recent blobs (see the module docstring)."""

    epoch: int
    size: int = 64  # entries kept once nobody needs older ones
    entries: deque[Entry] = field(default_factory=deque)
    last: int = UNKNOWN  # seq of the newest blob passed on; UNKNOWN until the first one
    cap: int = 0  # more than `size` entries may stay while resumes need them (`prepend`)
    held: list[tuple[int, int, bytes]] = field(default_factory=list)  # waiting for a fill

    def offer(self, seq: int, prev: int, data: bytes) -> Entry | Literal[False] | None:
        """A live blob. Returns its Entry (pass it on now), None (a duplicate: drop it) or False
        (a gap, or a fill already running: held; `gap()` says what to read)."""
        if self.held:
            if seq > self.held[-1][0]:
                self.held.append((seq, prev, data))
                return False
            return None
        last = self.last
        if last == UNKNOWN or prev == last:
            return self._append(seq, prev, data)
        if seq <= last:
            return None
        if prev < last:  # our last is no longer stored (it aged out: a quiet room), the stream
            return self._append(seq, prev, data)  # chains to what it still has: nothing missed
        self.held.append((seq, prev, data))
        return False

    def gap(self) -> tuple[int, int] | None:
        """(first seq to read, seq to stop before) while blobs are held, else None."""
        if not self.held:
            return None
        return self.last + 1, self.held[0][0]

    def fill(self, found: list[tuple[int, bytes]]) -> tuple[list[Entry], bool]:
        """The blobs read for the gap (seq, blob as stored), in order. Returns every entry now
        ready to go out, in order (the filled ones, then those that were held), and whether the
        chain is whole: False if the history no longer had some of the missing blobs (the
        caller tells the room's viewers: `reset`)."""
        out: list[Entry] = []
        for seq, raw in found:
            if seq > self.last and (not self.held or seq < self.held[0][0]):
                data = sequenced(raw, self.epoch, seq, self.last)
                out.append(self._append(seq, self.last, data))
        held, self.held = self.held, []
        whole = not held or held[0][1] == self.last
        for seq, prev, data in held:
            if seq > self.last:
                out.append(self._append(seq, prev, data))
        return out, whole

    def _append(self, seq: int, prev: int, data: bytes) -> Entry:
        entry = Entry(seq, prev, data)
        entries = self.entries
        entries.append(entry)
        self.last = seq
        if len(entries) > self.size and len(entries) > self.cap:
            entries.popleft()
        return entry

    def after(self, seq: int) -> list[Entry] | None:
        """The entries after position `seq`, in order, if the log reaches back to it; [] if
        `seq` is the newest; None if it does not know `seq` (read the history)."""
        if self.last == UNKNOWN:
            return None
        if seq == self.last:
            return []
        if seq > self.last:
            return None  # from the future: not this history's position
        entries = self.entries
        if not entries:
            return None
        if entries[0].prev == seq:
            return list(entries)
        if seq < entries[0].seq:
            return None
        lo, hi = 0, len(entries) - 1  # seqs grow along the chain: bisect
        while lo <= hi:
            mid = (lo + hi) // 2
            s = entries[mid].seq
            if s == seq:
                return [entries[i] for i in range(mid + 1, len(entries))]
            if s < seq:
                lo = mid + 1
            else:
                hi = mid - 1
        return None

    @property
    def first(self) -> int:
        """The oldest seq held (UNKNOWN if none)."""
        return self.entries[0].seq if self.entries else UNKNOWN

    def prepend(self, found: list[tuple[int, bytes]], grow_to: int) -> None:
        """Older blobs read from the history (seq, blob as stored), in order, ending right
        before the oldest entry (or the newest stored, if the log is empty); the first one's
        predecessor is unknown. The log may hold up to `grow_to` entries until `trim()`."""
        if not found:
            return
        head = self.entries[0].seq if self.entries else None
        older: list[Entry] = []
        prev = UNKNOWN
        for seq, raw in found:
            if head is not None and seq >= head:
                break
            older.append(Entry(seq, prev, sequenced(raw, self.epoch, seq, prev)))
            prev = seq
        if not older:
            return
        if self.entries:
            self.entries[0].link(older[-1].seq, self.epoch)
        else:
            self.last = older[-1].seq
        self.cap = max(self.size, grow_to)
        keep = self.cap - len(self.entries)
        if keep > 0:
            self.entries.extendleft(reversed(older[-keep:]))

    def trim(self) -> None:
        """Back to `size` entries once nobody waits on older ones."""
        self.cap = 0
        while len(self.entries) > self.size:
            self.entries.popleft()

    def reset(self, epoch: int) -> None:
        """The history was reset (a new epoch): forget everything."""
        self.epoch = epoch
        self.entries.clear()
        self.held.clear()
        self.last = UNKNOWN
