"""One viewer: an asyncio.Protocol driving websockets' sans-I/O ServerProtocol.

No task and no buffer of our own per viewer: bytes from the socket go into the ServerProtocol,
its events (handshake request, client messages, pings, close) are handled here, and what it wants
to send is written straight to the transport. Blob frames are written by the fan-out, bypassing
the ServerProtocol: they are pre-built once per blob for every viewer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

from websockets.datastructures import Headers
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from roomcast.core.errors import ProtocolError, RoomNameError
from roomcast.core.protocol import (
    CloseCode,
    Error,
    Join,
    Joined,
    Leave,
    Left,
    Ping,
    Pong,
    encode_server_message,
    parse_client_message,
)
from roomcast.core.rooms import check_room
from roomcast.gateway import metrics

if TYPE_CHECKING:
    from roomcast.gateway.engine import Gateway

_ws_logger = logging.getLogger("roomcast.gateway.ws")
_ws_logger.setLevel(logging.WARNING)  # websockets logs every open/close at INFO
_PONG = encode_server_message(Pong())
_OPEN = State.OPEN


class Viewer(asyncio.Protocol):
    """A viewer connection. Registered with the gateway's registry only while OPEN."""

    __slots__ = (
        "gw",
        "partial",
        "ping_sent_at",
        "proto",
        "rooms",
        "slow_since",
        "transport",
    )

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.transport: asyncio.Transport | None = None
        self.proto: ServerProtocol | None = None
        self.rooms: list[str] = []  # rooms this viewer is in (not counting _all)
        self.slow_since = 0.0  # > 0 while the write buffer is over the high-water mark
        self.ping_sent_at = 0.0  # > 0 while a WebSocket ping awaits its pong
        self.partial: bytes | None = None  # a fragmented client message being reassembled

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        t.set_write_buffer_limits(high=self.gw.cfg.write_buffer_high)
        self.proto = ServerProtocol(max_size=self.gw.cfg.max_message_bytes, logger=_ws_logger)

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        if proto is None:
            return
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif event.opcode is Opcode.TEXT:
                if event.fin:
                    self._client_message(event.data)
                else:
                    self.partial = event.data
            elif event.opcode is Opcode.CONT and self.partial is not None:
                # The protocol checks the order of fragments and their total size (max_size).
                self.partial += event.data
                if event.fin:
                    data, self.partial = self.partial, None
                    self._client_message(data)
            elif event.opcode is Opcode.PONG:
                self.ping_sent_at = 0.0
            elif event.opcode is Opcode.BINARY:
                self.partial = None
                self.fail(CloseCode.BAD_MESSAGE, "binary messages are not part of the protocol")
        self._flush_proto()

    def eof_received(self) -> bool | None:
        if self.proto is not None:
            self.proto.receive_eof()
            self._flush_proto()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.gw.viewer_gone(self)
        self.proto = None
        self.transport = None

    def pause_writing(self) -> None:
        self.slow_since = time.monotonic()
        self.gw.viewer_slow(self)

    def resume_writing(self) -> None:
        self.slow_since = 0.0
        self.gw.viewer_caught_up(self)

    # ---- handshake ----------------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        proto = self.proto
        assert proto is not None
        url = urllib.parse.urlsplit(request.path)
        path = url.path
        gw = self.gw
        if path != "/ws":
            status, body, ctype = gw.http_endpoint(path)
            self._respond(status, body, ctype)
            return
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        rooms = query.get("room", [])
        refusal = gw.admission()
        if refusal is not None:
            metrics.REJECTED.labels(refusal).inc()
            response = proto.reject(HTTPStatus.SERVICE_UNAVAILABLE, f"{refusal}; retry later\n")
            response.headers["Retry-After"] = "1"
            proto.send_response(response)
            return
        try:
            for room in rooms:
                check_room(room)
        except RoomNameError as exc:
            metrics.REJECTED.labels("bad_room").inc()
            self._respond(HTTPStatus.BAD_REQUEST, f"bad room: {exc}\n".encode())
            return
        if len(set(rooms)) > gw.cfg.max_rooms_per_conn:
            metrics.REJECTED.labels("too_many_rooms").inc()
            self._respond(
                HTTPStatus.BAD_REQUEST,
                f"{len(set(rooms))} rooms; the limit is {gw.cfg.max_rooms_per_conn}\n".encode(),
            )
            return
        response = proto.accept(request)
        response.headers["X-Roomcast-Worker"] = str(gw.worker_id)
        proto.send_response(response)
        # websockets' parser keeps the Request alive for the connection's lifetime; its
        # headers are ~1.7 KiB per idle viewer that nothing reads again.
        request.headers.clear()
        if response.status_code != 101:
            metrics.REJECTED.labels("bad_handshake").inc()
            return
        gw.viewer_open(self)
        for room in dict.fromkeys(rooms):
            gw.join(self, room)

    def _respond(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        """A plain HTTP response (health, metrics, rejects), then the connection closes."""
        proto = self.proto
        assert proto is not None
        headers = Headers(
            [
                ("Connection", "close"),
                ("Content-Length", str(len(body))),
                ("Content-Type", content_type),
                ("X-Roomcast-Worker", str(self.gw.worker_id)),  # /metrics is per worker
            ]
        )
        proto.send_response(Response(status, HTTPStatus(status).phrase, headers, body))

    # ---- client messages ----------------------------------------------------------------------

    def _client_message(self, data: bytes) -> None:
        try:
            data.decode()  # the sans-I/O protocol leaves UTF-8 checks to us; messages are small
        except UnicodeDecodeError:
            self.fail(CloseCode.INVALID_UTF8, "text message is not valid UTF-8")
            return
        try:
            msg = parse_client_message(data)
        except ProtocolError as exc:
            self.send(encode_server_message(Error(exc.code, str(exc))))
            self.fail(CloseCode.BAD_MESSAGE, exc.code)
            return
        if isinstance(msg, Join):
            if msg.room in self.rooms:
                self.send(encode_server_message(Joined(msg.room)))
            elif len(self.rooms) >= self.gw.cfg.max_rooms_per_conn:
                self.send(encode_server_message(Error(
                    "too_many_rooms", f"at most {self.gw.cfg.max_rooms_per_conn} rooms"
                    " per connection; leave one first")))  # fmt: skip
                self.fail(CloseCode.TOO_MANY_ROOMS, "too many rooms")
            else:
                self.gw.join(self, msg.room)
        elif isinstance(msg, Leave):
            if msg.room in self.rooms:
                self.gw.leave(self, msg.room)
            self.send(encode_server_message(Left(msg.room)))
        elif isinstance(msg, Ping):
            self.send(_PONG)

    # ---- sending ------------------------------------------------------------------------------

    def send(self, message: bytes) -> None:
        """Send one protocol message (acks, errors) through the ServerProtocol."""
        proto = self.proto
        if proto is not None and proto.state is _OPEN:
            proto.send_text(message)
            self._flush_proto()

    def ping(self, now: float) -> None:
        proto = self.proto
        if proto is not None and proto.state is _OPEN:
            self.ping_sent_at = now
            proto.send_ping(b"")
            self._flush_proto()

    def fail(self, code: int, reason: str) -> None:
        """Close with `code` (sends the close frame, then expects the TCP close)."""
        proto = self.proto
        if proto is None or proto.state is not _OPEN:
            return
        metrics.CLOSES.labels(str(code)).inc()
        proto.fail(code, reason)
        self._flush_proto()

    def close(self, code: int, reason: str) -> None:
        """A clean close from our side (drain, slow viewer): close frame, then TCP close."""
        proto = self.proto
        if proto is None or proto.state is not _OPEN:
            return
        metrics.CLOSES.labels(str(code)).inc()
        proto.send_close(code, reason)
        self._flush_proto()

    def _flush_proto(self) -> None:
        proto, transport = self.proto, self.transport
        if proto is None or transport is None:
            return
        for chunk in proto.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()
        if proto.state is not _OPEN:
            self.gw.viewer_closing(self)
            if proto.close_expected():
                self.gw.expect_close(self)
