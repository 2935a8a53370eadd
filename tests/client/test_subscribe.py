"""subscribe() against real processes: ingest and a two-worker gateway on real Kafka and NATS.

What an app relies on: every event exactly once and in order across a gateway worker dying
(kill -9) and across Kafka replays; being told when a room could not be resumed; and a clean
end when it stops watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections.abc import Callable

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.protocol import State

from roomcast.client import Status, Subscription, TokenRejected, subscribe
from roomcast.core.blob import Blob
from roomcast.core.protocol import Joined
from tests.client.conftest import HistoryProducer, Pipeline, Producer
from tests.support import Service, unique


async def until(
    what: str, check: Callable[[], bool], timeout: float = 30, show: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what} {show()}"
        await asyncio.sleep(0.05)


class Reader:
    """Iterates a subscription in a task of its own; keeps the event numbers it yields."""

    def __init__(self, sub: Subscription[Blob]) -> None:
        self.sub = sub
        self.got: list[int] = []
        self.blobs = 0
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for blob in self.sub:
            self.blobs += 1
            self.got += [e["n"] for e in blob.decoded_events()]  # type: ignore[index]

    async def has(self, n: int, timeout: float = 30) -> None:
        await until(f"{n} events (have {len(self.got)})", lambda: len(self.got) >= n, timeout)


class PlainViewer:
    """A plain WebSocket client, no SDK: every event of every blob it is sent, repeats too."""

    def __init__(self, url: str, room: str) -> None:
        self.events: list[int] = []
        self.joined = False
        self.task = asyncio.create_task(self._read(f"{url}?room={room}"))

    async def _read(self, url: str) -> None:
        async with connect(url, max_size=None) as ws:
            async for data in ws:
                msg = json.loads(data)
                if msg["type"] == "joined":
                    self.joined = True
                elif msg["type"] == "blob":
                    self.events.extend(e["n"] for e in msg["events"])

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def started(make: Callable[..., Pipeline], **kw: object) -> Pipeline:
    return await asyncio.to_thread(make, **kw)


@pytest.mark.parametrize("feed", ["ingest", "history"])
async def test_kill_9_of_the_serving_worker_loses_and_repeats_nothing(
    pipeline: Callable[..., Pipeline], kafka_bootstrap: str, feed: str
) -> None:
    """Numbered events stream in (through Kafka and ingest, or stored in the history directly);
    the worker serving the viewer dies mid-stream; the other worker takes the viewer over and
    resumes it: every event once, in order."""
    p = await started(pipeline, ingest=feed == "ingest")
    room = unique("room")
    statuses: list[Status] = []
    sub = subscribe(p.url, [room], on_status=statuses.append, backoff_cap_s=1.0)
    producer: Producer | HistoryProducer = (
        Producer(kafka_bootstrap, p.topic, room) if feed == "ingest" else HistoryProducer(p, room)
    )
    async with sub, producer:
        reader = Reader(sub)
        await until("live", lambda: sub.status == "live")
        first_worker = sub.worker
        assert first_worker in ("0", "1")
        streaming = asyncio.create_task(producer.send(300, per_s=100))
        await reader.has(50)
        assert sub.connection is not None
        victim = p.serving_worker(sub.connection.local_address)
        victim.send_signal(signal.SIGKILL)
        await streaming
        await reader.has(producer.sent)
        assert reader.got == list(range(1, producer.sent + 1))
        assert sub.reconnects == 1
        assert sub.worker not in ("", first_worker)  # the other worker took it over
        assert sub.recovered == {room: True}
        assert sub.resets == 0
    states = [s.state for s in statuses]
    assert states[:2] == ["connecting", "live"]
    lost = next(s for s in statuses if s.lost)
    assert lost.error == "no close frame" and lost.retry_in_s <= 0.25
    assert states[-3:] == ["recovering", "live", "closed"]
    assert not psutil.pid_exists(victim.pid) or victim.status() == psutil.STATUS_ZOMBIE


async def test_a_kafka_replay_reaches_viewers_but_the_sdk_shows_each_event_once(
    pipeline: Callable[..., Pipeline], kafka_bootstrap: str
) -> None:
    """A second ingest with a fresh consumer group (no commit) publishes every event again, in
    blobs merged differently: a plain WebSocket client sees the repeats; subscribe() does not."""
    p = await started(pipeline, window_ms=300)
    room = unique("room")
    plain = PlainViewer(p.url, room)
    async with subscribe(p.url, [room]) as sub, Producer(kafka_bootstrap, p.topic, room) as prod:
        reader = Reader(sub)
        await until("live", lambda: sub.status == "live")
        await prod.send(40, per_s=200)
        await reader.has(40)
        assert p.ingest is not None
        await asyncio.to_thread(p.ingest.stop)
        await asyncio.to_thread(p.start_ingest, "ingest-replay", "--window-ms", "0")
        # The replay stores every event again in blobs of one, but those the first ingest had
        # published alone already (the leading edge's first, and any a slow producer left
        # alone in a window): the same Msg-Id, stored once.
        replayed = lambda: sum(plain.events.count(n) == 2 for n in range(2, 41)) >= 30  # noqa: E731
        await until("the replay", replayed, show=lambda: str(plain.events))
        await prod.send(10)
        await reader.has(50)
        await until("the plain client catching up", lambda: plain.events[-1:] == [50])
        assert reader.got == list(range(1, 51))
        assert sorted(set(plain.events)) == list(range(1, 51)) and len(plain.events) >= 80
    await plain.close()


async def test_events_stored_twice_in_other_blobs_are_shown_once(
    pipeline: Callable[..., Pipeline],
) -> None:
    """What ingest stores after a crash before its commit: the same events again, merged into
    other blobs (new seqs, a whole chain); only what is new in them is yielded."""
    p = await started(pipeline, ingest=False)
    room = unique("room")
    plain = PlainViewer(p.url, room)
    async with subscribe(p.url, [room]) as sub, HistoryProducer(p, room) as history:
        reader = Reader(sub)
        await until("live", lambda: sub.status == "live" and plain.joined)
        for numbers in ([1, 2, 3], [4, 5], [2, 3, 4], [5], [4, 5, 6, 7], [8]):
            await history.store(numbers)
        await reader.has(8)
        await until("the plain client", lambda: plain.events[-1:] == [8])
        assert reader.got == [1, 2, 3, 4, 5, 6, 7, 8]
        assert reader.blobs == 4  # [1, 2, 3], [4, 5], [6, 7] of the fifth, [8]
    assert plain.events == [1, 2, 3, 4, 5, 2, 3, 4, 5, 4, 5, 6, 7, 8]
    await plain.close()


async def test_a_resume_the_history_cannot_serve_says_recovered_false_and_calls_the_hook(
    pipeline: Callable[..., Pipeline],
) -> None:
    """The whole gateway is down while 30 blobs go by; the history keeps 3 per room. Back, the
    viewer resumes from its position, is told it cannot be served, and gets live events."""
    p = await started(pipeline, ingest=False, history_msgs=3)
    room = unique("room")
    resets: list[tuple[str, str | None]] = []
    sub = subscribe(
        p.url, [room], on_reset=lambda r, oldest: resets.append((r, oldest)), backoff_cap_s=0.5
    )
    async with sub, HistoryProducer(p, room) as history:
        reader = Reader(sub)
        await until("live", lambda: sub.status == "live")
        await history.send(5)
        await reader.has(5)
        before = sub.positions[room]
        assert p.gateway is not None
        await asyncio.to_thread(p.gateway.stop)  # drains: 1012, resumable
        await until("reconnecting", lambda: sub.status == "connecting")
        await history.send(30)
        await asyncio.to_thread(p.start_gateway, "gateway-2")
        await until("recovered false", lambda: sub.recovered.get(room) is False)
        assert sub.resets == 1
        assert len(resets) == 1 and resets[0][0] == room
        oldest = resets[0][1]
        assert oldest is not None and int(oldest.split(":")[1]) > int(before.split(":")[1])
        await history.send(2)
        await reader.has(7)
        assert reader.got == [1, 2, 3, 4, 5, 36, 37]  # live from there on
        assert sub.positions[room].split(":")[0] == before.split(":")[0]  # the same epoch


async def test_a_position_from_another_epoch_is_not_recovered(
    pipeline: Callable[..., Pipeline],
) -> None:
    p = await started(pipeline, ingest=False)
    room = unique("room")
    async with subscribe(p.url, [room], since={room: "1:1"}, messages=True) as sub:
        first = await asyncio.wait_for(anext(sub), 10)
        assert isinstance(first, Joined) and first.room == room
        assert sub.recovered == {room: False} and sub.resets == 1


async def test_aclose_ends_the_iteration_and_closes_the_socket(
    pipeline: Callable[..., Pipeline],
) -> None:
    p = await started(pipeline, ingest=False)
    room = unique("room")
    statuses: list[str] = []
    sub = subscribe(p.url, [room], on_status=lambda s: statuses.append(s.state))
    reader = Reader(sub)
    await until("live", lambda: sub.status == "live")
    ws = sub.connection
    assert ws is not None
    await asyncio.wait_for(sub.aclose(), 10)
    await asyncio.wait_for(reader.task, 10)  # the `async for` ended by itself, no error
    assert ws.state is State.CLOSED and ws.close_code == 1000
    assert sub.connection is None and statuses[-1] == "closed"
    # Nothing reconnects afterwards.
    await asyncio.sleep(0.5)
    assert sub.reconnects == 0 and statuses.count("closed") == 1


async def test_aclose_while_waiting_to_reconnect_ends_at_once() -> None:
    from tests.support import free_port

    rng = random.Random(0)  # its first draw: 0.84 of the window, so a wait of 25 s
    url = f"ws://127.0.0.1:{free_port()}/ws"
    sub = subscribe(url, ["lobby"], backoff_base_s=30, backoff_cap_s=60, rng=rng)
    reader = Reader(sub)
    await until("a failed attempt", lambda: sub.backoff.attempts >= 1, 10)
    started_at = time.monotonic()
    await sub.aclose()
    await asyncio.wait_for(reader.task, 5)
    assert time.monotonic() - started_at < 2 and sub.status == "closed"


@pytest.mark.parametrize("gone", [False, True])
async def test_leaving_async_with_mid_iteration_closes_the_socket(
    pipeline: Callable[..., Pipeline], gone: bool
) -> None:
    p = await started(pipeline, ingest=False)
    room = unique("room")
    async with subscribe(p.url, [room]) as sub, HistoryProducer(p, room) as history:
        first = asyncio.ensure_future(anext(sub))  # iterating: the join goes out
        # Every room joined: a blob stored from now on reaches the viewer (one stored before the
        # gateway had subscribed would be behind the joined position, and never sent).
        await until("live", lambda: sub.status == "live")
        await history.send(1)
        blob = await asyncio.wait_for(first, 20)
        assert blob.decoded_events() == [{"n": 1}]
        ws = sub.connection
    assert ws is not None and ws.state is State.CLOSED
    if gone:  # iterating after aclose() ends at once
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(sub), 5)


async def test_an_expired_token_ends_the_iteration_with_token_rejected(
    nats_url: str, services: Callable[..., Service]
) -> None:
    """4002 is not resumable as it is: the app needs a fresh token, and is told so."""
    from tests.gateway.test_auth import JWT_ARGS, token
    from tests.support import free_port, wait_http_ok

    port = free_port()
    gw = services(
        "gateway-jwt",
        ["gateway", "--nats", nats_url, "--port", str(port), "--workers", "1",
         "--metrics-port", "0", *JWT_ARGS],
    )  # fmt: skip
    await asyncio.to_thread(wait_http_ok, f"http://127.0.0.1:{port}/readyz", gw)
    sub = subscribe(f"ws://127.0.0.1:{port}/ws", ["lobby"], token=token("lobby", ttl=2))
    with pytest.raises(TokenRejected) as ended:
        async with sub:
            async for _ in sub:
                pass
    assert ended.value.code == 4002 and "fresh token" in str(ended.value)
    assert sub.status == "closed" and sub.reconnects == 0


async def test_a_viewer_gone_before_its_rooms_first_blob_resumes_from_the_joined_position(
    pipeline: Callable[..., Pipeline],
) -> None:
    """A quiet room: the viewer joins, has no blob yet, and goes. The `joined` gave it the
    room's position, so what was stored while it was away reaches it when it comes back (before,
    it had nothing to resume from and those events were lost without a word)."""
    p = await started(pipeline, ingest=False)
    room = unique("quiet")
    async with HistoryProducer(p, room) as producer:
        await producer.store([1])  # the room has a past: a position is more than "nothing yet"
        first = subscribe(p.url, [room])
        async with first:
            Reader(first)
            await until(
                "joined", lambda: room in first.positions, show=lambda: str(first.positions)
            )
            since = first.positions
        await producer.store([2, 3])
        await producer.store([4])
        again = subscribe(p.url, [room], since=since)
        async with again:
            reader = Reader(again)
            await reader.has(3)
            assert reader.got == [2, 3, 4]
            assert again.recovered == {room: True}
