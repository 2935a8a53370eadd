"""Ingest tests: a fresh topic, subject prefixes and stream per test, on the session's brokers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import nats
import nats.js.errors
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from nats.js.api import ConsumerConfig, DeliverPolicy

from roomcast.core.blob import Blob, decode_blob
from tests.support import Service, unique

Record = tuple[bytes | None, bytes | None]  # (key, value)


@dataclass
class IngestEnv:
    kafka: str
    nats: str
    topic: str
    prefix: str  # what the stream republishes to: gateways subscribe PREFIX.<room>
    history: str  # what ingest publishes to and the stream captures: HISTORY.<room>
    stream: str
    group: str
    start_service: Callable[[str, list[str]], Service]
    services: list[Service] = field(default_factory=list)

    def args(self, *extra: str, nats_url: str | None = None) -> list[str]:
        return [
            "ingest", "--kafka", self.kafka, "--nats", nats_url or self.nats,
            "--topic", self.topic, "--group", self.group, "--subject-prefix", self.prefix,
            "--history-prefix", self.history, "--stream", self.stream, "--metrics-port", "0",
            *extra,
        ]  # fmt: skip

    def start(self, *extra: str, nats_url: str | None = None) -> Service:
        svc = self.start_service(
            f"ingest-{len(self.services)}", self.args(*extra, nats_url=nats_url)
        )
        self.services.append(svc)
        return svc

    async def produce(
        self, records: list[tuple[bytes | None, bytes | None]], rate: float = 0
    ) -> None:
        """Send (key, value) records in order; `rate` events/s, 0 = as fast as possible."""
        producer = AIOKafkaProducer(bootstrap_servers=self.kafka, acks="all", linger_ms=2)
        await producer.start()
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            futs = []
            for i, (key, value) in enumerate(records):
                if key is None and value is None:  # Kafka takes it; aiokafka's send() asserts
                    batch = producer.create_batch()
                    batch.append(key=None, value=None, timestamp=None)
                    futs.append(await producer.send_batch(batch, self.topic, partition=0))
                    continue
                futs.append(await producer.send(self.topic, value, key=key))
                if rate:
                    await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - loop.time()))
            await asyncio.gather(*futs)
        finally:
            await producer.stop()

    async def stream_blobs(self, expect_events: int, timeout: float = 60) -> list[Blob]:
        """Every blob in the JetStream stream, in stream order, once `expect_events` are there."""
        nc = await nats.connect(self.nats)
        try:
            js = nc.jetstream()
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    info = await js.stream_info(self.stream)
                    blobs = await self._read_all(js, info.state.messages)
                except nats.js.errors.NotFoundError:  # ingest has not created it yet
                    blobs = []
                n = sum(len(b.offsets) for b in blobs)
                if n >= expect_events or asyncio.get_running_loop().time() > deadline:
                    return blobs
                await asyncio.sleep(0.5)
        finally:
            await nc.close()

    async def _read_all(self, js: nats.js.JetStreamContext, count: int) -> list[Blob]:
        if count == 0:
            return []
        sub = await js.pull_subscribe(
            f"{self.history}.>",
            stream=self.stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30),
        )
        out: list[Blob] = []
        while len(out) < count:
            for msg in await sub.fetch(min(500, count - len(out)), timeout=10):
                out.append(decode_blob(msg.data))
                await msg.ack()
        await sub.unsubscribe()
        return out

    async def committed(self) -> dict[int, int | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka, group_id=self.group,
                                    enable_auto_commit=False)  # fmt: skip
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(self.topic) or set()
            return {p: await consumer.committed(TopicPartition(self.topic, p)) for p in parts}
        finally:
            await consumer.stop()


def events_by_room(blobs: list[Blob], dedup: bool = False) -> dict[str, list[int]]:
    """room -> the `seq` of its events as delivered (after the dedup rule if `dedup`)."""
    from roomcast.core.positions import Deduper

    d = Deduper()
    out: dict[str, list[int]] = {}
    for b in blobs:
        pairs = d.fresh(b) if dedup else list(zip(b.offsets, map(bytes, b.events), strict=True))
        out.setdefault(b.room, []).extend(json.loads(e)["seq"] for _, e in pairs)
    return out


@pytest.fixture
def ingest_env(
    kafka_bootstrap: str,
    nats_url: str,
    kafka_topic: Callable[..., str],
    services: Callable[[str, list[str]], Service],
) -> IngestEnv:
    return IngestEnv(
        kafka=kafka_bootstrap,
        nats=nats_url,
        topic=kafka_topic(partitions=8),
        prefix=unique("in").replace("-", "_"),
        history=unique("hi").replace("-", "_"),
        stream=unique("S").replace("-", "_"),
        group=unique("g"),
        start_service=services,
    )
