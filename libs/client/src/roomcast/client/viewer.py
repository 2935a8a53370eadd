"""A viewer connection that survives gateway restarts: reconnect, rejoin, dedup."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from roomcast.core.blob import Blob, decode_blob
from roomcast.core.errors import RoomcastError
from roomcast.core.positions import Deduper
from roomcast.core.protocol import CloseCode, message_type
from roomcast.core.rooms import check_room

log = logging.getLogger("roomcast.client")


class ViewerClosed(RoomcastError):
    """The gateway closed the connection with a code that says not to come back."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"gateway closed the connection: code {code} {reason!r}")
        self.code = code
        self.reason = reason


State = Literal["connecting", "retrying", "connected", "reconnected", "lost"]


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """What the connection is doing, for whoever shows it to a person (`roomcast watch`).

    `state` is "connecting" (an attempt starts), "retrying" (it failed: `error`, next try in
    `retry_in_s`), "connected" (first connection), "reconnected" (again, after a loss) or
    "lost" (the connection dropped or the gateway closed it resumably: `error`; reconnecting).
    """

    state: State
    url: str
    error: str = ""
    retry_in_s: float = 0.0


def describe_connect_error(exc: BaseException) -> str:
    """A failed connection attempt in a few words: "connection refused", "HTTP 503", ..."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, InvalidStatus):
        return f"gateway answered HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class ReceivedBlob:
    """A blob as received, with the events not seen before (`fresh`) as (offset, JSON bytes)."""

    raw: bytes
    blob: Blob
    fresh: list[tuple[int, bytes]]


def _resumable(code: int | None) -> bool:
    if code is None:
        return True  # connection lost without a close frame
    try:
        return CloseCode(code).resumable
    except ValueError:
        return 1000 < code < 4000 and code not in (1002, 1003, 1007, 1008, 1009, 1010)


class Viewer:
    """Joins rooms on a roomcast gateway and yields blobs, reconnecting as needed."""

    def __init__(
        self,
        url: str,
        rooms: Iterable[str],
        *,
        reconnect: bool = True,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 15.0,
        open_timeout_s: float = 10.0,
        on_joined: Callable[[str], None] | None = None,
        on_status: Callable[[ConnectionStatus], None] | None = None,
        token: str = "",
    ) -> None:
        self.rooms = [check_room(r) for r in rooms]
        self.url = url
        self.reconnect = reconnect
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self.on_joined = on_joined
        self.on_status = on_status
        self.token = token  # a viewer token (gateway --auth jwt), sent in the URL
        self.joined: set[str] = set()  # rooms the gateway confirmed on this connection
        self.dedup = Deduper()
        self.connects = 0
        self._ws: ClientConnection | None = None
        self._closed = False

    def _room_url(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        query = urllib.parse.parse_qsl(parts.query) + [("room", r) for r in self.rooms]
        if self.token:
            query.append(("token", self.token))
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    def _status(self, state: State, error: str = "", retry_in_s: float = 0.0) -> None:
        if self.on_status is not None:
            self.on_status(ConnectionStatus(state, self.url, error, retry_in_s))

    async def _connect(self) -> ClientConnection:
        delay = self.backoff_initial_s
        self._status("connecting")
        while True:
            try:
                ws = await connect(
                    self._room_url(),
                    open_timeout=self.open_timeout_s,
                    compression=None,
                    max_size=None,
                )
                self.connects += 1
                self._status("connected" if self.connects == 1 else "reconnected")
                return ws
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if isinstance(exc, InvalidStatus) and exc.response.status_code in (400, 401, 403):
                    raise  # the gateway said no for good: a bad room name, say
                if not self.reconnect:
                    raise
                # Full jitter: a gateway restart must not bring every viewer back at once.
                wait = random.uniform(0, delay)
                log.info("connect to %s failed (%s); retrying in %.2fs", self.url, exc, wait)
                self._status("retrying", describe_connect_error(exc), wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.backoff_max_s)

    async def __aenter__(self) -> Viewer:
        self._ws = await self._connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()

    async def send(self, message: bytes) -> None:
        """Send a raw protocol message (join/leave/ping JSON) on the current connection."""
        assert self._ws is not None, "use `async with Viewer(...)` first"
        await self._ws.send(message.decode())

    async def __aiter__(self) -> AsyncIterator[ReceivedBlob]:
        if self._ws is None:
            self._ws = await self._connect()
        while not self._closed:
            try:
                async for data in self._ws:
                    raw = data.encode() if isinstance(data, str) else data
                    kind = message_type(raw)
                    if kind == "joined":
                        room = msgspec.json.decode(raw)["room"]
                        self.joined.add(room)
                        if self.on_joined is not None:
                            self.on_joined(room)
                    if kind != "blob":
                        continue
                    blob = decode_blob(raw)
                    yield ReceivedBlob(raw, blob, self.dedup.fresh(blob))
            except ConnectionClosed:
                pass
            except msgspec.DecodeError as exc:
                raise RoomcastError(f"not a roomcast message from the gateway: {exc}") from None
            code, reason = self._close_info(self._ws)
            if self._closed:
                return
            if not (self.reconnect and _resumable(code)):
                raise ViewerClosed(code, reason)
            log.info("connection closed (%s %s); reconnecting", code, reason)
            self._status(
                "lost",
                "no close frame" if code is None else f"gateway closed it: {code} {reason}".strip(),
            )
            self.joined.clear()
            self._ws = await self._connect()

    @staticmethod
    def _close_info(ws: ClientConnection) -> tuple[int | None, str]:
        """The close code the gateway sent (None: the connection was lost without one)."""
        rcvd = ws.protocol.close_rcvd
        return (None, "") if rcvd is None else (rcvd.code, rcvd.reason)
