"""Pipelines for SDK tests: a two-worker gateway on a room history, fed by ingest or by the test.

`pipeline()` runs ingest on a fresh topic; `pipeline(ingest=False)` creates the stream the way
ingest sets it up and leaves storing blobs to the test (`HistoryProducer`), which is how "the same
events published twice, as ingest would after a crash" is played exactly.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import nats
import psutil
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import RePublish, StreamConfig

from roomcast.core.blob import blob_msg_id, encode_blob
from tests.support import Service, create_topic, free_port, unique, wait_http_ok


@dataclass
class Pipeline:
    kafka: str
    nats: str
    services: Callable[[str, list[str]], Service]
    topic: str = field(default_factory=lambda: unique("sdk"))
    prefix: str = field(default_factory=lambda: unique("live").replace("-", "_"))
    history: str = field(default_factory=lambda: unique("hist").replace("-", "_"))
    stream: str = field(default_factory=lambda: unique("SDK").replace("-", "_"))
    port: int = field(default_factory=free_port)
    gateway: Service | None = None
    ingest: Service | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def subjects(self) -> list[str]:
        return ["--subject-prefix", self.prefix, "--history-prefix", self.history,
                "--stream", self.stream]  # fmt: skip

    def start_gateway(self, name: str = "gateway", *extra: str) -> Service:
        self.gateway = self.services(
            name,
            ["gateway", "--nats", self.nats, "--port", str(self.port), "--workers", "2",
             "--auth", "off", "--metrics-port", "0", "--drain-seconds", "0.5", *self.subjects,
             *extra],
        )  # fmt: skip
        wait_http_ok(f"http://127.0.0.1:{self.port}/readyz", self.gateway)
        return self.gateway

    def start_ingest(self, name: str = "ingest", *extra: str, group: str = "") -> Service:
        self.ingest = self.services(
            name,
            ["ingest", "--kafka", self.kafka, "--nats", self.nats, "--topic", self.topic,
             "--group", group or unique("g"), "--metrics-port", "0", *self.subjects, *extra],
        )  # fmt: skip
        return self.ingest

    async def create_stream(self, max_msgs: int) -> None:
        """The stream as ingest creates it: history subjects, republished live, direct gets."""
        nc = await nats.connect(self.nats)
        try:
            await nc.jetstream().add_stream(
                StreamConfig(
                    name=self.stream,
                    subjects=[f"{self.history}.>"],
                    max_msgs_per_subject=max_msgs,
                    allow_direct=True,
                    duplicate_window=120,
                    republish=RePublish(src=f"{self.history}.>", dest=f"{self.prefix}.>"),
                )
            )
        finally:
            await nc.close()

    async def flowing(self, timeout: float = 90) -> None:
        """Wait until an event produced now reaches a viewer (ingest has joined its group)."""
        from roomcast.client import subscribe

        room = unique("warmup")
        async with subscribe(self.url, [room]) as sub, Producer(self.kafka, self.topic, room) as p:
            first = asyncio.ensure_future(anext(sub))
            deadline = time.monotonic() + timeout
            while sub.status != "live":  # joined: what is stored from now on reaches it
                assert not first.done() and time.monotonic() < deadline, sub.status
                await asyncio.sleep(0.05)
            await p.send(1)
            await asyncio.wait_for(first, timeout)

    def serving_worker(self, client: tuple[str, int]) -> psutil.Process:
        """The gateway worker process holding the TCP connection from `client`."""
        assert self.gateway is not None
        for child in psutil.Process(self.gateway.proc.pid).children(recursive=True):
            for conn in child.net_connections(kind="tcp"):
                if conn.raddr and (conn.raddr.ip, conn.raddr.port) == client[:2]:
                    return child
        raise AssertionError(f"no gateway worker holds the connection from {client}")


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, nats_url: str, services: Callable[[str, list[str]], Service]
) -> Callable[..., Pipeline]:
    """`pipeline(window_ms=100, ingest_args=(...))`: topic, ingest and gateway, events flowing.
    `pipeline(ingest=False, history_msgs=N)`: the stream and the gateway only."""

    def start(
        window_ms: int = 100,
        ingest_args: tuple[str, ...] = (),
        ingest: bool = True,
        history_msgs: int = 100,
    ) -> Pipeline:
        p = Pipeline(kafka_bootstrap, nats_url, services)
        if not ingest:
            asyncio.run(p.create_stream(history_msgs))
            p.start_gateway()
            return p
        asyncio.run(create_topic(kafka_bootstrap, p.topic, 4))
        asyncio.run(create_topic(kafka_bootstrap, p.topic + ".dlq", 1))
        p.start_ingest("ingest", "--window-ms", str(window_ms), *ingest_args)
        p.start_gateway()
        asyncio.run(p.flowing())
        return p

    return start


class Producer:
    """Numbered events {"n": i} to one room through Kafka, in order, each acknowledged."""

    def __init__(self, kafka: str, topic: str, room: str) -> None:
        from aiokafka import AIOKafkaProducer

        self.topic, self.room = topic, room
        self.producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=2)
        self.sent = 0

    async def __aenter__(self) -> Producer:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send(self, count: int, per_s: float = 0) -> None:
        for _ in range(count):
            self.sent += 1
            value = json.dumps({"n": self.sent}).encode()
            await self.producer.send_and_wait(self.topic, value, key=self.room.encode())
            if per_s:
                await asyncio.sleep(1 / per_s)


class HistoryProducer:
    """Stores blobs of numbered events in a pipeline's history as ingest does: event n at Kafka
    offset n of partition 0, on the room's history subject, with ingest's Msg-Id."""

    def __init__(self, p: Pipeline, room: str) -> None:
        self.p, self.room = p, room
        self.sent = 0
        self.nc: NATS | None = None

    async def __aenter__(self) -> HistoryProducer:
        self.nc = await nats.connect(self.p.nats)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.nc is not None
        await self.nc.close()

    async def store(self, numbers: list[int]) -> int:
        """One blob holding events `numbers` (their offsets too); its stream sequence."""
        assert self.nc is not None
        events = [json.dumps({"n": n}).encode() for n in numbers]
        blob = encode_blob(self.room, 0, numbers, events)
        ack = await self.nc.jetstream().publish(
            f"{self.p.history}.{self.room}",
            blob,
            headers={"Nats-Msg-Id": blob_msg_id(self.room, 0, numbers)},
        )
        self.sent = max(self.sent, numbers[-1])
        return int(ack.seq)

    async def send(self, count: int, per_s: float = 0, per_blob: int = 1) -> None:
        """The next `count` events, `per_blob` to a blob."""
        end = self.sent + count
        while self.sent < end:
            await self.store(list(range(self.sent + 1, min(end, self.sent + per_blob) + 1)))
            if per_s:
                await asyncio.sleep(1 / per_s)
