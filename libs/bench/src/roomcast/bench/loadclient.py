"""The load client: thousands of WebSocket viewers per process, in several processes.

Built never to be the bottleneck: one `asyncio.Protocol` per viewer on uvloop, no task per
viewer, a fixed handshake request, and frames counted from their headers alone. Only when a
scenario checks content (`inspect=True`, the e2e scenario) are blobs decoded, deduplicated
by their positions (docs/protocol.md) and timed against the producer's timestamp.

With churn (`churn_s > 0`, `bench e2e --churn`) each viewer is instead the Python SDK
(`roomcast.client.subscribe`, a task each): it drops its connection every ~churn_s seconds
(uniform in [0.5, 1.5] x churn_s) once it has a position in each of its rooms, and resumes
with `since`; what it yields is checked the same way.

The parent drives each process through a pipe with small commands and polls its counters;
`LoadClients` spreads viewers over as many processes as the open-files limit needs.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import random
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from roomcast.bench import pipes
from roomcast.client.subscription import Status, Subscription
from roomcast.core.blob import Blob, decode_blob
from roomcast.core.protocol import Joined, Reset

#: Viewers per load-client process: well under the 20,000 open-files limit.
PER_PROCESS = 12_000

_REQUEST = (
    "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n{extra}\r\n"
)
#: What browsers offer: permessage-deflate, and we may reset our context per message.
_DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
_FLUSH_TAIL = b"\x00\x00\xff\xff"
_COUNT = b'{"type":"count"'  # how a viewer-count message starts (15 bytes)
_MAX_LATENCY_SAMPLES = 200_000
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2


class _Event(msgspec.Struct):
    seq: int
    ts: float


_events = msgspec.json.Decoder(list[_Event])


def _uniform() -> float:
    """Uniform in (0, 1]: safe to take the log of."""
    return 1.0 - random.random()


class _Viewer(asyncio.Protocol):
    __slots__ = (
        "buf",
        "client",
        "dropped",
        "joined",
        "last",
        "path",
        "seen",
        "transport",
        "upgraded",
    )

    def __init__(self, client: _Client, path: str) -> None:
        self.client = client
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.joined = False
        self.dropped = False
        self.buf = b""
        # inspect mode: last offset per (room, partition) and next expected seq per room
        self.last: dict[tuple[str, int], int] = {}
        self.seen: dict[str, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] (uvloop's is no asyncio.Transport)
        transport.write(self.client.request(self.path))

    def connection_lost(self, exc: Exception | None) -> None:
        c = self.client
        if self.dropped:
            return
        c.viewers.discard(self)
        if self.joined:
            c.joined -= 1
        if not c.stopping:
            c.lost_connections += 1

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            data = self.buf + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            self.buf = b""
            if not data.startswith(b"HTTP/1.1 101"):
                self.client.rejected[data[9:12].decode(errors="replace")] += 1
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            data = data[end + 4 :]
            if not data:
                return
        elif self.buf:
            data = self.buf + data
            self.buf = b""
        c = self.client
        pos, n = 0, len(data)
        while pos < n:
            if n - pos < 2:
                self.buf = data[pos:]
                return
            b0 = data[pos]
            ln = data[pos + 1] & 0x7F
            h = 2 if ln < 126 else 4 if ln == 126 else 10  # header bytes (server frames: no mask)
            if h > 2:
                ln = int.from_bytes(data[pos + 2 : pos + h], "big")
            end = pos + h + ln
            if end > n:  # incomplete header or payload: wait for more
                self.buf = data[pos:]
                return
            op = b0 & 0x0F
            if op == 1 or op == 2:
                if not self.joined:  # the first message is the `joined` ack
                    self.joined = True
                    c.joined += 1
                elif data[pos + h : pos + h + 15] == _COUNT:
                    pass  # a viewer count (never compressed), not a blob
                else:
                    c.frames += 1
                    c.bytes += end - pos
                    if c.inspect:
                        payload = data[pos + h : end]
                        if b0 & 0x40:  # permessage-deflate, no context takeover: stands alone
                            payload = zlib.decompressobj(-15).decompress(payload + _FLUSH_TAIL)
                        self._inspect(payload)
            elif op == 9:  # ping -> pong (masked with a zero key, as clients must mask)
                payload = data[pos + h : end]
                assert self.transport is not None
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
            elif op == 8:
                code = int.from_bytes(data[pos + h : pos + h + 2], "big") if ln >= 2 else 1005
                c.closes[code] += 1
                assert self.transport is not None
                self.transport.close()
                return
            pos = end

    def _inspect(self, payload: bytes) -> None:
        """Decode a blob, apply the dedup rule, check each room's sequence, sample latency.

        Per blob, not per event, where it can: one C-level decode of all its events, the
        replayed prefix found by bisection, the sequence checked as one list comparison.
        """
        c = self.client
        try:
            blob = decode_blob(payload)
            events = _events.decode(b"[" + b",".join(blob.events) + b"]")
        except msgspec.DecodeError:
            c.bad_frames += 1
            return
        offsets = blob.offsets
        if not offsets or len(events) != len(offsets):
            c.bad_frames += 1
            return
        key = (blob.room, blob.partition)
        last = self.last.get(key, -1)
        # The documented dedup rule: drop any position at or below the last one seen. A blob's
        # offsets ascend, so what a replay repeats is a prefix.
        start = 0 if offsets[0] > last else bisect.bisect_right(offsets, last)
        if start:
            c.replayed += start
            if start == len(offsets):
                return
            events = events[start:]
        self.last[key] = offsets[-1]
        c.check_sequence(self.seen, blob.room, events)


class _Client:
    """One process's viewers and counters."""

    def __init__(self) -> None:
        self.viewers: set[_Viewer] = set()
        self.paths: list[str] = []
        self.host = "127.0.0.1"
        self.port = 0
        self.inspect = False
        self.compress = False  # offer permessage-deflate in the handshake
        self.churn_s = 0.0  # > 0: SDK viewers that drop and resume every ~churn_s seconds
        self.subs: dict[Subscription[Any], asyncio.Task[None]] = {}
        self.stopping = False
        self.source = "127.0.0.1"
        self.reset()
        self._requests: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        self.joined = getattr(self, "joined", 0)
        self.frames = self.bytes = 0
        self.events = self.duplicated = self.gaps = self.replayed = self.bad_frames = 0
        self.lost_connections = 0
        self.failed = 0
        self.resumed = self.recovered_false = self.resets = self.churned = 0
        self.closes: Counter[int] = Counter()
        self.rejected: Counter[str] = Counter()
        self.latencies: list[float] = []
        self._next_sample = 0  # reservoir (Algorithm L): the next event number to keep
        self._w = 0.0

    def check_sequence(self, seen: dict[str, int], room: str, events: list[_Event]) -> None:
        """Count a room's events (already deduplicated by position) against the producer's
        sequence: one below the next expected is a duplicate, one above it a gap."""
        expected = seen.get(room, 0)
        seqs = [e.seq for e in events]
        n = len(seqs)
        if seqs[0] == expected and seqs == list(range(expected, expected + n)):
            accepted = events
            expected += n
        else:  # a duplicate or a gap: event by event
            accepted = []
            for e in events:
                if e.seq < expected:
                    self.duplicated += 1
                    continue
                if e.seq > expected:
                    self.gaps += e.seq - expected
                expected = e.seq + 1
                accepted.append(e)
        seen[room] = expected
        self.sample(accepted, time.time())

    def sample(self, events: list[_Event], now: float) -> None:
        """Count `events` as delivered and keep a uniform sample of their latencies: the first
        _MAX_LATENCY_SAMPLES, then Li's Algorithm L, which draws how many events to skip before
        the next one to keep, so the cost is per kept event, not per event."""
        first = self.events
        self.events = total = first + len(events)
        samples = self.latencies
        i = 0
        if len(samples) < _MAX_LATENCY_SAMPLES:
            room = _MAX_LATENCY_SAMPLES - len(samples)
            samples.extend((now - e.ts) * 1000.0 for e in events[:room])
            i = min(room, len(events))
            if len(samples) < _MAX_LATENCY_SAMPLES:
                return
            self._w = math.exp(math.log(_uniform()) / _MAX_LATENCY_SAMPLES)
            self._next_sample = first + i + self._skip() + 1
        while self._next_sample <= total:
            e = events[self._next_sample - first - 1]
            samples[random.randrange(_MAX_LATENCY_SAMPLES)] = (now - e.ts) * 1000.0
            self._w *= math.exp(math.log(_uniform()) / _MAX_LATENCY_SAMPLES)
            self._next_sample += self._skip() + 1

    def _skip(self) -> int:
        return int(math.log(_uniform()) / math.log(1.0 - min(self._w, 0.999999999)))

    def request(self, path: str) -> bytes:
        req = self._requests.get(path)
        if req is None:
            extra = _DEFLATE_OFFER if self.compress else ""
            req = self._requests[path] = _REQUEST.format(
                path=path, host=self.host, port=self.port, extra=extra
            ).encode()
        return req

    def connect(
        self,
        host: str,
        port: int,
        paths: list[str],
        inspect: bool,
        deadline: float,
        source: str,
        compress: bool = False,
        churn_s: float = 0.0,
    ) -> None:
        self.host, self.port, self.paths, self.inspect = host, port, paths, inspect
        self.compress = compress
        self.churn_s = churn_s
        self.source = source
        self.stopping = False
        self._requests.clear()
        opening = self._subscribe_all(paths) if churn_s > 0 else self._connect_all(paths, deadline)
        self._task = asyncio.get_running_loop().create_task(opening)

    async def _subscribe_all(self, paths: Sequence[str]) -> None:
        """One SDK viewer per path, at most 200 handshakes in flight (it retries by itself)."""
        sem = asyncio.Semaphore(200)
        loop = asyncio.get_running_loop()
        for path in paths:
            query = path.partition("?")[2]
            rooms = [v for k, _, v in (kv.partition("=") for kv in query.split("&")) if k == "room"]
            sub: Subscription[Any] = Subscription(
                f"ws://{self.host}:{self.port}/ws",
                rooms,
                messages=True,
                on_status=self._sdk_status(),
                compression="deflate" if self.compress else None,
            )
            self.subs[sub] = loop.create_task(self._sdk_viewer(sub, sem))

    def _sdk_status(self) -> Callable[[Status], None]:
        """A viewer counts as joined the first time it is live."""
        counted = False

        def on_status(status: Status) -> None:
            nonlocal counted
            if status.state == "live" and not counted:
                counted = True
                self.joined += 1

        return on_status

    async def _sdk_viewer(self, sub: Subscription[Any], sem: asyncio.Semaphore) -> None:
        churn = asyncio.get_running_loop().create_task(self._churn(sub))
        seen: dict[str, int] = {}
        try:
            async with sem:
                await sub.__aenter__()  # the handshake; the next viewer may start its own
            async for item in sub:
                if isinstance(item, Blob):
                    self.frames += 1
                    try:
                        events = _events.decode(b"[" + b",".join(item.events) + b"]")
                    except msgspec.DecodeError:
                        self.bad_frames += 1
                        continue
                    self.check_sequence(seen, item.room, events)
                elif isinstance(item, Joined) and item.recovered is not None:
                    if item.recovered:
                        self.resumed += 1
                    else:
                        self.recovered_false += 1
                elif isinstance(item, Reset):
                    self.resets += 1
        except Exception:
            if not self.stopping:
                self.lost_connections += 1
        finally:
            churn.cancel()
            await sub.aclose()

    async def _churn(self, sub: Subscription[Any]) -> None:
        """Drop the connection every ~churn_s seconds, once every room has a position (a viewer
        without one has nothing to resume from)."""
        while not self.stopping:
            await asyncio.sleep(self.churn_s * (0.5 + random.random()))
            if all(room in sub.tracker.positions for room in sub.rooms):
                self.churned += 1
                await sub.reconnect()

    async def _connect_all(self, paths: Sequence[str], deadline: float) -> None:
        """Open every viewer, at most 200 handshakes in flight; retry refusals until done."""
        loop = asyncio.get_running_loop()
        todo = list(paths)
        sem = asyncio.Semaphore(200)

        async def one(path: str) -> bool:
            async with sem:
                if self.stopping:
                    return True
                v = _Viewer(self, path)
                sock = socket.socket()
                try:
                    # Bind the source address only; the port is chosen at connect(), by the
                    # 4-tuple. (bind() choosing it scans every port in use: O(n) per socket.)
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((self.source, 0))
                    sock.setblocking(False)
                    await loop.sock_connect(sock, (self.host, self.port))
                    await loop.create_connection(lambda: v, sock=sock)
                except OSError:
                    sock.close()
                    self.failed += 1
                    return False
                self.viewers.add(v)
                return True

        while todo and time.time() < deadline and not self.stopping:
            results = await asyncio.gather(*(one(p) for p in todo))
            todo = [p for p, ok in zip(todo, results, strict=True) if not ok]
            if todo:
                await asyncio.sleep(0.2 + random.random() * 0.3)
        # Viewers turned away at the handshake (503: rate or capacity limits) come back too.
        while not self.stopping and time.time() < deadline:
            await asyncio.sleep(0.25)
            missing = len(self.paths) - len(self.viewers)
            if missing <= 0:
                break
            present = Counter(v.path for v in self.viewers)
            need = Counter(self.paths) - present
            await asyncio.sleep(random.random() * 0.5)
            await asyncio.gather(*(one(p) for p in need.elements()))

    def drop_all(self) -> None:
        """Abort every connection at once (a reconnect storm follows via `connect`). With a
        reset (RST), not a FIN: a FIN would leave each socket in TIME_WAIT for a minute (and its
        conntrack entry for two), and a benchmark's next server would then run with the kernel's
        connection tables holding tens of thousands more entries than the one before it."""
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
        for sub, task in self.subs.items():
            task.cancel()
            if sub.connection is not None:
                _reset(sub.connection.transport)
        self.subs.clear()
        for v in list(self.viewers):
            v.dropped = True
            if v.transport is not None:
                _reset(v.transport)
        self.viewers.clear()
        self.joined = 0

    def stats(self, latencies: bool = False) -> dict[str, Any]:
        return {
            "viewers": len(self.viewers) + sum(s.connection is not None for s in self.subs),
            "joined": self.joined,
            "frames": self.frames,
            "bytes": self.bytes,
            "events": self.events,
            "duplicated": self.duplicated,
            "gaps": self.gaps,
            "replayed": self.replayed,
            "bad_frames": self.bad_frames,
            "lost_connections": self.lost_connections,
            "churned": self.churned,
            "resumed": self.resumed,
            "recovered_false": self.recovered_false,
            "resets": self.resets,
            "failed": self.failed,
            "closes": dict(self.closes),
            "rejected": dict(self.rejected),
            "latencies": self.latencies if latencies else [],
        }


