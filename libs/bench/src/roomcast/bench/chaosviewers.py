"""Checked viewers for `roomcast bench chaos`, many per process, in several processes.

Each viewer is a plain WebSocket client that behaves as the protocol asks of an app's client
(docs/protocol.md): it joins its rooms, applies the dedup rule to every blob, keeps each room's
position (`EPOCH:SEQ` of the last blob) and hands it back as `since` on every reconnect, to its
own gateway first and to the other one if that one refuses. What it gets goes into one
`checker.RoomLog` per room and one latency histogram per process; nothing is judged here.

The parent drives each process through a pipe (`ViewerProcesses`), as `loadclient` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import random
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgspec

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
            lat = self.proc.latencies[self.spec.group]
            for _, value in self.dedup.fresh(blob):
                ev = _event.decode(value)
                log.event(ev.n, now)
                lat.add(ev.t, now)
            return
        msg = _kind.decode(data)
        kind, room = msg.get("type"), msg.get("room")
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


class _Process:
    """One process's viewers."""

    def __init__(self) -> None:
        self.viewers: list[_Viewer] = []
        self.ports: list[int] = []
        self.stopping = False
        self.latencies: dict[str, Latencies] = {"main": Latencies(), "slow": Latencies()}

    def start(self, specs: list[ViewerSpec], ports: list[int]) -> None:
        self.ports = ports
        loop = asyncio.get_running_loop()
        for spec in specs:
            v = _Viewer(spec, self)
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
            "connected": sum(1 for v in self.viewers if v.ws is not None),
            "joined": sum(
                1
                for v in self.viewers
                if v.joined_at and v.ws is not None and len(v.joined) == len(v.spec.rooms)
            ),
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
            if v.ws is not None:
                v.ws.transport.abort()
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
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def read_commands() -> None:  # a thread: the pipe stays blocking
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = ("exit", None)
            loop.call_soon_threadsafe(commands.put_nowait, msg)
            if msg[0] == "exit":
                return

    threading.Thread(target=read_commands, daemon=True).start()
    while True:
        cmd, arg = await commands.get()
        if cmd == "start":
            proc.start(arg["specs"], arg["ports"])
            conn.send(None)
        elif cmd == "stats":
            conn.send(proc.stats(arg))
        elif cmd == "pause":
            proc.pause(arg["names"], arg["seconds"])
            conn.send(None)
        elif cmd == "drop":
            conn.send(proc.drop())
        elif cmd == "collect":
            await proc.stop()
            conn.send(proc.collect())
        elif cmd == "exit":
            await proc.stop()
            with contextlib.suppress(OSError):
                conn.send(None)
            return


def _main(conn: Connection) -> None:
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve(conn))


class ViewerProcesses:
    """Viewers spread over `processes` processes (started now, stopped by `close`)."""

    def __init__(self, specs: Sequence[ViewerSpec], ports: list[int], processes: int) -> None:
        ctx = mp.get_context("spawn")
        self.count = max(1, min(processes, len(specs)))
        self._pipes: list[Connection] = []
        self._procs: list[Any] = []
        for _ in range(self.count):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_main, args=(child,), daemon=True)
            p.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(p)
        for i, pipe in enumerate(self._pipes):
            pipe.send(("start", {"specs": list(specs[i :: self.count]), "ports": ports}))
        for pipe in self._pipes:
            pipe.recv()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def _all(self, cmd: str, arg: Any = None) -> list[Any]:
        for pipe in self._pipes:
            pipe.send((cmd, arg))
        return [pipe.recv() for pipe in self._pipes]

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
        with contextlib.suppress(OSError, EOFError):
            self._all("exit")
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(2)
        self._procs.clear()
        self._pipes.clear()

    def __enter__(self) -> ViewerProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
