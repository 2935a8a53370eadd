"""How fast a worker's partitions move on when it goes (issue #9): static group membership
(--instance-id) and the session timeout, on the real broker.

Each test produces one event to every partition (explicit partition, room `pN`) and waits for
every one of them to come out of NATS: that is the group consuming all its partitions again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

import nats
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from tests.ingest.conftest import IngestEnv
from tests.support import Service, free_port

PARTITIONS = 8  # the ingest_env topic's


class Arrivals:
    """Rooms whose blobs came out of NATS (core subscription on the env's subjects)."""

    def __init__(self) -> None:
        self.rooms: set[str] = set()
        self.nc: nats.NATS | None = None

    async def start(self, env: IngestEnv) -> None:
        self.nc = await nats.connect(env.nats)

        async def on_blob(msg: nats.aio.msg.Msg) -> None:
            self.rooms.add(json.loads(msg.data)["room"])

        await self.nc.subscribe(f"{env.prefix}.>", cb=on_blob)

    async def every_partition(self, env: IngestEnv, tag: str, timeout: float) -> float:
        """Produce one event to each partition (room `<tag>-<p>`); seconds until all arrived."""
        producer = AIOKafkaProducer(bootstrap_servers=env.kafka, acks="all")
        await producer.start()
        try:
            for p in range(PARTITIONS):
                await producer.send_and_wait(env.topic, b"{}", key=f"{tag}-{p}".encode(),
                                             partition=p)  # fmt: skip
        finally:
            await producer.stop()
        wanted = {f"{tag}-{p}" for p in range(PARTITIONS)}
        started = time.monotonic()
        while not wanted <= self.rooms:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"partitions not consumed after {timeout} s: "
                                     f"{sorted(wanted - self.rooms)}")  # fmt: skip
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


async def flowing(arrivals: Arrivals, env: IngestEnv, *workers: Service) -> None:
    """Every worker has joined the group and every partition is consumed."""
    deadline = time.monotonic() + 60
    while not all("ingest running" in w.log_path.read_text() for w in workers):
        assert time.monotonic() < deadline, [w.log_tail() for w in workers]
        await asyncio.sleep(0.1)
    await arrivals.every_partition(env, "warmup", timeout=60)
    if len(workers) > 1:  # each one owns partitions (the last join's rebalance is over)
        while not all(_owns_partitions(w) for w in workers):
            assert time.monotonic() < deadline, [w.log_tail() for w in workers]
            await asyncio.sleep(0.1)
        await arrivals.every_partition(env, "settled", timeout=30)


def _owns_partitions(worker: Service) -> bool:
    lines = [ln for ln in worker.log_path.read_text().splitlines() if "partitions assigned" in ln]
    return bool(lines) and "[]" not in lines[-1]


async def test_kill_9_then_a_restart_with_the_same_instance_id_takes_over_at_once(
    ingest_env: IngestEnv,
) -> None:
    """Static membership: the restarted worker (same --instance-id) replaces the killed one in
    the group right away instead of waiting out its session (10 s)."""
    arrivals = Arrivals()
    await arrivals.start(ingest_env)
    try:
        args = ("--window-ms", "50", "--instance-id", "ingest-0")
        first = ingest_env.start(*args)
        await flowing(arrivals, ingest_env, first)
        killed_at = time.monotonic()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        ingest_env.start(*args)
        await arrivals.every_partition(ingest_env, "after", timeout=30)
        took = time.monotonic() - killed_at
        print(f"kill -9, restart with the same instance id: consuming again after {took:.1f} s")
        assert took < 6.0, f"{took:.1f} s: the restart waited for the old session"
    finally:
        await arrivals.close()


async def test_sigterm_of_a_static_member_hands_its_partitions_over_at_once(
    ingest_env: IngestEnv,
) -> None:
    """A static member leaves the group when it shuts down (it is not restarting): the other
    worker gets its partitions at once, not after the session timeout."""
    arrivals = Arrivals()
    await arrivals.start(ingest_env)
    try:
        a = ingest_env.start("--window-ms", "50", "--instance-id", "ingest-a")
        b = ingest_env.start("--window-ms", "50", "--instance-id", "ingest-b")
        await flowing(arrivals, ingest_env, a, b)
        stopped_at = time.monotonic()
        assert a.stop(signal.SIGTERM) == 0, a.log_tail()
        await arrivals.every_partition(ingest_env, "after", timeout=30)
        took = time.monotonic() - stopped_at
        print(f"SIGTERM of a static member: all partitions consumed again after {took:.1f} s")
        assert took < 5.0, f"{took:.1f} s: its partitions waited for its session to expire"
    finally:
        await arrivals.close()


async def test_a_shorter_session_timeout_gives_a_dead_workers_partitions_away_sooner(
    ingest_env: IngestEnv,
) -> None:
    """--session-timeout-ms reaches the broker: with 6 s (the broker's least by default) the
    survivor has a killed worker's partitions well before the default 10 s would allow."""
    arrivals = Arrivals()
    await arrivals.start(ingest_env)
    try:
        args = ("--window-ms", "50", "--session-timeout-ms", "6000")
        a, b = ingest_env.start(*args), ingest_env.start(*args)
        await flowing(arrivals, ingest_env, a, b)
        killed_at = time.monotonic()
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        await arrivals.every_partition(ingest_env, "after", timeout=30)
        took = time.monotonic() - killed_at
        print(f"kill -9 with a 6 s session: all partitions consumed again after {took:.1f} s")
        assert took < 8.5, f"{took:.1f} s"
    finally:
        await arrivals.close()


def _lag_partitions(metrics_port: int) -> set[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    return {
        s.labels["partition"]
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == "roomcast_ingest_consumer_lag"
    }


async def test_consumer_lag_is_exported_only_for_the_partitions_a_worker_owns(
    ingest_env: IngestEnv,
) -> None:
    """After a rebalance a worker stops exporting the lag of partitions it handed over (a stale
    gauge would be summed, or maxed, with the new owner's on the dashboard)."""
    arrivals = Arrivals()
    await arrivals.start(ingest_env)
    try:
        port_a, port_b = free_port(), free_port()
        a = ingest_env.start("--window-ms", "50", "--metrics-port", str(port_a))
        await flowing(arrivals, ingest_env, a)
        deadline = time.monotonic() + 20  # the gauge is updated every 2 s
        while len(_lag_partitions(port_a)) < PARTITIONS:
            assert time.monotonic() < deadline, _lag_partitions(port_a)
            await asyncio.sleep(0.2)
        b = ingest_env.start("--window-ms", "50", "--metrics-port", str(port_b))
        await flowing(arrivals, ingest_env, a, b)
        deadline = time.monotonic() + 20
        while True:
            own_a, own_b = _lag_partitions(port_a), _lag_partitions(port_b)
            if own_a and own_b and not own_a & own_b and len(own_a | own_b) == PARTITIONS:
                break
            assert time.monotonic() < deadline, (own_a, own_b)
            await asyncio.sleep(0.2)
    finally:
        await arrivals.close()
