"""Where a gateway worker's blobs come from: a small interface, and NATS behind it.

The hub decides which rooms the worker needs (a room while it has a local viewer, and push-to-all
always); the feed turns that into subscriptions and hands every blob that arrives to one callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import nats
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from roomcast.core.natsauth import nats_connect_options
from roomcast.core.rooms import ALL_ROOM, room_subject, subject_room
from roomcast.gateway.config import GatewayConfig

log = logging.getLogger("roomcast.gateway")

OnBlob = Callable[[str, bytes, float], None]
"""(room, blob, when its oldest event was produced: Unix seconds, 0.0 if unknown)."""

PRODUCED_HEADER = "Roomcast-Produced-Ms"
"""Set by ingest on each blob: the Kafka timestamp (ms) of its oldest event."""


class RoomFeed(Protocol):
    """Blobs per room. `subscribe` returns once every blob published after it will arrive."""

    @property
    def ready(self) -> bool: ...

    async def start(self, on_blob: OnBlob) -> None:
        """Connect, and deliver push-to-all (`_all`) blobs from now on."""

    async def subscribe(self, room: str) -> None: ...

    def unsubscribe(self, room: str) -> None: ...

    async def close(self) -> None: ...


class NatsFeed:
    """Core NATS subscriptions, one subject per room (`PREFIX.ROOM`), one connection per worker."""

    def __init__(
        self, servers: str, subject_prefix: str, name: str, cfg: GatewayConfig | None = None
    ) -> None:
        self.servers = servers
        self.credentials = nats_connect_options(cfg) if cfg is not None else {}
        self.prefix = subject_prefix
        self.name = name
        self.nc: NATS | None = None
        self.subs: dict[str, Subscription] = {}
        self._on_blob: OnBlob | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def ready(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def start(self, on_blob: OnBlob) -> None:
        self._on_blob = on_blob

        async def disconnected() -> None:
            if self.nc is not None and not self.nc.is_closed:
                log.warning("NATS disconnected; /readyz is 503 until it is back")

        async def reconnected() -> None:
            log.info("NATS reconnected")

        async def error(exc: Exception) -> None:
            log.warning("NATS error: %s", exc)

        self.nc = await nats.connect(
            self.servers,
            name=self.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            pending_size=16 * 1024 * 1024,
            **self.credentials,
        )
        await self.subscribe(ALL_ROOM)

    async def _on_msg(self, msg: Any) -> None:
        produced = 0.0
        headers = msg.headers
        if headers:
            with contextlib.suppress(KeyError, ValueError):
                produced = int(headers[PRODUCED_HEADER]) / 1000
        self._on_blob(subject_room(msg.subject, self.prefix), msg.data, produced)  # type: ignore[misc]

    async def subscribe(self, room: str) -> None:
        assert self.nc is not None
        sub = await self.nc.subscribe(
            room_subject(room, self.prefix), cb=self._on_msg, pending_msgs_limit=100_000
        )
        self.subs[room] = sub
        try:
            await self.nc.flush()  # the server has the SUB: a "joined" viewer misses nothing
        except BaseException:
            self.unsubscribe(room)
            raise

    def unsubscribe(self, room: str) -> None:
        sub = self.subs.pop(room, None)
        if sub is not None:
            task = asyncio.ensure_future(sub.unsubscribe())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
