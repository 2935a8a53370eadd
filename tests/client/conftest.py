"""A whole pipeline for SDK tests: a topic, ingest and a two-worker gateway as subprocesses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import pytest

from tests.support import Service, create_topic, free_port, unique, wait_http_ok


@dataclass
class Pipeline:
    kafka: str
    nats: str
    services: Callable[[str, list[str]], Service]
    topic: str = field(default_factory=lambda: unique("sdk"))
    prefix: str = field(default_factory=lambda: unique("sdk").replace("-", "_"))
    stream: str = field(default_factory=lambda: unique("SDK").replace("-", "_"))
    port: int = field(default_factory=free_port)
    gateway: Service | None = None
    ingest: Service | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start_gateway(self, name: str = "gateway", *extra: str) -> Service:
        self.gateway = self.services(
            name,
            ["gateway", "--nats", self.nats, "--port", str(self.port), "--workers", "2",
             "--auth", "off", "--subject-prefix", self.prefix, "--metrics-port", "0",
             "--drain-seconds", "0.5", *extra],
        )  # fmt: skip
        wait_http_ok(f"http://127.0.0.1:{self.port}/readyz", self.gateway)
        return self.gateway

    def start_ingest(self, name: str = "ingest", *extra: str, group: str = "") -> Service:
        self.ingest = self.services(
            name,
            ["ingest", "--kafka", self.kafka, "--nats", self.nats, "--topic", self.topic,
             "--group", group or unique("g"), "--subject-prefix", self.prefix,
             "--stream", self.stream, "--metrics-port", "0", *extra],
        )  # fmt: skip
        return self.ingest

    async def flowing(self, timeout: float = 90) -> None:
        """Wait until an event produced now reaches a viewer (ingest has joined its group)."""
        from roomcast.client import subscribe

        room = unique("warmup")
        async with subscribe(self.url, [room]) as sub, Producer(self.kafka, self.topic, room) as p:
            await p.send(1)
            await asyncio.wait_for(anext(sub), timeout)

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
    """`pipeline(window_ms=100, ingest_args=[...])`: topic created, ingest and gateway running."""

    def start(window_ms: int = 100, ingest_args: tuple[str, ...] = ()) -> Pipeline:
        p = Pipeline(kafka_bootstrap, nats_url, services)
        asyncio.run(create_topic(kafka_bootstrap, p.topic, 4))
        asyncio.run(create_topic(kafka_bootstrap, p.topic + ".dlq", 1))
        p.start_ingest("ingest", "--window-ms", str(window_ms), *ingest_args)
        p.start_gateway()
        asyncio.run(p.flowing())
        return p

    return start


class Producer:
    """Numbered events {"n": i} to one room, in order, each acknowledged by Kafka."""

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
