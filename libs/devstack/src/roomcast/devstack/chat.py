"""The demo page's chat box, on `roomcast dev`: `POST /chat {"room","text","user"}` on loopback
writes one chat event to Kafka, keyed by the room, as any producer would. The line then comes back
to the page the way every event does: Kafka, ingest, NATS, the gateway.

It is a convenience of the local stack, not a production producer: it listens on 127.0.0.1 only,
takes small bodies only, and answers browsers only from the gateway page's own origins (a JSON
POST from elsewhere needs a CORS preflight, which it refuses).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from roomcast.core.rooms import room_error

MAX_BODY = 2048
MAX_TEXT = 500
MAX_USER = 32

Send = Callable[[str, bytes], Awaitable[tuple[int, int]]]
"""(room, event bytes) -> (partition, offset) once Kafka has it."""


class BadChat(ValueError):
    pass


def chat_event(body: bytes) -> tuple[str, bytes]:
    """The room and the event to produce for a request body, or BadChat saying why not."""
    if len(body) > MAX_BODY:
        raise BadChat(f"body over {MAX_BODY} bytes")
    try:
        msg = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadChat("body is not JSON") from None
    if not isinstance(msg, dict):
        raise BadChat('body must be an object: {"room": ..., "text": ...}')
    room, text, user = msg.get("room"), msg.get("text"), msg.get("user", "you")
    if not isinstance(room, str) or (why := room_error(room)) is not None:
        raise BadChat(f"bad room: {why if isinstance(room, str) else 'missing'}")
    if room.startswith("_"):
        raise BadChat("rooms starting with '_' are reserved")
    if not isinstance(text, str) or not text.strip():
        raise BadChat("text is missing or empty")
    if len(text) > MAX_TEXT:
        raise BadChat(f"text over {MAX_TEXT} characters")
    if not isinstance(user, str) or not user.strip() or len(user) > MAX_USER:
        raise BadChat(f"user must be 1 to {MAX_USER} characters")
    if any(ord(c) < 32 for c in text + user):
        raise BadChat("control characters are not allowed")
    event = {"kind": "chat", "room": room, "user": user.strip(), "text": text.strip(),
             "ts": time.time()}  # fmt: skip
    return room, json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


class ChatEndpoint:
    """`POST /chat` on 127.0.0.1:`port` (0: any free port), served from a thread; each accepted
    line is handed to `send` on `loop` (the dev stack's event loop, where its producer lives)."""

    def __init__(
        self, port: int, send: Send, loop: asyncio.AbstractEventLoop, origins: Iterable[str]
    ) -> None:
        allowed = {o.rstrip("/").lower() for o in origins}
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self._cors()
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def _cors(self) -> None:
                origin = self.headers.get("Origin")
                if origin is not None and origin.rstrip("/").lower() in allowed:
                    self.send_header("Access-Control-Allow-Origin", origin)
                    self.send_header("Vary", "Origin")

            def _origin_ok(self) -> bool:
                origin = self.headers.get("Origin")  # none: curl and friends on this machine
                return origin is None or origin.rstrip("/").lower() in allowed

            def do_OPTIONS(self) -> None:  # the browser's CORS preflight
                if self.path != "/chat" or not self._origin_ok():
                    self._answer(403, {"error": "origin not allowed"})
                    return
                self.send_response(204)
                self._cors()
                self.send_header("Access-Control-Allow-Methods", "POST")
                self.send_header("Access-Control-Allow-Headers", "Content-Type")
                self.send_header("Access-Control-Max-Age", "600")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                if self.path != "/chat":
                    self._answer(404, {"error": "POST /chat"})
                    return
                if not self._origin_ok():
                    self._answer(403, {"error": "origin not allowed"})
                    return
                ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if ctype != "application/json":
                    self._answer(415, {"error": "Content-Type must be application/json"})
                    return
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    self._answer(411, {"error": "Content-Length required"})
                    return
                if not 0 < length <= MAX_BODY:
                    self._answer(413, {"error": f"body must be 1 to {MAX_BODY} bytes"})
                    return
                try:
                    room, event = chat_event(self.rfile.read(length))
                except BadChat as exc:
                    self._answer(400, {"error": str(exc)})
                    return
                future = asyncio.run_coroutine_threadsafe(endpoint.send(room, event), endpoint.loop)
                try:
                    partition, offset = future.result(timeout=10)
                except Exception as exc:
                    future.cancel()
                    self._answer(503, {"error": f"Kafka did not take it: {exc!r}"})
                    return
                self._answer(200, {"room": room, "partition": partition, "offset": offset})

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.send = send
        self.loop = loop
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/chat"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ChatEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def kafka_sender(producer: object, topic: str) -> Send:
    """`send` for an AIOKafkaProducer that is started (and stopped) by the caller."""
    from aiokafka import AIOKafkaProducer

    assert isinstance(producer, AIOKafkaProducer)

    async def send(room: str, event: bytes) -> tuple[int, int]:
        meta = await asyncio.wait_for(producer.send_and_wait(topic, event, key=room.encode()), 9)
        return meta.partition, meta.offset

    return send
