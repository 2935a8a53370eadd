"""`Viewer`: the SDK's first API, kept for the code that uses it; a thin layer over `subscribe()`.

New code should use `roomcast.client.subscribe()`: it also resumes rooms after a reconnect and
says when a room lost continuity. A `Viewer` does the same underneath and yields
`ReceivedBlob`s: the blob (its events deduplicated), its frame, and the fresh events as
(offset, JSON bytes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from roomcast.client.errors import ViewerClosed, describe_connect_error
from roomcast.client.subscription import Item, Status, Subscription
from roomcast.core.blob import Blob, encode_blob, sequenced
from roomcast.core.positions import Deduper
from roomcast.core.protocol import Joined

__all__ = [
    "ConnectionStatus",
    "ReceivedBlob",
    "Viewer",
    "ViewerClosed",
    "describe_connect_error",
    "wire_bytes",
]

State = Literal["connecting", "retrying", "connected", "reconnected", "lost"]


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """What the connection is doing, for whoever shows it to a person.

    `state` is "connecting" (an attempt starts), "retrying" (it failed: `error`, next try in
    `retry_in_s`), "connected" (first connection), "reconnected" (again, after a loss) or
    "lost" (the connection dropped or the gateway closed it resumably: `error`; reconnecting).
    """

    state: State
    url: str
    error: str = ""
    retry_in_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ReceivedBlob:
    """A blob as received, with the events not seen before (`fresh`) as (offset, JSON bytes)."""

    raw: bytes
    blob: Blob
    fresh: list[tuple[int, bytes]]


def wire_bytes(blob: Blob) -> bytes:
    """The blob as the gateway frames it (with its position in front when it has one)."""
    data = encode_blob(blob.room, blob.partition, blob.offsets, [bytes(e) for e in blob.events])
    return sequenced(data, blob.epoch, blob.seq, blob.prev) if blob.seq else data


class Viewer:
    """Joins rooms on a roomcast gateway and yields blobs, reconnecting and resuming as needed."""

    def __init__(
        self,
        url: str,
        rooms: Iterable[str],
        *,
        reconnect: bool = True,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 15.0,
        open_timeout_s: float = 10.0,
        on_joined: Callable[[str], None] | None = None,
        on_status: Callable[[ConnectionStatus], None] | None = None,
        token: str = "",
    ) -> None:
        self.url = url
        self.on_joined = on_joined
        self.on_status = on_status
        self.joined: set[str] = set()  # rooms the gateway confirmed on this connection
        self.connects = 0
        self._announce = True  # the next recovering/live state is a (re)connection
        self.subscription: Subscription[Item] = Subscription(
            url,
            rooms,
            token=token or None,
            messages=True,
            on_status=self._status,
            reconnect=reconnect,
            backoff_base_s=backoff_initial_s,
            backoff_cap_s=backoff_max_s,
            open_timeout_s=open_timeout_s,
        )
        self.rooms = self.subscription.rooms

    @property
    def dedup(self) -> Deduper:
        return self.subscription.tracker.dedup

    def _emit(self, state: State, error: str = "", retry_in_s: float = 0.0) -> None:
        if self.on_status is not None:
            self.on_status(ConnectionStatus(state, self.url, error, retry_in_s))

    def _status(self, s: Status) -> None:
        if s.state == "connecting":
            self._announce = True
            if s.lost:
                self.joined.clear()
                self._emit("lost", s.error)
            elif s.error:
                self._emit("retrying", s.error, s.retry_in_s)
            else:
                self._emit("connecting")
        elif s.state in ("recovering", "live") and self._announce:
            self._announce = False
            self.connects += 1
            self._emit("connected" if self.connects == 1 else "reconnected")

    async def __aenter__(self) -> Viewer:
        await self.subscription.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.subscription.aclose()

    async def send(self, message: bytes) -> None:
        """Send a raw protocol message (join/leave/ping JSON) on the current connection."""
        await self.subscription.send(message)

    async def __aiter__(self) -> AsyncIterator[ReceivedBlob]:
        async for item in self.subscription:
            if isinstance(item, Joined):
                self.joined.add(item.room)
                if self.on_joined is not None:
                    self.on_joined(item.room)
            elif isinstance(item, Blob):
                fresh = [(o, bytes(e)) for o, e in zip(item.offsets, item.events, strict=True)]
                yield ReceivedBlob(wire_bytes(item), item, fresh)
