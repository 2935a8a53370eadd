"""Checked viewers for `roomcast bench chaos`, many per process, in several processes.

Two kinds of viewer, chosen per run (`client`):

- `sdk`: the Python SDK, `roomcast.client.subscribe()`, as an app uses it: it resumes, drops
  repeats and says when a room lost continuity; the app only points it at the other gateway
  (`Subscription.url`) when an attempt fails or its gateway drains (what a load balancer would do);
- `plain`: a bare WebSocket client doing the same by hand (join, dedup rule, `since` on every
  reconnect), to tell a defect of the SDK from one of the servers.

What a viewer gets goes into one `checker.RoomLog` per room and one latency histogram per
process; nothing is judged here.

The parent drives each process through a pipe (`ViewerProcesses`), as `loadclient` does.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from roomcast.bench import pipes
from roomcast.bench.checker import Latencies, RoomLog
from roomcast.core.blob import decode_blob
from roomcast.core.positions import Deduper

#: Close codes after which a viewer does not come back (it is broken, not the cluster).
_FATAL = {1002, 1007, 1008, 1009, 4001, 4003}


class _Event(msgspec.Struct):
    n: int
    t: float


_event = msgspec.json.Decoder(_Event)
_kind = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True)
class ViewerSpec:
    name: str
    rooms: tuple[str, ...]
    home: int  # index of the gateway it tries first
    group: str = "main"  # latency histogram it feeds ("slow": the viewer that stops reading)


class _Viewer:
    """The plain viewer (and the state both kinds share)."""

    def __init__(self, spec: ViewerSpec, proc: _Process) -> None:
        self.spec = spec
        self.proc = proc
        self.logs = {room: RoomLog() for room in spec.rooms}
        self.positions: dict[str, str] = {}
        self.dedup = Deduper()
        self.ws: Any = None
        self.joined: set[str] = set()
        self.joined_at = 0.0  # when it last had every room joined (time.time())
        self.connects = 0
        self.errors: list[str] = []
        self.paused_until = 0.0
        self.task: asyncio.Task[None] | None = None

    def url(self, port: int) -> str:
        query = [("room", r) for r in self.spec.rooms] + [
            ("since", f"{r}:{self.positions[r]}") for r in self.spec.rooms if r in self.positions
        ]
        return f"ws://127.0.0.1:{port}/ws?" + urllib.parse.urlencode(query)

    async def run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        gw = self.spec.home
        failures = 0
        while not self.proc.stopping:
            port = self.proc.ports[gw % len(self.proc.ports)]
            code: int | None = None
            try:
                async with connect(
                    self.url(port),
                    compression=None,
                    open_timeout=5,
                    close_timeout=1,
                    ping_interval=None,
                    max_size=2**24,
                    max_queue=16,
                ) as ws:
                    self.ws = ws
                    self.connects += 1
                    self.joined.clear()
                    failures = 0
                    try:
                        async for message in ws:
                            if self.paused_until:
                                await self._paused()
                            self.handle(message)
                    except ConnectionClosed:
                        pass
                    code = ws.close_code
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
                failures += 1
                gw += 1  # refused or down: the other gateway
                if failures > 3 and len(self.errors) < 20:
                    self.errors.append(f"connect to :{port}: {type(exc).__name__}: {exc}")
            finally:
                self.ws = None
                self.joined.clear()
            if self.proc.stopping:
                return
            if code in _FATAL:
                self.errors.append(f"closed with {code}: not coming back")
                return
            # Jittered backoff: a whole process's viewers must not come back in one burst.
            await asyncio.sleep(random.uniform(0.05, 0.3) * min(8, 2**failures))

    def connected(self) -> bool:
        return self.ws is not None

    def live(self) -> bool:
        return self.ws is not None and len(self.joined) == len(self.spec.rooms)

    def abort(self) -> None:
        if self.ws is not None:
            self.ws.transport.abort()

    def record(self, room: str, events: Any, now: float) -> None:
        log = self.logs.get(room)
        if log is None:
            return
        lat = self.proc.latencies[self.spec.group]
        for value in events:
            ev = _event.decode(value)
            log.event(ev.n, now)
            lat.add(ev.t, now)

    async def _paused(self) -> None:
        """Stop reading until `paused_until` (the socket fills up; the gateway sees a slow
        viewer)."""
        left = self.paused_until - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)
        self.paused_until = 0.0

    def handle(self, message: str | bytes) -> None:
        now = time.time()
        data = message.encode() if isinstance(message, str) else message
        if data.startswith(b'{"type":"blob"'):
            blob = decode_blob(data)
            log = self.logs.get(blob.room)
            if log is None:
                return
            if blob.epoch:
                self.positions[blob.room] = f"{blob.epoch}:{blob.seq}"
            self.record(blob.room, [value for _, value in self.dedup.fresh(blob)], now)
            return
        msg = _kind.decode(data)
        kind, room = msg.get("type"), str(msg.get("room"))
        if kind == "joined":
            if msg.get("recovered") is False and room in self.logs:
                self.logs[room].told_recovered_false()
            self.joined.add(room)
            if len(self.joined) == len(self.spec.rooms):
                self.joined_at = now
        elif kind == "reset" and room in self.logs:
            self.logs[room].told_reset()
        elif kind == "error" and len(self.errors) < 20:
            self.errors.append(f"error message: {data[:200]!r}")


class _SdkViewer(_Viewer):
    """A viewer that is `roomcast.client.subscribe()`, iterated as an app does."""

    def __init__(self, spec: ViewerSpec, proc: _Process) -> None:
        super().__init__(spec, proc)
        self.sub: Any = None
        self.state = "connecting"

    def connected(self) -> bool:
        return self.sub is not None and self.sub.connection is not None

    def live(self) -> bool:
        return self.connected() and self.state == "live"

    def abort(self) -> None:
        """A network loss (TCP reset): the SDK backs off and resumes on its own."""
        ws = self.sub.connection if self.sub is not None else None
        if ws is not None:
            ws.transport.abort()

    async def run(self) -> None:
        from roomcast.client import Status, subscribe
        from roomcast.core.blob import Blob
        from roomcast.core.protocol import Joined, Reset

        urls = [f"ws://127.0.0.1:{port}/ws" for port in self.proc.ports]
        gw = self.spec.home

        def on_status(st: Status) -> None:
            nonlocal gw
            self.state = st.state
            if st.state == "connecting" and st.error and (not st.lost or "1012" in st.error):
                gw += 1  # refused, down or draining: the other gateway, as a balancer would
                sub.url = urls[gw % len(urls)]
            elif st.state in ("recovering", "live"):
                self.connects += 1 if st.state == "recovering" or not self.joined_at else 0
                if st.state == "live":
                    self.joined_at = time.time()

        sub = self.sub = subscribe(
            urls[gw % len(urls)], self.spec.rooms, messages=True, on_status=on_status
        )
        try:
            async with sub:
                async for item in sub:
                    if self.paused_until:
                        await self._paused()
                    if isinstance(item, Blob):
                        self.record(item.room, item.events, time.time())
                    elif isinstance(item, Joined):
                        if item.recovered is False and item.room in self.logs:
                            self.logs[item.room].told_recovered_false()
                    elif isinstance(item, Reset) and item.room in self.logs:
                        self.logs[item.room].told_reset()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the SDK gave up: a viewer that stopped, reported
            if len(self.errors) < 20:
                self.errors.append(f"subscription ended: {type(exc).__name__}: {exc}")


class _Process:
    """One process's viewers."""

    def __init__(self) -> None:
        self.viewers: list[_Viewer] = []
        self.ports: list[int] = []
        self.stopping = False
        self.latencies: dict[str, Latencies] = {"main": Latencies(), "slow": Latencies()}

    def start(self, specs: list[ViewerSpec], ports: list[int], client: str) -> None:
        self.ports = ports
        loop = asyncio.get_running_loop()
        kind = _SdkViewer if client == "sdk" else _Viewer
        for spec in specs:
            v = kind(spec, self)
            v.task = loop.create_task(v.run())
            self.viewers.append(v)

    def stats(self, produced: dict[str, int] | None) -> dict[str, Any]:
        complete = 0
        if produced is not None:
            complete = sum(
                1
                for v in self.viewers
                for room, log in v.logs.items()
                if log.next >= produced.get(room, 0) or log.announce_pending
            )
        return {
            "viewers": len(self.viewers),
            "connected": sum(1 for v in self.viewers if v.connected()),
            "joined": sum(1 for v in self.viewers if v.joined_at and v.live()),
            "last_joined_at": max((v.joined_at for v in self.viewers), default=0.0),
            "rooms_with_data": sum(
                1 for v in self.viewers for lg in v.logs.values() if lg.first >= 0
            ),
            "viewer_rooms": sum(len(v.logs) for v in self.viewers),
            "delivered": sum(lg.delivered for v in self.viewers for lg in v.logs.values()),
            "complete": complete,
            "connects": sum(v.connects for v in self.viewers),
            "errors": [e for v in self.viewers for e in v.errors][:20],
        }

    def pause(self, names: Sequence[str], seconds: float) -> None:
        until = time.monotonic() + seconds
        for v in self.viewers:
            if v.spec.name in names:
                v.paused_until = until

    def drop(self) -> float:
        """Abort every connection at once (TCP reset); each viewer comes back and resumes."""
        t = time.time()
        for v in self.viewers:
            v.abort()
        return t

    async def stop(self) -> None:
        self.stopping = True
        for v in self.viewers:
            if v.task is not None:
                v.task.cancel()
        await asyncio.gather(*(v.task for v in self.viewers if v.task), return_exceptions=True)

    def collect(self) -> tuple[list[tuple[str, str, RoomLog]], dict[str, Latencies]]:
        logs = [(v.spec.name, room, log) for v in self.viewers for room, log in v.logs.items()]
        return logs, self.latencies


