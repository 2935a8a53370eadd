"""Ingest against a nats-server that wants a token: the wrong one is a clear error in the log,
the right one gets its stream created and an event through to JetStream."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import nats

from roomcast.devstack.nats import nats_server_binary
from tests.support import Service, create_topic, free_port, unique

TOKEN = "nats-token-ok"


async def stream_exists(url: str, stream: str) -> bool:
    nc = await nats.connect(url, token=TOKEN)
    try:
        try:
            await nc.jetstream().stream_info(stream)
            return True
        except nats.js.errors.NotFoundError:
            return False
    finally:
        await nc.close()


def test_ingest_nats_token(
    kafka_bootstrap: str, services: Callable[..., Service], tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "nats.log").open("wb")
    server = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js",
         "-sd", str(tmp_path / "js"), "--auth", TOKEN],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        topic = unique("natsauth")
        asyncio.run(create_topic(kafka_bootstrap, topic, 1))
        asyncio.run(create_topic(kafka_bootstrap, topic + ".dlq", 1))
        stream = unique("S").replace("-", "_")

        def ingest(name: str, token: str) -> Service:
            return services(
                name,
                ["ingest", "--kafka", kafka_bootstrap, "--nats", url, "--topic", topic,
                 "--group", unique("g"), "--stream", stream, "--metrics-port", "0",
                 "--subject-prefix", stream.lower(), "--history-prefix", f"{stream.lower()}_h",
                 "--nats-token", token],
            )  # fmt: skip

        wrong = ingest("ingest-wrong", "not-the-token")
        deadline = time.monotonic() + 30
        while "authorization violation" not in wrong.log_path.read_text().lower():
            assert time.monotonic() < deadline, wrong.log_tail()
            time.sleep(0.2)
        assert not asyncio.run(stream_exists(url, stream))
        wrong.stop()

        good = ingest("ingest", TOKEN)
        deadline = time.monotonic() + 30
        while not asyncio.run(stream_exists(url, stream)):
            assert time.monotonic() < deadline, good.log_tail()
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(10)
        log.close()
