"""One gateway worker: its registry of viewers and rooms, NATS interest, and the fan-out.

Per worker process, no locks: asyncio runs one thing at a time. A room's NATS subject is
subscribed while the room has at least one local viewer. Each blob is framed once and the same
bytes are written to every viewer of its room; blobs that arrive in the same loop turn are
gathered first, so a viewer that gets several (two rooms, or push-to-all) gets them in one write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.subscription import Subscription
from prometheus_client import generate_latest

from roomcast.core.frames import text_frame
from roomcast.core.protocol import CloseCode, Joined, Left, encode_server_message
from roomcast.core.rooms import ALL_ROOM, room_subject, subject_room
from roomcast.gateway import metrics
from roomcast.gateway.config import GatewayConfig
from roomcast.gateway.connection import Viewer

log = logging.getLogger("roomcast.gateway")


@dataclass(slots=True, eq=False)
class Room:
    name: str
    viewers: set[Viewer] = field(default_factory=set)
    sub: Subscription | None = None
    subscribing: bool = False
    waiting: list[Viewer] = field(default_factory=list)  # joined before the SUB was confirmed
    # The viewers' bound `transport.write`s, while every viewer of the room watches no other
    # room and is not slow (the common case: the fan-out is then a bare loop of calls). [] when
    # that does not hold; None when it must be worked out again (a join, a leave, slow, caught up).
    writers: list[Callable[[bytes], object]] | None = None


class Gateway:
    def __init__(self, cfg: GatewayConfig, worker_id: int = 0) -> None:
        self.cfg = cfg
        self.worker_id = worker_id
        self.nc: nats.NATS | None = None
        self.viewers: set[Viewer] = set()
        self.rooms: dict[str, Room] = {}
        self.slow: set[Viewer] = set()
        self.closing: dict[Viewer, float] = {}  # close frame sent at; aborted after a timeout
        self.draining = False
        self._batch: list[tuple[str, bytes]] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._tokens = cfg.max_connects_per_s
        self._tokens_at = time.monotonic()
        self._all_sub: Subscription | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- NATS ---------------------------------------------------------------------------------

    async def connect(self) -> None:
        async def disconnected() -> None:
            if self.nc is not None and not self.nc.is_closed:
                log.warning("NATS disconnected; /readyz is 503 until it is back")

        async def reconnected() -> None:
            log.info("NATS reconnected")

        async def error(exc: Exception) -> None:
            log.warning("NATS error: %s", exc)

        self.nc = await nats.connect(
            self.cfg.nats,
            name=f"roomcast-gateway-{self.worker_id}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            pending_size=16 * 1024 * 1024,
        )
        # Push-to-all: always held, whoever is connected.
        self._all_sub = await self.nc.subscribe(
            room_subject(ALL_ROOM, self.cfg.subject_prefix),
            cb=self._on_msg,
            pending_msgs_limit=100_000,
        )
        await self.nc.flush()

    @property
    def ready(self) -> bool:
        return not self.draining and self.nc is not None and self.nc.is_connected

    async def _on_msg(self, msg: Any) -> None:
        metrics.NATS_MESSAGES.inc()
        self._batch.append((subject_room(msg.subject, self.cfg.subject_prefix), msg.data))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    # ---- fan-out (the hot path) ---------------------------------------------------------------

    def _flush(self) -> None:
        started = time.perf_counter()
        batch, self._batch = self._batch, []
        self._flush_scheduled = False
        sent = dropped = nbytes = 0
        if len(batch) == 1 and batch[0][0] != ALL_ROOM:
            room = self.rooms.get(batch[0][0])
            if room is not None:
                frame = text_frame(batch[0][1])
                writers = room.writers
                if writers is None:
                    writers = self._writers(room)
                if writers:
                    for write in writers:
                        write(frame)
                    sent = len(writers)
                else:
                    for v in room.viewers:
                        if v.slow_since:
                            dropped += 1
                        else:
                            v.transport.write(frame)  # type: ignore[union-attr]
                    sent = len(room.viewers) - dropped
                nbytes = sent * len(frame)
        else:
            sent, dropped, nbytes = self._flush_many(batch)
        metrics.FRAMES_SENT.inc(sent)
        metrics.BYTES_SENT.inc(nbytes)
        if dropped:
            metrics.FRAMES_DROPPED.labels("slow").inc(dropped)
        metrics.FANOUT_SECONDS.observe(time.perf_counter() - started)

    def _flush_many(self, batch: list[tuple[str, bytes]]) -> tuple[int, int, int]:
        """Several blobs in one loop turn: each viewer gets its frames in one write."""
        has_all = any(name == ALL_ROOM for name, _ in batch)
        combined: dict[Viewer, list[bytes]] = {}
        sent = dropped = nbytes = 0
        for name, data in batch:
            frame = text_frame(data)
            if name == ALL_ROOM:
                targets: set[Viewer] = self.viewers
            else:
                room = self.rooms.get(name)
                if room is None:
                    continue
                if not has_all:
                    writers = room.writers
                    if writers is None:
                        writers = self._writers(room)
                    if writers:  # nobody here gets another frame this turn: write it now
                        for write in writers:
                            write(frame)
                        sent += len(writers)
                        nbytes += len(writers) * len(frame)
                        continue
                targets = room.viewers
            for v in targets:
                if v.slow_since:
                    dropped += 1
                elif has_all or len(v.rooms) > 1:
                    frames = combined.get(v)
                    if frames is None:
                        combined[v] = [frame]
                    else:
                        frames.append(frame)
                else:
                    v.transport.write(frame)  # type: ignore[union-attr]
                    sent += 1
                    nbytes += len(frame)
        coalesced = 0
        for v, frames in combined.items():
            if len(frames) == 1:
                data = frames[0]
            else:
                data = b"".join(frames)
                coalesced += 1
            v.transport.write(data)  # type: ignore[union-attr]
            sent += len(frames)
            nbytes += len(data)
        if coalesced:
            metrics.COALESCED_WRITES.inc(coalesced)
        return sent, dropped, nbytes

    @staticmethod
    def _writers(room: Room) -> list[Callable[[bytes], object]]:
        vs = room.viewers
        if all(not v.slow_since and len(v.rooms) == 1 for v in vs):
            room.writers = [v.transport.write for v in vs]  # type: ignore[union-attr]
        else:
            room.writers = []
        return room.writers

    def _changed(self, v: Viewer) -> None:
        """`v` joined, left, got slow or caught up: its rooms' writer lists are stale."""
        rooms = self.rooms
        for name in v.rooms:
            room = rooms.get(name)
            if room is not None:
                room.writers = None

    # ---- registry -----------------------------------------------------------------------------

    def admission(self) -> str | None:
        """Why a new viewer must be refused before the upgrade, or None to accept."""
        if self.draining:
            return "draining"
        if len(self.viewers) >= self.cfg.max_viewers:
            return "worker_full"
        now = time.monotonic()
        rate = self.cfg.max_connects_per_s
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            return "connect_rate"
        self._tokens -= 1
        return None

    def viewer_open(self, v: Viewer) -> None:
        self.viewers.add(v)
        metrics.VIEWERS.set(len(self.viewers))

    def join(self, v: Viewer, name: str) -> None:
        v.rooms.append(name)
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
            metrics.ROOMS.set(len(self.rooms))
        room.viewers.add(v)
        self._changed(v)
        if room.sub is not None:
            v.send(encode_server_message(Joined(name)))
            return
        room.waiting.append(v)
        if not room.subscribing:
            room.subscribing = True
            self._spawn(self._subscribe(room))

    async def _subscribe(self, room: Room) -> None:
        assert self.nc is not None
        try:
            sub = await self.nc.subscribe(
                room_subject(room.name, self.cfg.subject_prefix),
                cb=self._on_msg,
                pending_msgs_limit=100_000,
            )
            await self.nc.flush()  # the server has the SUB: a "joined" viewer misses nothing
        except Exception as exc:
            log.error("subscribe failed: %s", exc, extra={"room": room.name})
            room.subscribing = False
            for v in room.waiting:
                v.fail(CloseCode.INTERNAL, "could not subscribe the room")
            room.waiting.clear()
            return
        room.subscribing = False
        if self.rooms.get(room.name) is not room:  # everyone left meanwhile
            await sub.unsubscribe()
            return
        room.sub = sub
        ack = encode_server_message(Joined(room.name))
        for v in room.waiting:
            if v in room.viewers:
                v.send(ack)
        room.waiting.clear()

    def leave(self, v: Viewer, name: str, ack: bool = False) -> None:
        v.rooms.remove(name)
        self._changed(v)
        room = self.rooms.get(name)
        if room is None:
            return
        room.viewers.discard(v)
        room.writers = None
        if ack:
            v.send(encode_server_message(Left(name)))
        if not room.viewers:
            del self.rooms[name]
            metrics.ROOMS.set(len(self.rooms))
            if room.sub is not None:
                self._spawn(room.sub.unsubscribe())

    def viewer_closing(self, v: Viewer) -> None:
        """The viewer's WebSocket left OPEN: it gets no more blobs."""
        if v in self.viewers:
            self.viewers.discard(v)
            for name in list(v.rooms):
                self.leave(v, name)
            self.slow.discard(v)
            metrics.VIEWERS.set(len(self.viewers))

    def viewer_gone(self, v: Viewer) -> None:
        self.viewer_closing(v)
        self.closing.pop(v, None)

    def expect_close(self, v: Viewer) -> None:
        self.closing.setdefault(v, time.monotonic())

    def viewer_slow(self, v: Viewer) -> None:
        self.slow.add(v)
        self._changed(v)

    def viewer_caught_up(self, v: Viewer) -> None:
        self.slow.discard(v)
        self._changed(v)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- timers: slow viewers, keepalive, closing handshakes ----------------------------------

    async def housekeeping(self) -> None:
        """One task per worker (never one per viewer)."""
        next_ping = time.monotonic() + self.cfg.ping_interval_s
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for v in [v for v in self.slow if now - v.slow_since >= self.cfg.slow_grace_s]:
                metrics.SLOW_CLOSES.inc()
                self.slow.discard(v)
                v.close(CloseCode.SLOW_VIEWER, "slow viewer: reconnect and resume")
            for v, since in list(self.closing.items()):
                if now - since >= self.cfg.close_timeout_s and v.transport is not None:
                    v.transport.abort()
            if now >= next_ping:
                next_ping = now + self.cfg.ping_interval_s
                timeout = self.cfg.ping_timeout_s
                for v in list(self.viewers):
                    if v.ping_sent_at and now - v.ping_sent_at >= timeout:
                        v.fail(CloseCode.INTERNAL, "keepalive ping timeout")
                    elif not v.ping_sent_at:
                        v.ping(now)

    async def drain(self) -> None:
        """Close every viewer with 1012, paced over drain_seconds (no reconnect stampede)."""
        self.draining = True
        viewers = list(self.viewers)
        log.info("draining", extra={"viewers": len(viewers), "seconds": self.cfg.drain_seconds})
        ticks = max(1, int(self.cfg.drain_seconds * 10))
        per_tick = max(1, -(-len(viewers) // ticks))
        for i in range(0, len(viewers), per_tick):
            for v in viewers[i : i + per_tick]:
                v.close(CloseCode.DRAINING, "gateway restarting: reconnect and resume")
            await asyncio.sleep(self.cfg.drain_seconds / ticks)
        deadline = time.monotonic() + self.cfg.close_timeout_s
        while self.closing and time.monotonic() < deadline:  # noqa: ASYNC110 (bounded)
            await asyncio.sleep(0.05)
        for v in list(self.closing):
            if v.transport is not None:
                v.transport.abort()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    # ---- HTTP endpoints on the same port ------------------------------------------------------

    def http_endpoint(self, path: str) -> tuple[int, bytes, str]:
        if path == "/healthz":
            return 200, b"ok\n", "text/plain"
        if path == "/readyz":
            if self.ready:
                return 200, b"ready\n", "text/plain"
            why = "draining" if self.draining else "NATS not connected"
            return 503, f"not ready: {why}\n".encode(), "text/plain"
        if path == "/metrics":
            return 200, generate_latest(metrics.REGISTRY), "text/plain; version=0.0.4"
        return 404, b"not found: viewers connect to /ws?room=ROOM\n", "text/plain"
