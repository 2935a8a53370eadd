"""`subscribe()`: a room feed that survives lost connections, resumes, and never repeats an event.

    from roomcast.client import subscribe

    async with subscribe("ws://127.0.0.1:8080/ws", ["lobby"]) as sub:
        async for blob in sub:              # roomcast.core.blob.Blob, events deduplicated
            for event in blob.decoded_events():
                ...

What it does for the app (the contract is docs/protocol.md, "Positions and duplicates", "Resume"):

- yields each blob with only the events not seen before: a blob whose `seq` is at or below the
  room's position (same epoch) is dropped, and so is every event at or below the highest Kafka
  offset seen for its (room, partition);
- when the connection is lost, or the gateway closes it with a resumable code (1011, 1012, 4008,
  ...), it reconnects after a delay drawn with exponential backoff and full jitter (uniform in
  [0, min(cap, base * 2**n)], n reset once a connection has been live for `healthy_after_s`) and
  resumes every room it has a position for (`since=ROOM:EPOCH:SEQ` in the URL);
- 4001/4002 end the iteration with `TokenRejected` (get a fresh token, then subscribe again with
  `since=old.positions`); other codes that say not to come back end it with `ViewerClosed`; an
  HTTP 400/401/403 at the handshake raises websockets' `InvalidStatus` at once.

What it exposes, as attributes of the object `subscribe()` returns:

    positions   {room: "EPOCH:SEQ"}  the last blob taken per room (what a resume hands back)
    recovered   {room: True | False | None}  from the last `joined` (None: joined without since)
    counts      {room: viewers}  from `count` messages
    resets      how many times a room lost continuity (`recovered: false`, or `reset`)
    reconnects  how many times it connected again after a loss
    status      "connecting", "recovering", "live" or "closed"
    worker      the gateway worker serving it (`X-Roomcast-Worker`), "" between connections

and two hooks: `on_status(Status)` on every state change, and `on_reset(room, oldest)` when a room
lost continuity, so the app knows to reload that room's state from its own source of truth.

States: "connecting" (an attempt is due: `Status.retry_in_s` is the wait before it, `error` why
the previous attempt or connection ended, `lost` whether a connection that was up was lost),
"recovering" (connected again after a loss, or with `since`: rooms are being joined and
resumed), "live" (every room joined), "closed" (the iteration is over: `aclose()`, or `error`
says why).

`messages=True` also yields the other server messages as roomcast.core.protocol structs
(`Joined`, `Reset`, `Count`, `Left`, `Pong`, `Authorized`, `Error`), in arrival order.

`aclose()` (or leaving `async with`) ends the iteration and closes the socket, whichever task is
iterating. `reconnect()` drops the current connection and resumes at once, as after a network
loss (tests and `roomcast bench e2e --churn` use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, cast, overload

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from roomcast.client.backoff import Backoff
from roomcast.client.errors import closed_for_good, describe_connect_error, resumable
from roomcast.client.tracker import RoomTracker
from roomcast.core.blob import Blob, decode_blob
from roomcast.core.errors import RoomcastError
from roomcast.core.protocol import (
    Count,
    Error,
    Joined,
    Position,
    Reset,
    ServerMessage,
    decode_server_message,
    message_type,
)
from roomcast.core.rooms import check_room

log = logging.getLogger("roomcast.client")

State = Literal["connecting", "recovering", "live", "closed"]
Item = Blob | ServerMessage
T = TypeVar("T", bound=Item)

_SERVER_KINDS = frozenset({"joined", "left", "reset", "count", "pong", "authorized", "error"})
_REFUSED_FOR_GOOD = (400, 401, 403)  # a bad room, a bad token, a room not granted


@dataclass(frozen=True, slots=True)
class Status:
    """A state change of a subscription (see the module docstring for the states)."""

    state: State
    url: str
    error: str = ""  # why the previous attempt or connection ended, or why it is closed
    retry_in_s: float = 0.0  # "connecting": the wait before this attempt
    lost: bool = False  # "connecting": a connection that was up has been lost
    worker: str = ""  # "recovering" / "live": the gateway worker serving the connection


class Subscription(Generic[T]):
    """An async iterator of deduplicated blobs (and, asked, other messages); see the module."""

    def __init__(
        self,
        url: str,
        rooms: Iterable[str],
        *,
        token: str | None = None,
        since: Mapping[str, str | Position] | None = None,
        messages: bool = False,
        on_status: Callable[[Status], None] | None = None,
        on_reset: Callable[[str, str | None], None] | None = None,
        reconnect: bool = True,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 15.0,
        healthy_after_s: float = 1.0,
        open_timeout_s: float = 10.0,
        compression: Literal["deflate"] | None = "deflate",
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.compression = compression
        self.rooms = [check_room(r) for r in rooms]
        self.token = token
        self.messages = messages
        self.on_status = on_status
        self.on_reset = on_reset
        self.reconnect_on_loss = reconnect
        self.healthy_after_s = healthy_after_s
        self.open_timeout_s = open_timeout_s
        self.backoff = Backoff(backoff_base_s, backoff_cap_s, rng)
        self.tracker = RoomTracker(since)
        self.reconnects = 0
        self.status: State = "connecting"
        self.worker = ""
        self._ws: ClientConnection | None = None
        self._connected_once = False
        self._closing = asyncio.Event()  # set by aclose(): every wait below gives way to it
        self._drop = False  # set by reconnect(): the loss was asked for, come back at once
        self._gen: AsyncGenerator[Item, None] | None = None
        self._iterating = False  # a task is inside __anext__
        self._live_since: float | None = None  # when the current connection went live
        self._last_error = ""  # the last `error` message: it explains the close that follows
        self._resuming = False  # this connection resumes rooms, or follows a loss

    # ---- what the app reads ---------------------------------------------------------------

    @property
    def positions(self) -> dict[str, str]:
        """{room: "EPOCH:SEQ"}: the last blob taken per room; pass it as `since` to resume."""
        return self.tracker.position_strings()

    @property
    def recovered(self) -> dict[str, bool | None]:
        return self.tracker.recovered

    @property
    def counts(self) -> dict[str, int]:
        return self.tracker.counts

    @property
    def resets(self) -> int:
        return self.tracker.resets

    @property
    def connection(self) -> ClientConnection | None:
        """The current websockets connection (None between connections), for diagnostics."""
        return self._ws

    # ---- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Subscription[T]:
        """Connect now (retrying as configured), so a refusal for good raises here."""
        if self._ws is None and not self._closing.is_set():
            self._ws = await self._open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        if self._gen is None:
            if self._closing.is_set():
                raise StopAsyncIteration
            self._gen = self._run()
        self._iterating = True
        try:
            return cast(T, await self._gen.__anext__())
        finally:
            self._iterating = False

    async def aclose(self) -> None:
        """End the iteration and close the socket (from any task; waits for the close)."""
        if self._closing.is_set() and self.status == "closed":
            return
        self._closing.set()
        ws = self._ws
        if ws is not None:
            await ws.close()
        gen = self._gen
        if gen is not None and not self._iterating:
            await gen.aclose()  # suspended at a yield, or never started: finish it here
        elif gen is None:
            self._ws = None
            self._set_status("closed")

    async def reconnect(self) -> None:
        """Drop the current connection and resume at once, as after a network loss."""
        ws = self._ws
        if ws is not None and not self._closing.is_set():
            self._drop = True
            ws.transport.abort()
            await ws.wait_closed()

    async def send(self, message: bytes | str) -> None:
        """Send a protocol message (join/leave/ping/refresh JSON) on the current connection."""
        if self._ws is None:
            raise RoomcastError("not connected: iterate the subscription (or `async with` it)")
        await self._ws.send(message if isinstance(message, str) else message.decode())

    # ---- the loop -----------------------------------------------------------------------------

    def _set_status(self, state: State, **kw: Any) -> None:
        self.status = state
        if self.on_status is not None:
            self.on_status(Status(state, self.url, **kw))

    def _connect_url(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        query = urllib.parse.parse_qsl(parts.query) + [("room", r) for r in self.rooms]
        query += [("since", s) for s in self.tracker.since(self.rooms)]
        if self.token:
            query.append(("token", self.token))
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    async def _until_closing(self, aw: Awaitable[Any]) -> tuple[bool, Any]:
        """Await `aw` unless aclose() comes first: (True, its result) or (False, None)."""
        task = asyncio.ensure_future(aw)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({task, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if not task.done() or task.cancelled():
            return False, None
        return True, task.result()  # raises what the attempt raised

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless aclose() comes first; False if it did."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)
        return not self._closing.is_set()

    async def _attempt(self) -> ClientConnection:
        return await connect(
            self._connect_url(),
            open_timeout=self.open_timeout_s,
            max_size=None,
            close_timeout=5,
            compression=self.compression,
        )

    async def _open(
        self, *, error: str = "", lost: bool = False, wait: float = 0.0
    ) -> ClientConnection | None:
        """Connect, retrying with backoff; None if aclose() came first."""
        while True:
            self._set_status("connecting", error=error, retry_in_s=wait, lost=lost)
            if not await self._sleep(wait):
                return None
            try:
                done, ws = await self._until_closing(self._attempt())
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if isinstance(exc, InvalidStatus) and exc.response.status_code in _REFUSED_FOR_GOOD:
                    raise
                if not self.reconnect_on_loss:
                    raise
                error, lost, wait = describe_connect_error(exc), False, self.backoff.next_delay()
                log.info("connect to %s failed (%s); retrying in %.2fs", self.url, error, wait)
                continue
            if not done:
                return None
            assert isinstance(ws, ClientConnection)
            if self._closing.is_set():  # aclose() came as the handshake finished
                await ws.close()
                return None
            if self._connected_once:
                self.reconnects += 1
            self._connected_once = True
            self.worker = ws.response.headers.get("X-Roomcast-Worker", "") if ws.response else ""
            self._resuming = self.reconnects > 0 or bool(self.tracker.since(self.rooms))
            return ws

    async def _run(self) -> AsyncGenerator[Item, None]:
        error = ""
        try:
            ws = self._ws
            if ws is None:
                ws = self._ws = await self._open()
            while ws is not None:
                async with contextlib.aclosing(self._serve(ws)) as items:
                    async for item in items:
                        yield item
                self._ws = None
                self.worker = ""
                if self._closing.is_set():
                    return
                rcvd = ws.protocol.close_rcvd
                code, reason = (None, "") if rcvd is None else (rcvd.code, rcvd.reason)
                if self._drop:
                    self._drop = False
                    ws = self._ws = await self._open(error="dropped by the app", lost=True)
                    continue
                if not (self.reconnect_on_loss and resumable(code)):
                    exc = closed_for_good(code, reason or self._last_error)
                    error = str(exc)
                    raise exc
                live_since = self._live_since
                if live_since is not None and time.monotonic() - live_since >= self.healthy_after_s:
                    self.backoff.reset()
                why = "no close frame" if code is None else f"gateway closed it: {code} {reason}"
                log.info("connection to %s lost (%s); reconnecting", self.url, why)
                ws = self._ws = await self._open(
                    error=why.strip(), lost=True, wait=self.backoff.next_delay()
                )
        except Exception as exc:
            error = error or describe_connect_error(exc)
            raise
        finally:
            ws, self._ws = self._ws, None
            if ws is not None:
                await ws.close()
            self._set_status("closed", error=error)

    async def _serve(self, ws: ClientConnection) -> AsyncGenerator[Item, None]:
        """One connection: each item to yield, until it ends."""
        waiting = set(self.rooms)  # rooms whose `joined` has not come yet
        self._live_since = None
        self._last_error = ""
        if waiting:
            if self._resuming:
                self._set_status("recovering", worker=self.worker)
        else:
            self._live_since = time.monotonic()
            self._set_status("live", worker=self.worker)
        tracker = self.tracker
        try:
            while True:
                data = await ws.recv(decode=False)
                kind = message_type(data)
                if kind == "blob":
                    blob = tracker.blob(decode_blob(data))
                    if blob is not None:
                        yield blob
                    continue
                if kind not in _SERVER_KINDS:
                    continue  # a message type from a newer gateway: not for this client
                msg = decode_server_message(data)
                if isinstance(msg, Joined):
                    if tracker.joined(msg) and self.on_reset is not None:
                        oldest = msg.oldest if isinstance(msg.oldest, str) else None
                        self.on_reset(msg.room, oldest)
                    waiting.discard(msg.room)
                    if not waiting and self._live_since is None:
                        self._live_since = time.monotonic()
                        self._set_status("live", worker=self.worker)
                elif isinstance(msg, Reset):
                    tracker.reset(msg)
                    if self.on_reset is not None:
                        self.on_reset(msg.room, msg.oldest)
                elif isinstance(msg, Count):
                    tracker.count(msg)
                elif isinstance(msg, Error):
                    self._last_error = f"{msg.code}: {msg.message}"
                if self.messages:
                    yield msg
        except ConnectionClosed:
            return
        except msgspec.DecodeError as exc:
            raise RoomcastError(f"not a roomcast message from the gateway: {exc}") from None


@overload
def subscribe(
    url: str,
    rooms: Iterable[str],
    *,
    token: str | None = ...,
    since: Mapping[str, str | Position] | None = ...,
    messages: Literal[False] = ...,
    on_status: Callable[[Status], None] | None = ...,
    on_reset: Callable[[str, str | None], None] | None = ...,
    reconnect: bool = ...,
    backoff_base_s: float = ...,
    backoff_cap_s: float = ...,
    healthy_after_s: float = ...,
    open_timeout_s: float = ...,
    compression: Literal["deflate"] | None = ...,
    rng: random.Random | None = ...,
) -> Subscription[Blob]: ...


@overload
def subscribe(
    url: str,
    rooms: Iterable[str],
    *,
    token: str | None = ...,
    since: Mapping[str, str | Position] | None = ...,
    messages: Literal[True],
    on_status: Callable[[Status], None] | None = ...,
    on_reset: Callable[[str, str | None], None] | None = ...,
    reconnect: bool = ...,
    backoff_base_s: float = ...,
    backoff_cap_s: float = ...,
    healthy_after_s: float = ...,
    open_timeout_s: float = ...,
    compression: Literal["deflate"] | None = ...,
    rng: random.Random | None = ...,
) -> Subscription[Item]: ...


def subscribe(url: str, rooms: Iterable[str], **kw: Any) -> Subscription[Any]:
    """Watch `rooms` on the gateway at `url` (`ws://HOST:PORT/ws`); see the module docstring.

    `since` ({room: "EPOCH:SEQ"}) resumes from positions an earlier subscription had."""
    return Subscription(url, rooms, **kw)
