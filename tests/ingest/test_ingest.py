"""Ingest on real Kafka and NATS: order, merging, leading edge, crashes, outages, dead letters."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from collections import defaultdict

import nats
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from roomcast.devstack import LocalNats
from tests.ingest.conftest import IngestEnv, Record, events_by_room


def room_events(rooms: list[str], n: int, size: int = 30) -> tuple[list[Record], dict[str, int]]:
    """n events round-robin over rooms, each {"seq": per-room sequence number}."""
    seqs: dict[str, int] = defaultdict(int)
    out: list[Record] = []
    for i in range(n):
        room = rooms[i % len(rooms)]
        seqs[room] += 1
        out.append((room.encode(), json.dumps({"seq": seqs[room], "pad": "x" * size}).encode()))
    return out, dict(seqs)


async def test_per_room_order_across_partitions_and_two_processes(ingest_env: IngestEnv) -> None:
    ingest_env.start("--window-ms", "200")
    ingest_env.start("--window-ms", "200")  # same group: the two share the 8 partitions
    rooms = [f"room-{i}" for i in range(24)]
    records, sent = room_events(rooms, 3000)
    await ingest_env.produce(records, rate=1500)
    blobs = await ingest_env.stream_blobs(3000)
    got = events_by_room(blobs)
    assert got == {room: list(range(1, n + 1)) for room, n in sent.items()}
    assert len(blobs) < 3000 / 2  # merged


async def test_leading_edge_and_at_most_one_blob_per_window(ingest_env: IngestEnv) -> None:
    ingest_env.start("--window-ms", "500")
    nc = await nats.connect(ingest_env.nats)
    arrivals: dict[str, list[float]] = defaultdict(list)

    async def on_blob(msg: nats.aio.msg.Msg) -> None:
        arrivals[json.loads(msg.data)["room"]].append(time.monotonic())

    await nc.subscribe(f"{ingest_env.prefix}.>", cb=on_blob)
    try:
        await ingest_env.produce([(b"warmup", b"{}")])
        while not arrivals["warmup"]:  # the worker has its partitions and is flowing
            await asyncio.sleep(0.05)
        # Idle rooms: each first event goes out at once, not after a window. Measured from
        # Kafka's ack of the produce to the blob on NATS: fetch + merge + publish.
        producer = AIOKafkaProducer(bootstrap_servers=ingest_env.kafka, acks="all")
        await producer.start()
        latencies = []
        try:
            for i in range(5):
                await producer.send_and_wait(ingest_env.topic, b'{"hi":1}', key=b"idle-%d" % i)
                t0 = time.monotonic()
                while not arrivals[f"idle-{i}"]:
                    await asyncio.sleep(0.001)
                latencies.append(arrivals[f"idle-{i}"][0] - t0)
        finally:
            await producer.stop()
        latencies.sort()
        assert latencies[2] < 0.05, f"Kafka ack -> NATS for idle rooms: {latencies}"
        # A hot room: 400 events/s for 3 s.
        t0 = time.monotonic()
        await ingest_env.produce([(b"hot", b'{"n":1}')] * 1200, rate=400)
        duration = time.monotonic() - t0
        await asyncio.sleep(1.0)
        assert len(arrivals["hot"]) <= math.ceil(duration / 0.5) + 1
        assert len(arrivals["hot"]) >= duration / 0.5 / 2
    finally:
        await nc.close()


async def test_window_zero_is_one_blob_per_event_and_max_events_cuts_early(
    ingest_env: IngestEnv,
) -> None:
    ingest_env.start("--window-ms", "0")
    await ingest_env.produce([(b"solo", b'{"seq":%d}' % i) for i in range(1, 21)])
    blobs = await ingest_env.stream_blobs(20)
    assert [len(b.offsets) for b in blobs] == [1] * 20


async def test_max_blob_events_cuts_a_blob_early(ingest_env: IngestEnv) -> None:
    ingest_env.start("--window-ms", "60000", "--max-blob-events", "10")
    await ingest_env.produce([(b"big", b'{"seq":%d}' % i) for i in range(1, 32)])
    blobs = await ingest_env.stream_blobs(31, timeout=10)
    # leading edge (1), then three full blobs of 10; the last event waits for its window
    assert [len(b.offsets) for b in blobs] == [1, 10, 10, 10]


async def test_kill_9_mid_stream_loses_nothing_and_dedup_leaves_each_event_once(
    ingest_env: IngestEnv,
) -> None:
    first = ingest_env.start("--window-ms", "100")
    rooms = [f"r{i}" for i in range(16)]
    records, sent = room_events(rooms, 6000)
    producing = asyncio.create_task(ingest_env.produce(records, rate=2000))
    await asyncio.sleep(1.5)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    ingest_env.start("--window-ms", "100")
    await producing
    blobs = await ingest_env.stream_blobs(6000, timeout=90)
    raw = events_by_room(blobs)
    for room, n in sent.items():  # at least once
        assert set(raw[room]) == set(range(1, n + 1)), room
    assert events_by_room(blobs, dedup=True) == {r: list(range(1, n + 1)) for r, n in sent.items()}


async def test_nats_down_for_5s_loses_nothing_and_commits_nothing_meanwhile(
    ingest_env: IngestEnv, private_nats: LocalNats
) -> None:
    ingest_env.nats = private_nats.url
    ingest_env.start("--window-ms", "100", "--ack-timeout-s", "1")
    rooms = [f"o{i}" for i in range(8)]
    before, sent1 = room_events(rooms, 800)
    await ingest_env.produce(before, rate=800)
    await ingest_env.stream_blobs(800, timeout=30)
    await asyncio.sleep(0.5)  # let the last commit land
    committed_before = await ingest_env.committed()

    private_nats.stop()
    records, _ = room_events(rooms, 2400)
    during = records[800:1600]
    await ingest_env.produce(during, rate=400)  # ~2 s of events while NATS is down
    await asyncio.sleep(3)
    committed_during = await ingest_env.committed()
    assert committed_during == committed_before, "committed while NATS was down"
    private_nats.start()

    await ingest_env.produce(records[1600:], rate=800)
    blobs = await ingest_env.stream_blobs(2400, timeout=60)
    assert events_by_room(blobs, dedup=True) == {r: list(range(1, 301)) for r in rooms}
    assert sent1 == {r: 100 for r in rooms}


async def test_bad_records_go_to_the_dead_letter_topic_and_the_partition_flows(
    ingest_env: IngestEnv,
) -> None:
    ingest_env.start("--window-ms", "100", "--max-event-bytes", "1000")
    key = b"dlq-room"  # one room, so every record below is in one partition, in this order
    bad: list[tuple[Record, str]] = [
        ((None, b'{"seq":0}'), "no_key"),
        ((b"bad.room", b'{"seq":0}'), "bad_room"),
        ((key, b"{not json"), "not_json"),
        ((key, json.dumps({"seq": 0, "pad": "x" * 2000}).encode()), "too_big"),
        # JSON whose string is not UTF-8: every WebSocket client would drop the room's viewers
        ((key, b'{"seq":0,"text":"caf\xe9"}'), "not_utf8"),
        ((None, None), "no_key"),  # neither key nor value: aiokafka asserts on sending it
    ]
    records: list[Record] = []
    for i, (record, _) in enumerate(bad):
        records += [(key, b'{"seq":%d}' % (2 * i + 1)), record, (key, b'{"seq":%d}' % (2 * i + 2))]
    await ingest_env.produce(records)
    blobs = await ingest_env.stream_blobs(2 * len(bad))
    assert events_by_room(blobs)["dlq-room"] == list(range(1, 2 * len(bad) + 1))

    consumer = AIOKafkaConsumer(
        ingest_env.topic + ".dlq", bootstrap_servers=ingest_env.kafka,
        auto_offset_reset="earliest", group_id=None,
    )  # fmt: skip
    await consumer.start()
    try:
        letters = []
        while len(letters) < len(bad):
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 20)
            letters += [m for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    reasons = sorted(dict(m.headers)["roomcast-error"].decode() for m in letters)
    assert reasons == sorted(reason for _, reason in bad)
    for m in letters:
        headers = dict(m.headers)
        assert headers["roomcast-error-message"] and headers["roomcast-topic"].decode() == (
            ingest_env.topic
        )
        assert int(headers["roomcast-offset"]) >= 0
    assert {m.value for m in letters} >= {b"{not json", b'{"seq":0,"text":"caf\xe9"}'}


async def test_every_blob_carries_the_kafka_timestamp_of_its_oldest_event(
    ingest_env: IngestEnv,
) -> None:
    """Roomcast-Produced-Ms: the record timestamp the producer set on the blob's first event, on
    the leading-edge blob and on the merged one, as a NATS subscriber receives them."""
    ingest_env.start("--window-ms", "1000")
    nc = await nats.connect(ingest_env.nats)
    got: list[tuple[list[int], str | None]] = []

    async def on_blob(msg: nats.aio.msg.Msg) -> None:
        blob = json.loads(msg.data)
        if blob["room"] == "stamped":
            got.append((blob["offsets"], (msg.headers or {}).get("Roomcast-Produced-Ms")))

    await nc.subscribe(f"{ingest_env.prefix}.>", cb=on_blob)
    base = int(time.time() * 1000) - 60_000  # a minute ago: not the broker's append time
    producer = AIOKafkaProducer(bootstrap_servers=ingest_env.kafka, acks="all", linger_ms=50)
    await producer.start()
    try:
        futs = [
            await producer.send(ingest_env.topic, b'{"n":%d}' % i, key=b"stamped",
                                timestamp_ms=base + 100 * i)
            for i in range(3)
        ]  # fmt: skip
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    deadline = time.monotonic() + 30
    while sum(len(offsets) for offsets, _ in got) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await nc.close()
    assert got, "no blob of room 'stamped' arrived"
    assert sum(len(offsets) for offsets, _ in got) == 3, got
    # A fresh topic: the room's events are offsets 0, 1, 2 of its partition, event i stamped
    # base + 100 i. The leading edge goes out alone, the others merge into one blob.
    assert got == [([0], str(base)), ([1, 2], str(base + 100))], got
