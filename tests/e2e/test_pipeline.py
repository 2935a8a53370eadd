"""The whole chain on real brokers: producer -> Kafka -> ingest -> NATS -> gateway -> viewers."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from websockets.asyncio.client import ClientConnection, connect

from roomcast.core.blob import decode_blob
from roomcast.core.protocol import message_type
from tests.support import Service, free_port, scrape, start_pipeline, unique

WINDOW_MS = 500
EVENTS = 1000
PRODUCE_SECONDS = 5.0


async def join(ws: ClientConnection, room: str) -> None:
    await ws.send(json.dumps({"type": "join", "room": room}))
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if msg["type"] == "joined" and msg["room"] == room:
            return


async def test_every_viewer_gets_exactly_its_rooms_events_in_order_and_merged(
    kafka_bootstrap: str, nats_url: str, services: Callable[[str, list[str]], Service]
) -> None:
    topic, port = await asyncio.to_thread(
        start_pipeline,
        services,
        kafka_bootstrap,
        nats_url,
        name="e2e",
        partitions=8,
        window_ms=WINDOW_MS,
    )

    rooms = [unique("room") for _ in range(3)]
    # 30 viewers; every third one also watches the next room.
    plan = [[rooms[i % 3]] + ([rooms[(i + 1) % 3]] if i % 3 == 0 else []) for i in range(30)]
    viewers = [
        await connect(f"ws://127.0.0.1:{port}/ws", compression=None, max_size=None) for _ in plan
    ]
    for ws, their_rooms in zip(viewers, plan, strict=True):
        for room in their_rooms:
            await join(ws, room)

    received: list[dict[str, list[int]]] = [defaultdict(list) for _ in plan]
    frames: list[dict[str, int]] = [defaultdict(int) for _ in plan]

    async def read(i: int, ws: ClientConnection) -> None:
        async for data in ws:
            if message_type(data) != "blob":
                continue
            blob = decode_blob(data)
            frames[i][blob.room] += 1
            received[i][blob.room] += [e["seq"] for e in blob.decoded_events()]  # type: ignore[index]

    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(viewers)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=2)
    await producer.start()
    sent: dict[str, int] = defaultdict(int)
    started = time.monotonic()
    try:
        for n in range(EVENTS):
            room = rooms[n % 3]
            sent[room] += 1
            event = json.dumps({"seq": sent[room], "text": "x" * 40}).encode()
            await producer.send(topic, event, key=room.encode())
            await asyncio.sleep(
                max(0.0, started + (n + 1) * PRODUCE_SECONDS / EVENTS - time.monotonic())
            )
        await producer.flush()
    finally:
        await producer.stop()
    duration = time.monotonic() - started

    def complete() -> bool:
        return all(len(received[i][room]) >= sent[room] for i, rs in enumerate(plan) for room in rs)

    while not complete() and time.monotonic() < started + 60:
        await asyncio.sleep(0.1)
    await asyncio.sleep(2 * WINDOW_MS / 1000)  # a late duplicate would show up by now
    for task in readers:
        task.cancel()
    for ws in viewers:
        await ws.close()

    bound = math.ceil(duration / (WINDOW_MS / 1000)) + 2  # +1 leading edge, +1 window straddle
    for i, their_rooms in enumerate(plan):
        assert set(received[i]) <= set(their_rooms), f"viewer {i} got other rooms' blobs"
        for room in their_rooms:
            assert received[i][room] == list(range(1, sent[room] + 1)), (
                f"viewer {i} room {room}: not every event exactly once in order"
            )
            # merging really happens: ~duration/window frames, not one frame per event
            assert 0.5 * duration / (WINDOW_MS / 1000) <= frames[i][room] <= bound, frames[i]


async def test_gateway_measures_delivery_latency_from_the_events_produce_time(
    kafka_bootstrap: str, nats_url: str, services: Callable[[str, list[str]], Service]
) -> None:
    """An event produced with a record timestamp 3 s in the past reaches a viewer, and the live
    gateway's roomcast_gateway_delivery_latency_seconds counts that blob once, at >= 3 s: ingest
    stamped the blob with its Kafka timestamp (Roomcast-Produced-Ms)."""
    metrics_port = free_port()
    topic, port = await asyncio.to_thread(
        start_pipeline, services, kafka_bootstrap, nats_url,
        name="lat", partitions=2, window_ms=200, gateway_metrics_port=metrics_port,
    )  # fmt: skip

    async def latency(series: str) -> float:
        name = "roomcast_gateway_delivery_latency_" + series
        return await asyncio.to_thread(scrape, f"http://127.0.0.1:{metrics_port}", name)

    room = unique("lat")
    async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
        await join(ws, room)
        assert await latency("seconds_count") == 0
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            produced_ms = int(time.time() * 1000) - 3000
            await producer.send_and_wait(topic, b'{"hi":1}', key=room.encode(),
                                         timestamp_ms=produced_ms)  # fmt: skip
        finally:
            await producer.stop()
        while message_type(data := await asyncio.wait_for(ws.recv(), 30)) != "blob":
            pass
        assert decode_blob(data).decoded_events() == [{"hi": 1}]
    assert await latency("seconds_count") == 1
    assert 3.0 <= await latency("seconds_sum") < 13.0
    assert await latency('seconds_bucket{le="3.0"}') == 0