async def _serve(conn: Connection) -> None:
    proc = _Process()
    queue = pipes.commands(conn)
    while True:
        cmd, arg = await queue.get()
        if cmd == "start":
            proc.start(arg["specs"], arg["ports"], arg["client"])
            pipes.reply(conn)
        elif cmd == "stats":
            pipes.reply(conn, proc.stats(arg))
        elif cmd == "pause":
            proc.pause(arg["names"], arg["seconds"])
            pipes.reply(conn)
        elif cmd == "drop":
            pipes.reply(conn, proc.drop())
        elif cmd == "collect":
            await proc.stop()
            pipes.reply(conn, proc.collect())
        elif cmd == "exit":
            await proc.stop()
            pipes.reply(conn)
            return


class ViewerProcesses:
    """Viewers spread over `processes` processes (started now, stopped by `close`)."""

    def __init__(
        self, specs: Sequence[ViewerSpec], ports: list[int], processes: int, client: str = "sdk"
    ) -> None:
        self.count = max(1, min(processes, len(specs)))
        self._pool = pipes.ProcessPool(_serve, self.count)
        self._pool.each(
            [
                ("start", {"specs": list(specs[i :: self.count]), "ports": ports, "client": client})
                for i in range(self.count)
            ]
        )

    @property
    def pids(self) -> list[int]:
        return self._pool.pids

    def _all(self, cmd: str, arg: Any = None) -> list[Any]:
        return self._pool.all(cmd, arg)

    def stats(self, produced: dict[str, int] | None = None) -> dict[str, Any]:
        total: dict[str, Any] = {"errors": []}
        for s in self._all("stats", produced):
            for k, v in s.items():
                if k == "errors":
                    total["errors"].extend(v)
                elif k == "last_joined_at":
                    total[k] = max(total.get(k, 0.0), v)
                else:
                    total[k] = total.get(k, 0) + v
        return total

    def pause(self, names: Sequence[str], seconds: float) -> None:
        self._all("pause", {"names": list(names), "seconds": seconds})

    def drop(self) -> float:
        return float(min(self._all("drop")))

    def collect(self) -> tuple[list[tuple[str, str, RoomLog]], dict[str, Latencies]]:
        logs: list[tuple[str, str, RoomLog]] = []
        lat = {"main": Latencies(), "slow": Latencies()}
        for part, part_lat in self._all("collect"):
            logs.extend(part)
            for group, hist in part_lat.items():
                lat.setdefault(group, Latencies()).merge(hist)
        return logs, lat

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> ViewerProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
