"""One gateway worker's I/O shell: the hub, its room feed (NATS), timers and HTTP endpoints.

Per worker process, no locks: asyncio runs one thing at a time. The pure `hub.Hub` keeps the
viewers and rooms and does the fan-out; this shell feeds it (blobs from the feed, viewers from
`connection.Viewer`), carries out what it decides (subscribe or unsubscribe a room, abort a broken
connection) and runs the deadlines: handshakes, close handshakes, slow viewers, keepalive pings.
Blobs that arrive in the same loop turn are handed to the hub together, so a viewer that gets
several (two rooms, or push-to-all) gets them in one write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import secrets
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import msgspec

from roomcast.core.blob import sequenced
from roomcast.core.errors import RoomNameError
from roomcast.core.frames import Deflater
from roomcast.core.protocol import CloseCode, Count, Position, encode_server_message
from roomcast.core.rooms import ALL_ROOM, check_room
from roomcast.gateway import counts as countmsg
from roomcast.gateway import metrics, pages, static
from roomcast.gateway.auth import AuthError, ClientAddress, Verifier, allowed, parse_origins
from roomcast.gateway.config import GatewayConfig
from roomcast.gateway.connection import Viewer
from roomcast.gateway.counts import Counts
from roomcast.gateway.deflate import SharedDeflateFactory
from roomcast.gateway.feed import NatsFeed, RoomFeed
from roomcast.gateway.hub import OPEN, Counters, Hub, Interest, Sender

log = logging.getLogger("roomcast.gateway")


def choose_sender(mode: str, tls: bool = False) -> tuple[str, Sender | None]:
    """The fan-out path for `--fanout` (auto: io_uring if it works here, else a C send() loop,
    else each viewer's transport.write), and what to call for it. With TLS every byte must go
    through the connection's own encryption: transport.write only."""
    if tls:
        if mode in ("uring", "send"):
            raise SystemExit(f"--fanout {mode} cannot serve TLS (--tls-cert): use auto or write")
        return "write (TLS: each connection encrypts its own bytes)", None
    if mode == "write":
        return "write (transport.write per viewer)", None
    from roomcast import uring

    why = uring.available()
    if mode in ("uring", "auto") and why is None:
        return "uring (io_uring, 256 sends per submit)", uring.Ring(256).send_many
    if mode == "uring":
        raise SystemExit(f"--fanout uring: io_uring cannot be used here: {why}")
    if uring.backend() == "c":
        return f"send (a C send() loop; io_uring: {why})", uring.write_many
    if mode == "send":
        raise SystemExit("--fanout send: the roomcast.uring C extension is not built")
    return f"write (transport.write per viewer; io_uring: {why})", None


READ_COALESCE_S = 0.05
"""How long a room's history read waits for more resumes to serve with the same read."""

Route = Callable[[str, str], tuple[int, bytes, str]]
"""A plain HTTP endpoint: (path, query string) -> (status, body, content type)."""


class Gateway:
    def __init__(
        self, cfg: GatewayConfig, worker_id: int = 0, feed: RoomFeed | None = None
    ) -> None:
        self.cfg = cfg
        self.worker_id = worker_id
        deflater = Deflater(cfg.compress_level, cfg.compress_min_bytes) if cfg.compress else None
        self.fanout_path, sender = choose_sender(cfg.fanout, tls=bool(cfg.tls_cert))
        self.hub: Hub[Viewer] = Hub(
            cfg.max_handshakes, deflater, sender, cfg.ring_blobs, cfg.max_replay_blobs
        )
        self.extensions = [SharedDeflateFactory()] if cfg.compress else None
        self.feed: RoomFeed = feed or NatsFeed(
            cfg.nats, cfg.subject_prefix, f"roomcast-gateway-{worker_id}", cfg
        )
        self.auth: Verifier | None = None
        if cfg.auth == "jwt":
            self.auth = Verifier(
                cfg.auth_secret, cfg.auth_public_key, cfg.auth_jwks,
                cfg.auth_audience, cfg.auth_issuer,
            )  # fmt: skip
        self.origins = parse_origins(cfg.allowed_origins)
        self.addresses = ClientAddress.parse(cfg.trusted_proxies)
        self._ip_tokens: dict[str, tuple[float, float]] = {}  # ip -> (tokens, at)
        # Viewers upgraded without a token: the monotonic deadline of their `auth` message.
        self.unauthed: dict[Viewer, float] = {}
        # Authorized viewers by the second their token expires (int(exp) + 1): O(1) to
        # add, move (refresh) and remove, and the housekeeping looks only at due seconds.
        self.expiring: dict[int, set[Viewer]] = {}
        self.draining = False
        self.started = False  # the feed connected once: viewers may join
        self._batch: list[tuple[str, bytes, int, int]] = []  # room, blob, seq, prev
        self._early: list[tuple[str, bytes, int, int]] = []  # sequenced, before the epoch is known
        self._epoch_task: asyncio.Task[None] | None = None
        self._epoch_checked = 0.0
        self._reading: set[str] = set()  # rooms with a history read under way
        self._heading: set[str] = set()  # rooms whose newest stored position is being read
        self._filling: set[str] = set()  # rooms whose log waits for missing blobs
        self._counted = Counters()  # the hub's counters as last exported
        self._produced: list[float] = []  # the batch's blobs' produce times (those that have one)
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._tokens = cfg.max_connects_per_s
        self._tokens_at = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_reject_log = 0.0
        self._last_noauth_log = -1e9
        # More plain-HTTP endpoints on the viewer port: (path, query string) -> (status, body,
        # content type). Exact paths, then prefixes in order.
        self.routes: dict[str, Route] = {}
        self.prefix_routes: list[tuple[str, Route]] = []
        self.routes["/client.js"] = static.client_js
        self.pages = pages.install(self)  # /, /stats, /stats.json
        # Viewer counts across the cluster (counts.py), over the feed's NATS connection.
        self.counts = Counts(
            f"{secrets.token_hex(6)}-{worker_id}", cfg.count_interval_s, time.monotonic()
        )
        self._counts_nc: Any = None  # the NATS connection counts go over (None: this worker's)
        self._counts_dirty = False  # a viewer joined or left since the local counts were taken
        self._count_owed: set[tuple[Viewer, str]] = set()  # joined since: owed the room's count
        self._last_count_log = -1e9
        self.prefix_routes.append(("/rooms/", self._room_route))

    async def connect(self) -> None:
        if isinstance(self.feed, NatsFeed):
            self.feed.on_reconnected = self._reconnected
        await self.feed.start(self.on_blob)
        await self._start_counts()
        self.started = True
        await self._load_epoch()

    @property
    def ready(self) -> bool:
        return not self.draining and self.feed.ready

    # ---- blobs in, frames out (the hot path) --------------------------------------------------

    def on_blob(
        self, room: str, data: bytes, produced: float = 0.0, seq: int = 0, prev: int = 0
    ) -> None:
        self._batch.append((room, data, seq, prev))
        if produced:
            self._produced.append(produced)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        started = time.perf_counter()
        batch, self._batch = self._batch, []
        self._flush_scheduled = False
        metrics.TALLY.nats_messages += len(batch)
        hub = self.hub
        if hub.queued:
            hub.drained()
        out: list[tuple[str, bytes]] = []
        epoch = hub.epoch
        for room, data, seq, prev in batch:
            if not seq:  # not from the history: passed on as it is
                out.append((room, data))
                continue
            if not epoch:
                self._early.append((room, data, seq, prev))
                self._check_epoch()
                continue
            log_ = hub.log_for(room)
            if log_ is None:
                continue  # no viewer here any more
            entry = log_.offer(seq, prev, sequenced(data, epoch, seq, prev))
            if entry is None:
                metrics.BLOBS_DUPLICATE.inc()
                if started - self._epoch_checked >= 5.0:  # a new history restarts its seqs
                    self._epoch_checked = started
                    self._check_epoch()
            elif entry is False:
                if room not in self._filling:
                    self._filling.add(room)
                    self._spawn(self._fill(room))
            else:
                out.append((room, entry.data))
        self._fanout(out, started)
        for room, _ in out:
            r = hub.rooms.get(room)
            if r is not None and r.behind:
                hub.settle_room(room)
        self._service_history()

    def _fanout(self, batch: list[tuple[str, bytes]], started: float) -> None:
        result = self.hub.fanout(batch)
        tally = metrics.TALLY
        tally.frames_sent += result.sent
        tally.frames_deflated += result.deflated
        tally.bytes_sent += result.nbytes
        if result.dropped:
            metrics.FRAMES_DROPPED.labels("slow").inc(result.dropped)
        if result.coalesced:
            metrics.COALESCED_WRITES.inc(result.coalesced)
        if result.rejected:
            metrics.BLOBS_REJECTED.labels("not_utf8").inc(result.rejected)
            if started - self._last_reject_log >= 10:
                self._last_reject_log = started
                log.error("blob is not valid UTF-8: not sent (viewers would fail); check ingest")
        if result.broken:
            metrics.FANOUT_ERRORS.inc(len(result.broken))
            log.warning("fan-out write failed; viewer dropped", extra={"n": len(result.broken)})
            for v in result.broken:
                v.abort()
        if result.interest:
            self._apply(result.interest)
        metrics.FANOUT_SECONDS.observe(time.perf_counter() - started)
        if self._produced:
            now = time.time()
            for produced in self._produced:
                metrics.DELIVERY_LATENCY.observe(max(0.0, now - produced))
            self._produced.clear()

    # ---- viewers: the shell's side of the hub -------------------------------------------------

    def connected(self, v: Viewer) -> None:
        evicted = self.hub.connected(v, time.monotonic())
        if evicted is not None:
            metrics.REJECTED.labels("handshake_cap").inc()
            evicted.abort()

    def admission(self) -> str | None:
        """Why a new viewer must be refused before the upgrade, or None to accept."""
        if self.draining:
            return "draining"
        if not self.started:
            return "starting"
        if len(self.hub.viewers) >= self.cfg.max_viewers:
            return "worker_full"
        now = time.monotonic()
        rate = self.cfg.max_connects_per_s
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            return "connect_rate"
        self._tokens -= 1
        return None

    def ip_admission(self, ip: str) -> bool:
        """Within --max-connects-per-ip-per-s for this client IP (a bucket of one second)."""
        rate = self.cfg.max_connects_per_ip_per_s
        if not rate:
            return True
        now = time.monotonic()
        burst = max(1.0, rate)
        tokens, at = self._ip_tokens.get(ip, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1:
            self._ip_tokens[ip] = (tokens, now)
            return False
        self._ip_tokens[ip] = (tokens - 1, now)
        return True

    # ---- grants: deadlines and expiry (never per blob) ----------------------------------------

    def await_auth(self, v: Viewer) -> None:
        self.unauthed[v] = time.monotonic() + self.cfg.auth_timeout_s

    def authorized(self, v: Viewer, old_exp: float) -> None:
        """`v` has a (new) grant expiring at v.exp: file it by its expiry second."""
        self.unauthed.pop(v, None)
        if old_exp:
            self._unfile(v, old_exp)
        self.expiring.setdefault(int(v.exp) + 1, set()).add(v)

    def _unfile(self, v: Viewer, exp: float) -> None:
        key = int(exp) + 1
        bucket = self.expiring.get(key)
        if bucket is not None:
            bucket.discard(v)
            if not bucket:
                del self.expiring[key]

    def _check_grants(self, now: float) -> None:
        for v, deadline in list(self.unauthed.items()):
            if now >= deadline:
                metrics.REJECTED.labels("auth_timeout").inc()
                v.send_error("unauthorized", "no auth message in time")
                v.fail(CloseCode.UNAUTHORIZED, "no token in time")
                self.unauthed.pop(v, None)
        wall = time.time()
        for key in [k for k in self.expiring if k <= wall]:
            for v in self.expiring.pop(key):
                if v.state is OPEN and v.exp <= wall:
                    metrics.REJECTED.labels("token_expired").inc()
                    v.send_error("token_expired", "token expired; reconnect with a new one")
                    v.close(CloseCode.TOKEN_EXPIRED, "token expired")
                    if v.state is OPEN:
                        self.viewer_closing(v)

    def viewer_open(self, v: Viewer) -> None:
        if self.hub.open(v):
            metrics.VIEWERS.set(len(self.hub.viewers))

    def join(self, v: Viewer, room: str, since: Position | None = None) -> None:
        interest = self.hub.join(v, room, since)
        self._count_joined(v, room)
        if interest:
            self._apply(interest)
            metrics.ROOMS.set(len(self.hub.rooms))
        self._service_history()

    def caught_up(self, v: Viewer) -> None:
        """The viewer's write buffer drained (under the low-water mark)."""
        self.hub.caught_up(v)
        self._service_history()

    def leave(self, v: Viewer, room: str) -> None:
        interest = self.hub.leave(v, room)
        self._counts_dirty = True
        if interest:
            self._apply(interest)
            metrics.ROOMS.set(len(self.hub.rooms))

    def viewer_closing(self, v: Viewer) -> None:
        """Failed, closing or answered: it gets nothing more and is in no room."""
        self._closed(v, final=False)

    def viewer_gone(self, v: Viewer) -> None:
        self._closed(v, final=True)

    def _closed(self, v: Viewer, final: bool) -> None:
        if self.unauthed:
            self.unauthed.pop(v, None)
        if v.exp:
            self._unfile(v, v.exp)
        interest = self.hub.close(v, time.monotonic(), final=final)
        self._counts_dirty = True
        metrics.VIEWERS.set(len(self.hub.viewers))
        if interest:
            self._apply(interest)
            metrics.ROOMS.set(len(self.hub.rooms))

    # ---- interest: the feed follows the hub ---------------------------------------------------

    def _apply(self, interest: Interest) -> None:
        for room in interest.unsubscribe:
            self.feed.unsubscribe(room)
        for room in interest.subscribe:
            self._spawn(self._subscribe(room))

    async def _subscribe(self, room: str) -> None:
        try:
            await self.feed.subscribe(room)
        except Exception as exc:
            log.error("subscribe failed: %s", exc, extra={"room": room})
            for v in self.hub.subscribe_failed(room):
                v.fail(CloseCode.INTERNAL, "could not subscribe the room")
            metrics.ROOMS.set(len(self.hub.rooms))
            return
        interest = self.hub.subscribed(room)
        if interest:
            self._apply(interest)
            metrics.ROOMS.set(len(self.hub.rooms))
        self._service_history()

    # ---- the history: epoch, reads for resumes and slow viewers, gaps -------------------------

    async def _load_epoch(self) -> None:
        try:
            epoch = await self.feed.epoch()
        except Exception as exc:  # NATS down, no permission: resumes answer recovered:false
            log.warning("cannot read the history stream's info: %s", exc)
            return
        if epoch and epoch != self.hub.epoch:
            if self.hub.epoch:
                log.warning("the history was reset (new epoch): viewers are told to reload")
            self.hub.new_epoch(epoch)
        if self.hub.epoch and self._early:
            early, self._early = self._early, []
            self._batch[:0] = early
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)

    def _reconnected(self) -> None:
        self._check_epoch()
        self._resync()

    def _check_epoch(self) -> None:
        """Read the epoch again (after a NATS reconnect; blobs before it is known)."""
        if self._epoch_task is None or self._epoch_task.done():
            self._epoch_task = asyncio.ensure_future(self._load_epoch())

    def _service_history(self) -> None:
        """Start a read for every room whose waiting viewers need one (one at a time per room)."""
        hub = self.hub
        self._service_history_counters()
        for room in list(hub.want_head):
            if room not in self._heading:
                self._heading.add(room)
                self._spawn(self._read_head(room))
        if not hub.want_history:
            return
        for room in list(hub.want_history):
            if room not in self._reading:
                self._reading.add(room)
                self._spawn(self._read_history(room))

    async def _read_history(self, room: str) -> None:
        hub = self.hub
        try:
            # A burst of resumes (a whole worker's viewers coming back) arrives over a few
            # milliseconds: one read from the oldest position among them serves them all.
            await asyncio.sleep(READ_COALESCE_S)
            while True:
                start = hub.history_request(room)
                if start is None:
                    return
                try:  # up to the room's log, whose oldest blob live ones may change meanwhile
                    found, connected = await self._read_range(
                        room, start, lambda: hub.history_head(room), hub.max_replay_blobs + 1
                    )
                except Exception as exc:
                    log.warning("history read failed: %s; retrying", exc, extra={"room": room})
                    await asyncio.sleep(1.0)
                    continue
                hub.history_read(room, start, found, connected)
                self._service_history_counters()
        finally:
            self._reading.discard(room)
            self._service_history()

    async def _read_range(
        self, room: str, start: int, stop: Callable[[], int | None], limit: int
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """The room's stored blobs (seq, blob) from seq `start` up to, not including, `stop()`
        (asked again after each batch; None: to the end of the history), at most `limit` of
        them. Also whether the read got to `stop()` or the end (False: `limit` cut it short)."""
        found: list[tuple[int, bytes]] = []
        seq = start
        while len(found) < limit:
            got = await self.feed.history(room, seq, min(256, limit - len(found)))
            if not got:
                return found, True
            end = stop()
            for s, data in got:
                if end is not None and s >= end:
                    return found, True
                found.append((s, data))
            seq = got[-1][0] + 1
        return found, False

    async def _read_head(self, room: str) -> None:
        """Plain joins of a room new to this worker are confirmed with its newest position."""
        hub = self.hub
        try:
            while room in hub.want_head and room in hub.rooms:
                read_for = hub.rooms[room]
                if not read_for.subscribed:
                    hub.want_head.discard(room)  # asked again once subscribed
                    return
                try:
                    seq = await self.feed.head(room)
                except Exception as exc:
                    log.warning("reading a room's newest position failed: %s; retrying", exc,
                                extra={"room": room})  # fmt: skip
                    await asyncio.sleep(1.0)
                    continue
                hub.head_read(room, seq, read_for)
        finally:
            self._heading.discard(room)
            self._service_history()

    async def _fill(self, room: str, sync: bool = False) -> None:
        """Blobs of the room never arrived (a gap in the chain), or may not have (`sync`: NATS
        was disconnected): read them from the history; everything held behind them then goes
        out in order."""
        hub = self.hub
        counted = False
        try:
            while True:
                log_ = hub.log_for(room)
                if log_ is None or log_.last < 0:
                    return
                gap = log_.gap()
                if gap is None and not sync:
                    return
                start, stop = gap if gap is not None else (log_.last + 1, None)

                def until(stop: int | None = stop) -> int | None:
                    return stop

                try:
                    found, _ = await self._read_range(room, start, until, hub.max_replay_blobs + 1)
                except Exception as exc:
                    log.warning("reading missing blobs failed: %s; retrying", exc,
                                extra={"room": room})  # fmt: skip
                    await asyncio.sleep(1.0)
                    continue
                if hub.log_for(room) is not log_:
                    return
                sync = False
                if gap is None and log_.held:
                    continue  # a hole showed meanwhile: read again, up to what is held
                if gap is None and not found:
                    return  # nothing was missed
                if not counted and (found or log_.held):
                    counted = True
                    metrics.HISTORY_GAPS.inc()
                entries, whole = log_.fill(found)
                self._fanout([(room, e.data) for e in entries], time.perf_counter())
                if not whole:
                    log.warning("blobs missing from the history; viewers told to reload",
                                extra={"room": room})  # fmt: skip
                    hub.reset_room(room)
                hub.settle_room(room)
                self._service_history()
        finally:
            self._filling.discard(room)

    def _resync(self) -> None:
        """NATS reconnected: what was published meanwhile never reached this worker. Read each
        room's history after its newest blob here (its chain says if anything was missed)."""
        hub = self.hub
        for room in [*hub.rooms, ALL_ROOM]:
            log_ = hub.log_for(room)
            if log_ is not None and log_.last >= 0 and room not in self._filling:
                self._filling.add(room)
                self._spawn(self._fill(room, sync=True))

    def _service_history_counters(self) -> None:
        """The hub's counters into the metrics (what changed since the last time)."""
        now, last = self.hub.counters, self._counted
        if now == last:
            return
        metrics.FRAMES_REPLAYED.labels("slow").inc(now.replayed_slow - last.replayed_slow)
        metrics.FRAMES_REPLAYED.labels("resume").inc(now.replayed_resume - last.replayed_resume)
        metrics.RESUMES.labels("true").inc(now.resumed - last.resumed)
        metrics.RESUMES.labels("false").inc(now.not_recovered - last.not_recovered)
        metrics.RESETS.inc(now.resets - last.resets)
        metrics.HISTORY_READS.inc(now.history_reads - last.history_reads)
        self._counted = dataclasses.replace(now)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- timers: handshakes, slow viewers, keepalive, closing handshakes ----------------------

    async def housekeeping(self) -> None:
        """One task per worker (never one per viewer)."""
        cfg = self.cfg
        next_ping = time.monotonic() + cfg.ping_interval_s
        next_second = 0.0
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            hub = self.hub
            metrics.HANDSHAKES.set(len(hub.handshaking))
            self._service_history_counters()
            metrics.READY.set(1 if self.ready else 0)
            late = hub.overdue_handshakes(now, cfg.handshake_timeout_s, cfg.handshake_idle_s)
            if late:
                metrics.REJECTED.labels("handshake_timeout").inc(len(late))
                for v in late:
                    v.abort()
            for v in hub.overdue_slow(now, cfg.slow_grace_s):
                metrics.SLOW_CLOSES.inc()
                v.close(CloseCode.SLOW_VIEWER, "slow viewer: reconnect and resume")
                if v.state is OPEN:  # its WebSocket was already closing: leave the hub anyway
                    self.viewer_closing(v)
            for v in hub.overdue_closes(now, cfg.close_timeout_s):
                v.abort()
            if self.auth is not None:
                self._check_grants(now)
            if now >= next_second:
                next_second = now + 1.0
                self._each_second(now)
            try:
                await self._count_tick(now)
            except Exception:  # counts must never stop the timers above
                log.exception("viewer counts: tick failed")
            if now >= next_ping:
                next_ping = now + cfg.ping_interval_s
                timeout = cfg.ping_timeout_s
                for v in list(hub.viewers):
                    if v.ping_sent_at and now - v.ping_sent_at >= timeout:
                        v.fail(CloseCode.INTERNAL, "keepalive ping timeout")
                    elif not v.ping_sent_at:
                        v.ping(now)

    def _each_second(self, now: float) -> None:
        if self.auth is not None:
            self.auth.reload_if_changed()
        elif self.worker_id == 0 and now - self._last_noauth_log >= 60:
            self._last_noauth_log = now
            log.warning("running with --auth off: anyone may join any room")
        rate = self.cfg.max_connects_per_ip_per_s
        if self._ip_tokens and rate:  # forget buckets that have filled up again
            burst = max(1.0, rate)
            full = [ip for ip, (t, at) in self._ip_tokens.items() if t + (now - at) * rate >= burst]
            for ip in full:
                del self._ip_tokens[ip]

    async def drain(self) -> None:
        """Close every viewer with 1012, paced over drain_seconds (no reconnect stampede)."""
        self.draining = True
        metrics.READY.set(0)
        viewers = list(self.hub.viewers)
        log.info("draining", extra={"viewers": len(viewers), "seconds": self.cfg.drain_seconds})
        ticks = max(1, int(self.cfg.drain_seconds * 10))
        per_tick = max(1, -(-len(viewers) // ticks))
        for i in range(0, len(viewers), per_tick):
            for v in viewers[i : i + per_tick]:
                v.close(CloseCode.DRAINING, "gateway restarting: reconnect and resume")
            await asyncio.sleep(self.cfg.drain_seconds / ticks)
        deadline = time.monotonic() + self.cfg.close_timeout_s
        while self.hub.closing and time.monotonic() < deadline:  # noqa: ASYNC110 (bounded)
            await asyncio.sleep(0.05)
        for v in list(self.hub.closing):
            v.abort()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.pages.close()
        await self._stop_counts()
        await self.feed.close()

    # ---- HTTP endpoints on the same port ------------------------------------------------------

    def http_endpoint(self, path: str, query: str = "") -> tuple[int, bytes, str]:
        """A plain HTTP answer on the viewer port (anything but `/ws`): the fixed endpoints, then
        `routes` (exact paths), then `prefix_routes` (the first prefix that matches)."""
        if path == "/healthz":
            return 200, b"ok\n", "text/plain"
        if path == "/readyz":
            if self.ready:
                return 200, b"ready\n", "text/plain"
            why = "draining" if self.draining else "NATS not connected"
            if not self.started:
                why = "starting: NATS not connected yet"
            return 503, f"not ready: {why}\n".encode(), "text/plain"
        if path == "/metrics":  # never on the public port
            return 404, b"not here: metrics are on --metrics-port\n", "text/plain"
        route = self.routes.get(path)
        if route is not None:
            return route(path, query)
        for prefix, handler in self.prefix_routes:
            if path.startswith(prefix):
                return handler(path, query)
        return 404, b"not found: viewers connect to /ws?room=ROOM\n", "text/plain"

    # ---- viewer counts across the cluster (counts.py) -----------------------------------------

    async def _start_counts(self) -> None:
        """Listen to every worker's counts on the feed's NATS connection (a feed without one:
        the counts are this worker's own)."""
        nc = getattr(self.feed, "nc", None)
        if nc is None:
            return
        await nc.subscribe(countmsg.SUBJECT, cb=self._count_message)
        self._counts_nc = nc
        self.counts.started = time.monotonic()  # known once everyone had an interval to speak
        log.info("viewer counts", extra={"counts_id": self.counts.worker, "worker": self.worker_id})

    async def _count_message(self, msg: Any) -> None:
        try:
            message = countmsg.decode_message(msg.data)
        except msgspec.DecodeError as exc:
            self._count_warning("not a count message on %s: %s", countmsg.SUBJECT, exc)
            return
        if message.worker == self.counts.worker:
            return
        metrics.COUNT_MESSAGES.labels("received").inc()
        if self.counts.receive(message, time.monotonic()):
            metrics.COUNT_GAPS.inc()

    def _count_joined(self, v: Viewer, room: str) -> None:
        self._counts_dirty = True
        if room in v.rooms:  # joined: it gets the room's count at the next tick
            self._count_owed.add((v, room))

    def _local_counts(self) -> None:
        if self._counts_dirty:
            self._counts_dirty = False
            self.counts.update_local(self.hub.local_counts())

    async def _count_tick(self, now: float) -> None:
        """From housekeeping: publish this worker's counts when due, forget silent workers,
        push changed totals to the rooms' viewers, and the count to viewers that joined."""
        counts = self.counts
        self._local_counts()
        gone = counts.expire(now)
        if gone:
            metrics.COUNT_EXPIRED.inc(len(gone))
            log.info("viewer counts: workers silent for 3 intervals forgotten",
                     extra={"workers": ",".join(gone)})  # fmt: skip
        if self._counts_nc is not None:
            sent = counts.outgoing(now)
            if sent:
                await self._publish_counts(sent)
                self._count_metrics()
        pushed = set()
        for room, n in counts.pushes(now):
            self.hub.broadcast(room, encode_server_message(Count(room, n)))
            pushed.add(room)
        if self._count_owed and counts.known(now):
            owed, self._count_owed = self._count_owed, set()
            for v, room in owed:
                if room not in pushed and v.state is OPEN and room in v.rooms:
                    self.hub.reply(v, encode_server_message(Count(room, counts.total(room))))

    async def _publish_counts(self, messages: list[countmsg.CountMessage]) -> None:
        nc = self._counts_nc
        try:
            for m in messages:
                await nc.publish(countmsg.SUBJECT, countmsg.encode_message(m))
        except Exception as exc:  # NATS down: the others expire us, then catch up when it is back
            self._count_warning("viewer counts not published: %s", exc)
            return
        metrics.COUNT_MESSAGES.labels("sent").inc(len(messages))

    def _count_metrics(self) -> None:
        counts = self.counts
        metrics.CLUSTER_VIEWERS.set(counts.cluster_viewers())
        metrics.CLUSTER_ROOMS.set(len(counts.totals))
        metrics.COUNT_WORKERS.set(len(counts.shares) + 1)
        if self.worker_id == 0:  # every worker knows the same: one exports the top rooms
            top = heapq.nlargest(metrics.TOP_ROOMS, counts.totals.items(), key=lambda kv: kv[1])
            metrics.TOP_ROOM_VIEWERS.clear()
            for room, n in top:
                metrics.TOP_ROOM_VIEWERS.labels(room).set(n)

    def _count_warning(self, text: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_count_log >= 10:
            self._last_count_log = now
            log.warning(text, *args)

    async def _stop_counts(self) -> None:
        """A worker that stops says it has no viewers left (the others need not wait 3 intervals
        to stop counting the ones it had)."""
        nc = self._counts_nc
        if nc is None or not nc.is_connected:
            return
        try:
            await nc.publish(countmsg.SUBJECT, countmsg.encode_message(self.counts.farewell()))
            await nc.flush(timeout=1)
        except Exception as exc:
            log.warning("viewer counts: last message not sent: %s", exc)

    def _room_route(self, path: str, query: str) -> tuple[int, bytes, str]:
        """GET /rooms/{room}: the room's viewers across the cluster. With --auth jwt, only for a
        token (`?token=JWT`) that grants the room: a personal room's count says who is online."""
        room = urllib.parse.unquote(path[len("/rooms/") :])
        try:
            check_room(room)
        except RoomNameError as exc:
            return 400, f"bad room: {exc}\n".encode(), "text/plain"
        if self.auth is not None:
            token = urllib.parse.parse_qs(query).get("token", [""])[-1]
            if not token:
                why = b"unauthorized: ask with ?token=JWT, a token that grants the room\n"
                return 401, why, "text/plain"
            try:
                grant, _ = self.auth.verify(token)
            except AuthError as exc:
                return 401, f"{exc.code}: {exc}\n".encode(), "text/plain"
            if not allowed(grant, room):
                return 403, f"forbidden: the token does not grant {room}\n".encode(), "text/plain"
        self._local_counts()
        body = msgspec.json.encode({"room": room, "viewers": self.counts.total(room)})
        return 200, body, "application/json"
