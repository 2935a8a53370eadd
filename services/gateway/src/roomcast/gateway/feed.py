"""Where a gateway worker's blobs come from: a small interface, and NATS behind it.

The hub decides which rooms the worker needs (a room while it has a local viewer, and push-to-all
always); the feed turns that into subscriptions and hands every blob that arrives to one callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from roomcast.core.natsauth import nats_connect_options, nats_servers
from roomcast.core.rooms import ALL_ROOM, HISTORY_PREFIX, room_subject
from roomcast.gateway.config import GatewayConfig
from roomcast.gateway.natsclient import Client

log = logging.getLogger("roomcast.gateway")

OnBlob = Callable[[str, bytes, float, int, int], None]
"""(room, blob, when its oldest event was produced: Unix seconds, 0.0 if unknown, its `seq` in
the history and the room's previous `seq`: 0, 0 for a blob that did not come from the history)."""

HISTORY_BATCH_BYTES = 8 * 1024 * 1024
"""At most this much of a room's history per direct-get batch."""

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

    async def epoch(self) -> int:
        """The history's epoch (its creation time, microseconds); 0 if there is none yet."""

    async def history(self, room: str, start: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` stored blobs of the room, oldest first, from seq `start` on:
        (seq, blob as stored). [] when there are none."""

    async def head(self, room: str) -> int:
        """The seq of the room's newest stored blob; 0 if it has none."""


def _created_us(created: object) -> int:
    """A stream's creation time (a datetime, or RFC 3339 text) in microseconds."""
    if isinstance(created, str):
        text = created.replace("Z", "+00:00")
        if "." in text:  # Go prints nanoseconds; datetime takes at most microseconds
            head, _, rest = text.partition(".")
            digits = "".join(itertools.takewhile(str.isdigit, rest))
            text = f"{head}.{digits[:6]:0<6}{rest[len(digits) :]}"
        created = datetime.datetime.fromisoformat(text)
    if isinstance(created, datetime.datetime):
        if created.tzinfo is None:
            created = created.replace(tzinfo=datetime.UTC)
        return int(created.timestamp() * 1_000_000)
    return 0


class NatsFeed:
    """Core NATS subscriptions, one subject per room (`PREFIX.ROOM`), one connection per worker."""

    def __init__(
        self, servers: str, subject_prefix: str, name: str, cfg: GatewayConfig | None = None
    ) -> None:
        self.servers = servers
        self.credentials = nats_connect_options(cfg) if cfg is not None else {}
        self.prefix = subject_prefix
        self.stream = cfg.stream if cfg is not None else "ROOMCAST_ROOMS"
        self.history_prefix = cfg.history_prefix if cfg is not None else HISTORY_PREFIX
        self.on_reconnected: Callable[[], None] | None = None
        self.name = name
        self.nc: Client | None = None
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
            if self.on_reconnected is not None:
                self.on_reconnected()

        async def error(exc: Exception) -> None:
            log.warning("NATS error: %s", exc)

        self.nc = Client()
        await self.nc.connect(
            nats_servers(self.servers),
            name=self.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # (typed int, used as seconds)
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            pending_size=16 * 1024 * 1024,
            **self.credentials,
        )
        await self.subscribe(ALL_ROOM)

    def _blob(self, room: str, data: bytes, headers: dict[str, str] | None) -> None:
        produced = 0.0
        seq = prev = 0
        if headers:
            with contextlib.suppress(KeyError, ValueError):
                produced = int(headers[PRODUCED_HEADER]) / 1000
            if headers.get("Nats-Stream") == self.stream:  # republished by the history
                with contextlib.suppress(KeyError, ValueError):
                    seq, prev = int(headers["Nats-Sequence"]), int(headers["Nats-Last-Sequence"])
        self._on_blob(room, data, produced, seq, prev)  # type: ignore[misc]

    async def subscribe(self, room: str) -> None:
        assert self.nc is not None
        sub = await self.nc.subscribe_direct(
            room_subject(room, self.prefix),
            functools.partial(self._blob, room),
            pending_msgs_limit=100_000,
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

    async def epoch(self) -> int:
        assert self.nc is not None
        try:
            info = await self.nc.jetstream().stream_info(self.stream)
        except NotFoundError:
            return 0
        return _created_us(info.created)

    async def history(self, room: str, start: int, limit: int) -> list[tuple[int, bytes]]:
        """One batched direct get (`next_by_subj`, `batch`): the replies end with a status
        message (204: end of batch, 404: nothing at or after `start`)."""
        nc = self.nc
        assert nc is not None
        inbox = nc.new_inbox()
        sub = await nc.subscribe(
            inbox, pending_msgs_limit=limit + 8, pending_bytes_limit=2 * HISTORY_BATCH_BYTES
        )
        request = {"seq": max(1, start), "next_by_subj": f"{self.history_prefix}.{room}"}
        # The server ends a batch early past max_bytes: big blobs come in several batches
        # rather than overflow this subscription (which would drop some).
        request["batch"] = limit
        request["max_bytes"] = HISTORY_BATCH_BYTES
        out: list[tuple[int, bytes]] = []
        try:
            await nc.publish(
                f"$JS.API.DIRECT.GET.{self.stream}", json.dumps(request).encode(), reply=inbox
            )
            while len(out) < limit:
                msg = await sub.next_msg(timeout=5.0)
                headers = msg.headers or {}
                if "Status" in headers or "Nats-Sequence" not in headers:
                    status = headers.get("Status", "")
                    if status not in ("204", "404"):
                        why = headers.get("Description", "")
                        raise RuntimeError(f"direct get on {self.stream}: {status} {why}")
                    break
                out.append((int(headers["Nats-Sequence"]), msg.data))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out

    async def head(self, room: str) -> int:
        """A direct get of the last message on the room's history subject."""
        assert self.nc is not None
        subject = f"$JS.API.DIRECT.GET.{self.stream}.{self.history_prefix}.{room}"
        msg = await self.nc.request(subject, b"", timeout=5.0)
        headers = msg.headers or {}
        if "Nats-Sequence" in headers:
            return int(headers["Nats-Sequence"])
        if headers.get("Status") == "404":
            return 0
        why = f"{headers.get('Status', '')} {headers.get('Description', '')}"
        raise RuntimeError(f"direct get on {self.stream}: {why}")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
