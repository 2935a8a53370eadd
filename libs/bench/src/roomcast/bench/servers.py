"""The two reference servers the fanout scenario measures the gateway against.

Both take blobs from NATS exactly as the gateway does (a core subscription per room with
viewers) and answer the handshake with a `joined` message, so the load client, the
injection and the counting are the same for all three; only the per-viewer write differs.

- `floor`: the least any server can do. The handshake is answered with canned bytes (no
  WebSocket logic), the frame is built once, and each viewer gets one `os.write()` of those
  bytes on its socket. What is left is the syscall: the floor.
- `cfloor`: the same, but the writes are one C loop of `send()` over the room's descriptors
  (`roomcast.uring.write_all`, the array cached per room): the cost of the syscalls alone,
  without Python per viewer. The floor batched submission has to beat.
- `stock`: the websockets library used as its docs show: an asyncio server, a handler
  coroutine per connection, and `websockets.broadcast()` of each message to the room.

Run: python -m roomcast.bench.servers floor|cfloor|stock --port P --nats URL [--loop ...]
(SO_REUSEPORT, so several processes share a port, like the gateway's workers).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import signal
from array import array
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs, urlsplit

import nats
import uvloop

from roomcast.core.frames import text_frame
from roomcast.core.rooms import room_subject, subject_room

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _joined(room: str) -> bytes:
    return b'{"type":"joined","room":"' + room.encode() + b'"}'


class _Rooms:
    """room -> members, with a NATS subscription while a room has members."""

    def __init__(self, nc: Any, prefix: str, deliver: Any) -> None:
        self.nc = nc
        self.prefix = prefix
        self.deliver = deliver
        self.members: dict[str, set[Any]] = defaultdict(set)
        self.subs: dict[str, Any] = {}

    async def join(self, room: str, member: Any) -> None:
        self.members[room].add(member)
        if room not in self.subs:
            self.subs[room] = None
            self.subs[room] = await self.nc.subscribe(room_subject(room, self.prefix), cb=self._on)
            await self.nc.flush()

    def leave(self, room: str, member: Any) -> None:
        self.members[room].discard(member)

    async def _on(self, msg: Any) -> None:
        room = subject_room(msg.subject, self.prefix)
        self.deliver(self.members.get(room, ()), msg.data)


class _FdRooms(_Rooms):
    """Rooms whose blobs go out by one C call over the members' descriptors."""

    def __init__(self, nc: Any, prefix: str) -> None:
        super().__init__(nc, prefix, None)
        self.fds: dict[str, array[int]] = {}

    async def join(self, room: str, member: Any) -> None:
        self.fds.pop(room, None)
        await super().join(room, member)

    def leave(self, room: str, member: Any) -> None:
        self.fds.pop(room, None)
        super().leave(room, member)

    async def _on(self, msg: Any) -> None:
        from roomcast.uring import write_all

        room = subject_room(msg.subject, self.prefix)
        fds = self.fds.get(room)
        if fds is None:
            fds = self.fds[room] = array("i", [m.fd for m in self.members.get(room, ())])
        write_all(fds, text_frame(msg.data))  # full buffer or gone: dropped, as the floor does


class _FloorConn(asyncio.Protocol):
    __slots__ = ("buf", "fd", "room", "rooms", "transport")

    def __init__(self, rooms: _Rooms) -> None:
        self.rooms = rooms
        self.buf = b""
        self.fd = -1
        self.room = ""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] (uvloop's is no asyncio.Transport)
        self.fd = transport.get_extra_info("socket").fileno()

    def data_received(self, data: bytes) -> None:
        if self.room:
            return  # viewers send nothing else the floor cares about
        self.buf += data
        head, sep, _ = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.decode("latin-1").split("\r\n")
        key = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lines
                if ln.lower().startswith("sec-websocket-key")
            ),
            "",
        )
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        target = lines[0].split(" ")[1]
        self.room = parse_qs(urlsplit(target).query).get("room", ["r"])[0]
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: "
            + accept.encode()
            + b"\r\n\r\n"
            + text_frame(_joined(self.room))
        )
        asyncio.get_running_loop().create_task(self.rooms.join(self.room, self))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.room:
            self.rooms.leave(self.room, self)


def _floor_deliver(members: Any, data: bytes) -> None:
    frame = text_frame(data)
    write = os.write
    for m in members:
        try:  # noqa: SIM105 (a try is cheaper than suppress() per write)
            write(m.fd, frame)
        except OSError:
            pass  # full buffer or gone: the floor drops, as a lean server would


def _stock_deliver(members: Any, data: bytes) -> None:
    import websockets

    websockets.broadcast(members, data.decode())


async def _run(
    kind: str, host: str, port: int, nats_url: str, prefix: str, compression: str = "none"
) -> None:
    nc = await nats.connect(nats_url, pending_size=64 * 1024 * 1024)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    if kind in ("floor", "cfloor"):
        rooms = _Rooms(nc, prefix, _floor_deliver) if kind == "floor" else _FdRooms(nc, prefix)
        server = await loop.create_server(
            lambda: _FloorConn(rooms), host, port, reuse_port=True, backlog=4096
        )
        async with server:
            await stop
    else:
        from websockets.asyncio.server import ServerConnection, serve

        rooms = _Rooms(nc, prefix, _stock_deliver)

        async def handler(ws: ServerConnection) -> None:
            assert ws.request is not None
            room = parse_qs(urlsplit(ws.request.path).query).get("room", ["r"])[0]
            await rooms.join(room, ws)
            try:
                await ws.send(_joined(room).decode())
                await ws.wait_closed()
            finally:
                rooms.leave(room, ws)

        async with serve(
            handler,
            host,
            port,
            reuse_port=True,
            backlog=4096,
            compression="deflate" if compression == "deflate" else None,
            max_queue=16,
        ):
            await stop
    with contextlib.suppress(Exception):
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["floor", "cfloor", "stock"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--prefix", default="roomcast.room")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument(
        "--compression",
        choices=["none", "deflate"],
        default="none",
        help="stock only: websockets' per-connection permessage-deflate (its default)",
    )
    args = parser.parse_args()
    run = uvloop.run if args.loop == "uvloop" else asyncio.run
    run(_run(args.kind, args.host, args.port, args.nats, args.prefix, args.compression))


if __name__ == "__main__":
    main()
