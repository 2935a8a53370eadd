"""A real gateway subprocess on a real nats-server, and ways to talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
import pytest
from websockets.client import ClientProtocol
from websockets.extensions.base import ClientExtensionFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from roomcast.core.blob import encode_blob
from tests.support import Service, free_port, unique, wait_http_ok


@dataclass
class Gateway:
    service: Service
    port: int
    prefix: str
    nats_url: str
    stack: contextlib.ExitStack
    metrics_port: int = 0

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def viewer(self, *rooms: str, counts: bool = False, **kw: object) -> ClientConnection:
        """A viewer of `rooms`, once joined. Its `recv` skips viewer counts (they come whenever
        a room's count changes) unless `counts`."""
        query = "&".join(f"room={r}" for r in rooms)
        kw = {"compression": None, "max_size": None, **kw}
        if not counts:
            kw["create_connection"] = NoCounts
        ws = self.stack.enter_context(connect(f"{self.ws_url}?{query}", **kw))  # type: ignore[arg-type]
        for room in rooms:  # wait for the acks: the room is live once joined
            assert json.loads(ws.recv(timeout=10)) == {"type": "joined", "room": room}
        return ws

    def publish(self, room: str, *blobs: bytes) -> None:
        self.publish_many([(room, b) for b in blobs])

    def publish_many(self, blobs: list[tuple[str, bytes]]) -> None:
        """Publish (room, blob) pairs in one go: they reach the gateway in one read."""
        asyncio.run(publish(self.nats_url, [(f"{self.prefix}.{r}", b) for r, b in blobs]))

    def blob(self, room: str, offset: int, size: int = 0) -> bytes:
        return encode_blob(
            room, 0, [offset], [json.dumps({"o": offset, "pad": "x" * size}).encode()]
        )


class NoCounts(ClientConnection):
    """A client connection whose `recv` skips `count` messages (viewer counts)."""

    def recv(self, timeout: float | None = None, decode: bool | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            data = super().recv(left, decode)
            if not _is_count(data):
                return data


def _is_count(data: str | bytes) -> bool:
    head = data[:15]
    return head == '{"type":"count"' or head == b'{"type":"count"'


async def publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(url)
    try:
        for subject, payload in messages:
            await nc.publish(subject, payload)
        await nc.flush()
    finally:
        await nc.close()


@pytest.fixture
def gateway(nats_url: str, services: Callable[..., Service]) -> Callable[..., Gateway]:
    def start(
        *extra: str, nats: str | None = None, name: str = "gateway", open_files: int | None = None
    ) -> Gateway:
        port, metrics_port = free_port(), free_port()
        prefix = unique("gw").replace("-", "_")
        url = nats or nats_url
        svc = services(
            name,
            ["gateway", "--nats", url, "--port", str(port), "--subject-prefix", prefix,
             "--workers", "1", "--metrics-port", str(metrics_port), "--auth", "off", *extra],
            open_files=open_files,
        )  # fmt: skip
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", svc)  # NATS connected
        return Gateway(svc, port, prefix, url, stack, metrics_port)

    with contextlib.ExitStack() as stack:
        yield start


def join_message(room: str) -> str:
    return json.dumps({"type": "join", "room": room})


class RawViewer:
    """A WebSocket client on a plain blocking socket: sends any frame, reads frames as they come.

    Used where a real client library would refuse (invalid UTF-8, odd fragmentation) and to play
    a viewer that stops reading (a small receive buffer, then no recv at all).
    """

    def __init__(
        self,
        port: int,
        path: str = "/ws",
        rcvbuf: int | None = None,
        extensions: list[ClientExtensionFactory] | None = None,
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.answer = True  # send what the protocol wants to send (pongs, close replies)
        self.sock.connect(("127.0.0.1", port))
        self.proto = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port}{path}"), extensions=extensions, max_size=None
        )
        self.proto.send_request(self.proto.connect())
        self._flush()
        self.response: Response | None = None
        self._early: list[object] = []  # what came in the same read as the 101 (a "joined")
        deadline = time.monotonic() + 10
        while self.response is None and time.monotonic() < deadline:
            events = self._read()
            for i, event in enumerate(events):
                if isinstance(event, Response):
                    self.response = event
                    self._early = events[i + 1 :]
        assert self.response is not None and self.response.status_code == 101

    def _flush(self) -> None:
        for chunk in self.proto.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def _read(self) -> list[object]:
        if self._early:
            events, self._early = self._early, []
            return events
        data = self.sock.recv(65536)
        if data:
            self.proto.receive_data(data)
        else:
            self.proto.receive_eof()
        events: list[object] = list(self.proto.events_received())
        if self.answer:
            self._flush()
        else:
            self.proto.data_to_send()
        return events

    def send_frame(self, opcode: Opcode, data: bytes, fin: bool = True) -> None:
        self.sock.sendall(Frame(opcode, data, fin).serialize(mask=True))

    def frames(self, timeout: float = 10) -> list[Frame]:
        """Read until the connection closes or `timeout`; return the data frames received."""
        self.sock.settimeout(timeout)
        out: list[Frame] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proto.close_rcvd is None:
            try:
                events = self._read()
            except (TimeoutError, ConnectionError):
                break
            out += [e for e in events if isinstance(e, Frame)]
            if self.proto.close_rcvd is not None:
                break
            if self.proto.reader.eof:
                break
        return out

    def messages(self, count: int, timeout: float = 10) -> list[dict[str, object]]:
        """Read `count` text messages, not counting viewer counts (`count` messages come
        whenever a room's viewer count changes)."""
        got: list[dict[str, object]] = []
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while len(got) < count and time.monotonic() < deadline:
            for e in self._read():
                if isinstance(e, Frame) and e.opcode is Opcode.TEXT:
                    msg = json.loads(e.data)
                    if msg.get("type") != "count":
                        got.append(msg)
        return got

    @property
    def close_code(self) -> int | None:
        return None if self.proto.close_rcvd is None else self.proto.close_rcvd.code

    def close(self) -> None:
        self.sock.close()