async def _serve(conn: Connection) -> None:
    client = _Client()
    queue = pipes.commands(conn)
    while True:
        cmd, arg = await queue.get()
        if cmd == "connect":
            client.connect(
                arg["host"],
                arg["port"],
                arg["paths"],
                arg["inspect"],
                arg["deadline"],
                arg["source"],
                arg.get("compress", False),
                arg.get("churn_s", 0.0),
            )
            pipes.reply(conn)
        elif cmd == "stats":
            pipes.reply(conn, client.stats(latencies=bool(arg)))
        elif cmd == "reset":
            client.reset()
            pipes.reply(conn)
        elif cmd == "drop":
            client.drop_all()
            await asyncio.sleep(0)
            pipes.reply(conn)
        elif cmd == "exit":
            client.drop_all()
            pipes.reply(conn)
            return


_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def _reset(transport: Any) -> None:
    """Abort the connection with a TCP reset."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


class LoadClients:
    """Viewers spread over several load-client processes (started now, stopped by `close`)."""

    def __init__(self, viewers: int, per_process: int = PER_PROCESS) -> None:
        self.count = max(1, -(-viewers // per_process))
        self._rounds = 0
        self._pool = pipes.ProcessPool(_serve, self.count)

    def _source(self, i: int) -> str:
        """The loopback address process `i` connects from in this round. One source address
        has ~28k ephemeral ports towards one server port: each process and each round gets an
        address of its own (all of 127.0.0.0/8 is loopback)."""
        return f"127.{1 + self._rounds % 200}.{i // 250}.{1 + i % 250}"

    @property
    def pids(self) -> list[int]:
        return self._pool.pids

    def _all(self, cmd: str, arg: Any = None) -> list[Any]:
        return self._pool.all(cmd, arg)

    def connect(
        self,
        port: int,
        paths: Sequence[str],
        inspect: bool = False,
        timeout: float = 120,
        host: str = "127.0.0.1",
        compress: bool = False,
        churn_s: float = 0.0,
    ) -> None:
        """Start opening one viewer per path (returns at once; poll `stats()["joined"]`).
        `churn_s` > 0: SDK viewers that drop and resume every ~churn_s seconds."""
        deadline = time.time() + timeout
        self._rounds += 1
        self._pool.each(
            [
                (
                    "connect",
                    {
                        "host": host,
                        "port": port,
                        "paths": list(paths[i :: self.count]),
                        "inspect": inspect,
                        "deadline": deadline,
                        "source": self._source(i),
                        "compress": compress,
                        "churn_s": churn_s,
                    },
                )
                for i in range(self.count)
            ]
        )

    def stats(self, latencies: bool = False) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for s in self._all("stats", latencies):
            for k, v in s.items():
                if isinstance(v, dict):
                    acc = total.setdefault(k, Counter())
                    acc.update(v)
                elif isinstance(v, list):
                    total.setdefault(k, []).extend(v)
                else:
                    total[k] = total.get(k, 0) + v
        return total

    def reset(self) -> None:
        self._all("reset")

    def drop(self) -> None:
        self._all("drop")

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> LoadClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_joined(
    clients: LoadClients, want: int, timeout: float, progress: Any = None
) -> dict[str, Any]:
    """Poll until `want` viewers have their `joined` ack; raise with what went wrong if not."""
    deadline = time.monotonic() + timeout
    while True:
        s = clients.stats()
        if progress is not None:
            progress(f"viewers joined {s['joined']:,}/{want:,}")
        if s["joined"] >= want:
            return s
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {s['joined']:,} of {want:,} viewers joined in {timeout:.0f}s "
                f"(refused at handshake: {dict(s['rejected']) or 'none'}, "
                f"connect errors: {s['failed']}, closes: {dict(s['closes']) or 'none'})"
            )
        time.sleep(0.1)
