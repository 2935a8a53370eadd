"""/client.js against a live cluster: Kafka, ingest, NATS and a two-worker gateway.

The Node tests (tests/node/client.live.test.mjs) drive the scenario; this side runs the services
and answers them over a small HTTP control endpoint on loopback: produce events to Kafka, publish
raw blobs to NATS, wait until an event is in the room's history, SIGKILL a gateway worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import pytest
from aiokafka import AIOKafkaProducer

from roomcast.core.blob import decode_blob
from tests.support import (
    Service,
    create_topic,
    free_port,
    run_node_tests,
    unique,
    wait_http_ok,
)


class Cluster:
    def __init__(self, kafka: str, nats_url: str, services: Callable[..., Service]) -> None:
        self.kafka, self.nats_url = kafka, nats_url
        self.topic, self.prefix = unique("cjs"), unique("cjs").replace("-", "_")
        self.history, self.stream = unique("hist").replace("-", "_"), unique("S").replace("-", "_")
        asyncio.run(create_topic(kafka, self.topic, 4))
        asyncio.run(create_topic(kafka, self.topic + ".dlq", 1))
        self.port = free_port()
        self.gateway = services(
            "gateway",
            ["gateway", "--nats", nats_url, "--port", str(self.port), "--workers", "2",
             "--auth", "off", "--subject-prefix", self.prefix, "--stream", self.stream,
             "--history-prefix", self.history, "--log-format", "json", "--metrics-port", "0"],
        )  # fmt: skip
        self.ingest = services(
            "ingest",
            ["ingest", "--kafka", kafka, "--nats", nats_url, "--topic", self.topic,
             "--group", unique("g"), "--window-ms", "100", "--subject-prefix", self.prefix,
             "--history-prefix", self.history, "--stream", self.stream, "--metrics-port", "0"],
        )  # fmt: skip
        wait_http_ok(f"http://127.0.0.1:{self.port}/readyz", self.gateway)
        deadline = time.monotonic() + 30
        while len(self.worker_pids()) < 2:  # both workers connected to NATS
            assert time.monotonic() < deadline, self.gateway.log_tail()
            assert self.gateway.proc.poll() is None, self.gateway.log_tail()
            time.sleep(0.1)

    def worker_pids(self) -> dict[str, int]:
        """Worker number -> pid of its running process, from the gateway's own log."""
        pids: dict[str, int] = {}
        for line in self.gateway.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record.get("msg") == "gateway worker listening":
                pids[str(record["worker"])] = int(record["pid"])
        return pids


class Control:
    """The HTTP endpoint the Node tests call: POST /produce, /publish, /stored, /kill with a JSON
    body."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.killed: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.producer: AIOKafkaProducer = self.run(self.start_producer())
        self.nc = self.run(nats.connect(cluster.nats_url))
        control = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    status, answer = 200, control.handle(self.path, body)
                except Exception as exc:  # the Node test shows it
                    status, answer = 500, {"error": repr(exc)}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    async def start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self.cluster.kafka, acks="all", linger_ms=1)
        await producer.start()
        return producer

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def handle(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/produce":
            return {"offsets": self.run(self.produce(body["room"], body["events"],
                                                     body.get("interval_ms", 0)))}  # fmt: skip
        if path == "/publish":
            subject = f"{self.cluster.prefix}.{body['room']}"
            self.run(self.publish(subject, [b.encode() for b in body["blobs"]]))
            return {}
        if path == "/stored":
            return {"seq": self.run(self.stored(body["room"], body["offset"]))}
        if path == "/kill":
            pid = self.cluster.worker_pids()[str(body["worker"])]
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)
            return {"pid": pid}
        raise ValueError(f"no such control: {path}")

    async def produce(self, room: str, events: list[object], interval_ms: float) -> list[int]:
        sent = []
        for event in events:
            fut = await self.producer.send(self.cluster.topic, json.dumps(event).encode(),
                                           key=room.encode())  # fmt: skip
            sent.append(fut)
            if interval_ms:
                await asyncio.sleep(interval_ms / 1000)
        return [(await fut).offset for fut in sent]

    async def stored(self, room: str, offset: int, timeout: float = 30) -> int:
        """Wait until the room's history holds the event at `offset`; its blob's seq."""
        js = self.nc.jetstream()
        subject = f"{self.cluster.history}.{room}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                msg = await js.get_last_msg(self.cluster.stream, subject)
                if decode_blob(msg.data).offsets[-1] >= offset:
                    return int(msg.seq)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"offset {offset} of {room} not in the history after {timeout} s")

    async def publish(self, subject: str, payloads: list[bytes]) -> None:
        for payload in payloads:
            await self.nc.publish(subject, payload)
        await self.nc.flush()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.run(self.producer.stop())
        self.run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def control(
    kafka_bootstrap: str, nats_url: str, services: Callable[..., Service]
) -> Iterator[tuple[Cluster, Control]]:
    cluster = Cluster(kafka_bootstrap, nats_url, services)
    ctl = Control(cluster)
    try:
        yield cluster, ctl
    finally:
        ctl.close()


def test_browser_client_against_a_live_cluster(
    control: tuple[Cluster, Control], node_tests: Path
) -> None:
    """Order, kill -9 of the serving worker (every event exactly once), dedup, resume after a
    close, recovered:false, counts and a clean close: each a Node test in client.live.test.mjs."""
    cluster, ctl = control
    env = {"ROOMCAST_WS_URL": f"ws://127.0.0.1:{cluster.port}/ws", "ROOMCAST_CONTROL": ctl.url}
    try:
        run_node_tests(node_tests, ["client.live.test.mjs"], env, timeout=240)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- gateway log:\n{cluster.gateway.log_tail(30)}") from None
    assert len(ctl.killed) == 1, "the kill -9 scenario ran"
    assert cluster.gateway.proc.poll() is None
