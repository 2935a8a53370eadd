"""Local brokers: real, clear errors when they cannot start, nothing left behind."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path

import nats
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from roomcast.devstack import BrokerError, LocalKafka, LocalNats


async def test_kafka_fixture_is_a_real_broker(
    kafka_bootstrap: str, kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic(partitions=2, dlq=False)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    await producer.send_and_wait(topic, b'{"hello":1}', key=b"room")
    await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 20)
    finally:
        await consumer.stop()
    assert (msg.key, msg.value) == (b"room", b'{"hello":1}')


async def test_nats_fixture_has_jetstream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        name = f"T{os.getpid()}"
        await js.add_stream(name=name, subjects=[f"devstack.{name}.>"])
        ack = await js.publish(f"devstack.{name}.a", b"x")
        assert ack.stream == name and ack.seq == 1
        await js.delete_stream(name)
    finally:
        await nc.close()


def test_nats_restarts_on_the_same_port_and_keeps_streams(tmp_path: Path) -> None:
    async def publish(url: str) -> int:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        ack = await js.publish("keep.x", b"1")
        await nc.close()
        return ack.seq

    server = LocalNats(tmp_path).start()
    try:
        assert asyncio.run(publish(server.url)) == 1
        pid = server.pid
        server.stop()
        assert pid is not None and not psutil.pid_exists(pid)
        server.start()
        assert asyncio.run(publish(server.url)) == 2  # same stream, on disk, same URL
    finally:
        server.stop()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} for NATS is already in use"):
            LocalNats(tmp_path, port=port).start()
        with pytest.raises(BrokerError, match=f"port {port} for Kafka is already in use"):
            LocalKafka(tmp_path, port=port).start()


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java-here"))
    with pytest.raises(BrokerError, match="Java not found: Kafka needs Java 17"):
        LocalKafka(tmp_path).start()


def test_kafka_not_ready_in_time_shows_the_log_tail(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path, timeout=0.01)
    with pytest.raises(BrokerError, match=r"did not listen|not ready") as info:
        kafka.start()
    assert "kafka.log" in str(info.value)
    assert not kafka.alive()  # the half-started broker was stopped


def test_stopping_leaves_no_process_behind(tmp_path: Path) -> None:
    with LocalKafka(tmp_path / "k", topics={"a": 1}) as kafka:
        pid = kafka.pid
        assert pid is not None and psutil.Process(pid).is_running()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
