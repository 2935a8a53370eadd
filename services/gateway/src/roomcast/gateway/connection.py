"""One viewer connection: an asyncio.Protocol driving websockets' sans-I/O ServerProtocol.

No task and no buffer of our own per viewer: bytes from the socket go into the ServerProtocol,
its events (handshake request, client messages, pings, close) are handled here, and what it wants
to send is written straight to the transport. Blob frames are written by the hub's fan-out,
bypassing the ServerProtocol: they are pre-built once per blob for every viewer.

The viewer's state (`hub.ViewerState`) is moved only by the hub. This shell acts on what the
client sends only while the viewer is OPEN (or, for the upgrade request, HANDSHAKING): once a
connection has failed or begun closing, nothing it sends is acted on, even what arrived in the same
read as the violation.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from roomcast.core.errors import ProtocolError, RoomNameError
from roomcast.core.protocol import (
    Auth,
    Authorized,
    CloseCode,
    Error,
    Join,
    Leave,
    Ping,
    Pong,
    Position,
    Refresh,
    encode_server_message,
    parse_client_message,
    parse_since_param,
)
from roomcast.core.rooms import check_room
from roomcast.gateway import metrics, static
from roomcast.gateway.auth import AuthError, Grant, allowed, origin_listed
from roomcast.gateway.hub import HANDSHAKING, OPEN, Hub, PendingJoin, ViewerState

if TYPE_CHECKING:
    from roomcast.gateway.engine import Gateway

_ws_logger = logging.getLogger("roomcast.gateway.ws")
_ws_logger.setLevel(logging.WARNING)  # websockets logs every open/close at INFO
_PONG = encode_server_message(Pong())
_WS_OPEN = State.OPEN
SUBPROTOCOL = Subprotocol("roomcast")
TOKEN_SUBPROTOCOL = "roomcast.token."  # Sec-WebSocket-Protocol: roomcast, roomcast.token.<JWT>


class _ServerProtocol(ServerProtocol):
    def select_subprotocol(self, subprotocols: object) -> Subprotocol | None:
        # "roomcast" when offered (a browser sending its token as a subprotocol must get one
        # of its offers back), else none: clients that offer nothing are as welcome as before.
        return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None  # type: ignore[operator]


class Viewer(asyncio.Protocol):
    """A viewer connection: the I/O shell around one ServerProtocol and its hub state."""

    __slots__ = (
        "deflate",
        "exp",
        "fd",
        "grant",
        "gw",
        "lagging",
        "partial",
        "paused",
        "ping_sent_at",
        "proto",
        "queued",
        "replies",
        "rooms",
        "slow_since",
        "state",
        "transport",
        "waiting",
    )

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.state = ViewerState.HANDSHAKING
        self.transport: asyncio.Transport | None = None
        self.proto: ServerProtocol | None = None
        self.rooms: list[str] = []  # rooms this viewer is in (not counting _all)
        self.replies: list[bytes | PendingJoin] | None = None  # held behind a pending join
        self.slow_since = 0.0  # > 0 from going over the high-water mark until caught up
        self.paused = False  # the write buffer is over the high-water mark now
        self.lagging = False  # off the live fan-out, caught up once the buffer drains
        self.deflate = False  # negotiated permessage-deflate: gets compressed blob frames
        self.fd = -1  # the socket's descriptor, for the hub's direct sends while OPEN
        self.queued = False  # the transport holds unsent bytes (the hub tracks it)
        self.ping_sent_at = 0.0  # > 0 while a WebSocket ping awaits its pong
        self.partial: bytes | None = None  # a fragmented client message being reassembled
        self.grant: Grant | None = None  # what its token allows (--auth jwt)
        self.exp = 0.0  # when that token expires (unix seconds)
        # URL rooms (and their `since`), joined once `auth` comes
        self.waiting: tuple[tuple[str, Position | None], ...] | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        t.set_write_buffer_limits(high=self.gw.cfg.write_buffer_high)
        self.proto = _ServerProtocol(
            extensions=self.gw.extensions,
            max_size=self.gw.cfg.max_message_bytes,
            logger=_ws_logger,
        )
        self.gw.connected(self)

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        if proto is None:
            return
        if self.state is HANDSHAKING:
            self.gw.hub.handshake_activity(self, time.monotonic())
        proto.receive_data(data)
        for event in proto.events_received():
            state = self.state
            if state is OPEN:
                if isinstance(event, Frame):
                    self._frame(event)
            elif state is HANDSHAKING and isinstance(event, Request) and not proto.eof_sent:
                # eof_sent: frames sent along with the request already failed the protocol
                # (it parses them before any upgrade): no upgrade for this connection.
                self._handshake(event)
            # else: failed or closing. The protocol still completes the close handshake, but
            # nothing the client sent is acted on, not even what came in the same read.
        self._flush_proto()

    def _frame(self, event: Frame) -> None:
        opcode = event.opcode
        if opcode is Opcode.TEXT:
            if event.fin:
                self._client_message(bytes(event.data))
            else:
                self.partial = bytes(event.data)
        elif opcode is Opcode.CONT and self.partial is not None:
            # The protocol checks the order of fragments and their total size (max_size).
            self.partial += event.data
            if event.fin:
                data, self.partial = self.partial, None
                self._client_message(data)
        elif opcode is Opcode.PONG:
            self.ping_sent_at = 0.0
        elif opcode is Opcode.BINARY:
            self.partial = None
            self.fail(CloseCode.BAD_MESSAGE, "binary messages are not part of the protocol")

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
        self.gw.hub.slow_down(self, time.monotonic())

    def resume_writing(self) -> None:
        self.gw.caught_up(self)

    # ---- handshake ----------------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        proto = self.proto
        assert proto is not None
        url = urllib.parse.urlsplit(request.path)
        path = url.path
        gw = self.gw
        if path != "/ws":
            status, body, ctype = gw.http_endpoint(path, url.query)
            extra = []
            if path == "/client.js" and status == 200:
                extra = static.cors_headers(request.headers.get("Origin"), gw.origins)
            self._respond(status, body, ctype, extra)
            return
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        rooms = query.get("room", [])
        headers = request.headers
        if gw.origins:
            origin = headers.get("Origin")
            if origin is not None and not origin_listed(origin, gw.origins):
                metrics.REJECTED.labels("origin").inc()
                self._refuse(HTTPStatus.FORBIDDEN, f"origin {origin[:100]!r} is not allowed\n")
                return
        refusal = gw.admission()
        if refusal is not None:
            metrics.REJECTED.labels(refusal).inc()
            response = proto.reject(HTTPStatus.SERVICE_UNAVAILABLE, f"{refusal}; retry later\n")
            response.headers["Retry-After"] = "1"
            proto.send_response(response)
            return
        if gw.cfg.max_connects_per_ip_per_s:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            ip = gw.addresses.client_ip(
                str(peer[0]) if peer else "", headers.get_all("X-Forwarded-For")
            )
            if not gw.ip_admission(ip):
                metrics.REJECTED.labels("ip_connect_rate").inc()
                self._refuse(HTTPStatus.TOO_MANY_REQUESTS, "too many connections; retry later\n")
                return
        try:
            for room in rooms:
                check_room(room)
        except RoomNameError as exc:
            metrics.REJECTED.labels("bad_room").inc()
            self._respond(HTTPStatus.BAD_REQUEST, f"bad room: {exc}\n".encode())
            return
        since: dict[str, Position] = {}
        try:
            for value in query.get("since", []):
                room, position = parse_since_param(value)
                if room not in rooms:
                    raise ProtocolError(
                        "bad_message", f"since for {room!r}, not a room= of the URL"
                    )
                since[room] = position
        except ProtocolError as exc:
            metrics.REJECTED.labels("bad_since").inc()
            self._respond(HTTPStatus.BAD_REQUEST, f"bad since: {exc}\n".encode())
            return
        if len(set(rooms)) > gw.cfg.max_rooms_per_conn:
            metrics.REJECTED.labels("too_many_rooms").inc()
            self._respond(
                HTTPStatus.BAD_REQUEST,
                f"{len(set(rooms))} rooms; the limit is {gw.cfg.max_rooms_per_conn}\n".encode(),
            )
            return
        token = ""
        if gw.auth is not None:
            token = query.get("token", [""])[-1]
            for value in headers.get_all("Sec-WebSocket-Protocol"):
                for offer in value.split(","):
                    if offer.strip().startswith(TOKEN_SUBPROTOCOL):
                        token = offer.strip()[len(TOKEN_SUBPROTOCOL) :]
            if token:
                try:
                    self.grant, self.exp = gw.auth.verify(token)
                except AuthError as exc:
                    metrics.REJECTED.labels(exc.code).inc()
                    self._refuse(HTTPStatus.UNAUTHORIZED, f"{exc.code}: {exc}\n")
                    return
                refused = [r for r in rooms if not allowed(self.grant, r)]
                if refused:
                    metrics.REJECTED.labels("forbidden").inc()
                    self.grant = None
                    self._refuse(
                        HTTPStatus.FORBIDDEN, f"forbidden: the token does not grant {refused[0]}\n"
                    )
                    return
        response = proto.accept(request)
        response.headers["X-Roomcast-Worker"] = str(gw.worker_id)
        proto.send_response(response)
        # websockets' parser keeps the Request alive for the connection's lifetime; its
        # headers are ~1.7 KiB per idle viewer that nothing reads again.
        request.headers.clear()
        request.path = "/ws"  # nor the query string (rooms, and a token of ~200 bytes)
        if response.status_code != 101:
            metrics.REJECTED.labels("bad_handshake").inc()
            return
        self.deflate = bool(proto.extensions)  # permessage-deflate is the only one offered
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        self.fd = sock.fileno() if sock is not None else -1
        gw.viewer_open(self)
        if gw.auth is not None:
            if self.grant is None:  # the token is to come in an `auth` message
                self.waiting = tuple((r, since.get(r)) for r in dict.fromkeys(rooms))
                gw.await_auth(self)
                return
            gw.authorized(self, 0.0)
        for room in dict.fromkeys(rooms):
            gw.join(self, room, since.get(room))

    def _refuse(self, status: HTTPStatus, text: str) -> None:
        """Refuse the upgrade (403, 401, 429...); the connection closes after the answer."""
        proto = self.proto
        assert proto is not None
        response = proto.reject(status, text)
        response.headers["X-Roomcast-Worker"] = str(self.gw.worker_id)
        if status is HTTPStatus.TOO_MANY_REQUESTS:
            response.headers["Retry-After"] = "1"
        proto.send_response(response)

    def _respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        """A plain HTTP response (health, metrics, rejects), then the connection closes."""
        proto = self.proto
        assert proto is not None
        headers = Headers(
            [
                ("Connection", "close"),
                ("Content-Length", str(len(body))),
                ("Content-Type", content_type),
                ("X-Roomcast-Worker", str(self.gw.worker_id)),
                *(extra or ()),
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
        gw = self.gw
        if Hub.flooding(self):
            self.fail(CloseCode.BAD_MESSAGE, "too many requests awaiting a reply")
            return
        if gw.auth is not None:
            if isinstance(msg, Auth | Refresh):
                self._authenticate(msg.token)
                return
            if self.grant is None:
                self.send_error("unauthorized", "the first message must be auth")
                self.fail(CloseCode.UNAUTHORIZED, "not authorized")
                return
            if isinstance(msg, Join) and not allowed(self.grant, msg.room):
                gw.hub.reply(self, encode_server_message(Error(
                    "forbidden", f"the token does not grant room {msg.room}"
                )))  # fmt: skip
                return
        elif isinstance(msg, Auth | Refresh):  # --auth off: any token will do
            gw.hub.reply(self, encode_server_message(Authorized(0)))
            return
        if isinstance(msg, Join):
            if msg.room not in self.rooms and len(self.rooms) >= gw.cfg.max_rooms_per_conn:
                limit = gw.cfg.max_rooms_per_conn
                self.send(encode_server_message(Error(
                    "too_many_rooms", f"at most {limit} rooms per connection; leave one first"
                )))  # fmt: skip
                self.fail(CloseCode.TOO_MANY_ROOMS, "too many rooms")
            else:
                gw.join(self, msg.room, msg.position)
        elif isinstance(msg, Leave):
            gw.leave(self, msg.room)
        elif isinstance(msg, Ping):
            gw.hub.reply(self, _PONG)

    def _authenticate(self, token: str) -> None:
        """An `auth` (first) or `refresh` message: a new grant, or an error."""
        gw = self.gw
        assert gw.auth is not None
        try:
            grant, exp = gw.auth.verify(token)
        except AuthError as exc:
            if self.grant is None:
                metrics.REJECTED.labels(exc.code).inc()
                self.send_error(exc.code, str(exc))
                self.fail(CloseCode.UNAUTHORIZED, exc.code)
            else:  # a refused refresh: the current grant stands until it expires
                gw.hub.reply(self, encode_server_message(Error(exc.code, str(exc))))
            return
        old_exp = self.exp
        self.grant, self.exp = grant, exp
        gw.authorized(self, old_exp)
        gw.hub.reply(self, encode_server_message(Authorized(int(exp))))
        waiting, self.waiting = self.waiting, None
        for room, position in waiting or ():
            if allowed(grant, room):
                gw.join(self, room, position)
            else:
                gw.hub.reply(self, encode_server_message(Error(
                    "forbidden", f"the token does not grant room {room}"
                )))  # fmt: skip
        for room in [r for r in self.rooms if not allowed(grant, r)]:
            gw.leave(self, room)  # the new grant no longer covers it: `left`

    # ---- sending ------------------------------------------------------------------------------

    def send_error(self, code: str, message: str) -> None:
        self.send(encode_server_message(Error(code, message)))

    def send(self, message: bytes) -> None:
        """Send one protocol message (acks, errors) through the ServerProtocol."""
        proto = self.proto
        if proto is not None and proto.state is _WS_OPEN:
            proto.send_text(message)
            self._flush_proto()

    def ping(self, now: float) -> None:
        proto = self.proto
        if proto is not None and proto.state is _WS_OPEN:
            self.ping_sent_at = now
            proto.send_ping(b"")
            self._flush_proto()

    def fail(self, code: int, reason: str) -> None:
        """Close with `code` (sends the close frame, then expects the TCP close)."""
        proto = self.proto
        if proto is None or proto.state is not _WS_OPEN:
            return
        metrics.CLOSES.labels(str(code)).inc()
        proto.fail(code, reason)
        self._flush_proto()

    def close(self, code: int, reason: str) -> None:
        """A clean close from our side (drain, slow viewer): close frame, then TCP close."""
        proto = self.proto
        if proto is None or proto.state is not _WS_OPEN:
            return
        metrics.CLOSES.labels(str(code)).inc()
        proto.send_close(code, reason)
        self._flush_proto()

    def abort(self) -> None:
        """Drop the TCP connection now (deadline passed, or a write raised)."""
        if self.transport is not None:
            self.transport.abort()

    def _flush_proto(self) -> None:
        proto, transport = self.proto, self.transport
        if proto is None or transport is None:
            return
        for chunk in proto.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()
        state = self.state
        hub = self.gw.hub
        if hub.sender is not None and state is OPEN and transport.get_write_buffer_size():
            hub.mark_queued(self)  # no direct send may overtake what this left queued
        if state is OPEN:
            if proto.state is not _WS_OPEN:  # failed, or began its close handshake
                self.gw.viewer_closing(self)
        elif state is HANDSHAKING and proto.eof_sent:  # an HTTP answer or a refused upgrade
            self.gw.viewer_closing(self)
