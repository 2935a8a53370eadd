"""One bad record or one outage never stalls or kills an ingest worker (issue #8, ingest side).

Real Kafka and NATS, real `roomcast ingest` processes; every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from nats.js.api import StreamConfig

from roomcast.devstack import LocalNats
from tests.ingest.conftest import IngestEnv, Record, events_by_room
from tests.ingest.test_ingest import room_events
from tests.support import Service, free_port


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 15) -> Any:
    """Poll `check` until it returns something truthy; fail saying `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what} (last: {result})")
        await asyncio.sleep(0.2)


def metric(port: int, name: str) -> float | None:
    """A metric's value from a worker's /metrics (None if absent or not serving yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def partition_of(key: bytes, partitions: int) -> int:
    from aiokafka.partitioner import DefaultPartitioner

    return int(DefaultPartitioner()(key, list(range(partitions)), list(range(partitions))))


async def dead_letters(env: IngestEnv, n: int, timeout: float = 15) -> list[Any]:
    """The first `n` records of the dead-letter topic (fails after `timeout`)."""
    consumer = AIOKafkaConsumer(
        env.topic + ".dlq", bootstrap_servers=env.kafka, auto_offset_reset="earliest",
        group_id=None, metadata_max_age_ms=500,
    )  # fmt: skip
    await consumer.start()
    try:
        letters: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(letters) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            letters += [m for msgs in batch.values() for m in msgs]
        assert len(letters) >= n, f"{len(letters)} dead letters, expected {n}"
        return letters
    finally:
        await consumer.stop()


async def fully_committed(env: IngestEnv, partitions: int) -> bool:
    """Every partition's committed offset is its end: everything acknowledged downstream."""
    consumer = AIOKafkaConsumer(bootstrap_servers=env.kafka, group_id=env.group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        parts = [TopicPartition(env.topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(parts)
        committed = {tp: await consumer.committed(tp) for tp in parts}
    finally:
        await consumer.stop()
    return all(committed[tp] == end for tp, end in ends.items() if end)


def alive(*services: Service) -> None:
    for svc in services:
        assert svc.proc.poll() is None, f"{svc.name} exited:\n{svc.log_tail()}"


# ---- 5: the dead-letter topic ----------------------------------------------------------------


async def test_missing_dead_letter_topic_is_created_at_start_and_takes_bad_records(
    ingest_env: IngestEnv, kafka_topic: Callable[..., str]
) -> None:
    """`roomcast dev` made only the events topic: the first bad record used to stop delivery for
    every room, then kill the worker (and every restart died on the same record)."""
    ingest_env.topic = kafka_topic(partitions=4, dlq=False)
    worker = ingest_env.start("--window-ms", "100")
    rooms = [f"k{i}" for i in range(8)]
    good, sent = room_events(rooms, 80)
    records: list[Record] = good[:40] + [(None, b'{"seq":0}'), (None, None)] + good[40:]
    await ingest_env.produce(records)

    blobs = await ingest_env.stream_blobs(80, timeout=15)
    assert events_by_room(blobs) == {r: list(range(1, n + 1)) for r, n in sent.items()}
    letters = await dead_letters(ingest_env, 2)
    assert sorted(dict(m.headers)["roomcast-error"] for m in letters) == [b"no_key", b"no_key"]
    await until("every offset committed", lambda: fully_committed(ingest_env, 4))
    alive(worker)


async def test_unwritable_dead_letter_topic_pauses_only_its_partition_until_it_recovers(
    ingest_env: IngestEnv, kafka_topic: Callable[..., str]
) -> None:
    """A dead-letter topic that refuses the writes (here: max.message.bytes below a dead letter's
    size) holds back only the partition of the bad record; the dead letter is retried with
    backoff and, once the topic takes it, committed, and the partition flows again."""
    partitions = 4
    ingest_env.topic = kafka_topic(partitions=partitions, dlq=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=ingest_env.kafka)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(ingest_env.topic + ".dlq", 1, 1, topic_configs={"max.message.bytes": "100"})]
        )
        port = free_port()
        worker = ingest_env.start("--window-ms", "100", "--metrics-port", str(port))
        stuck = partition_of(b"bad.room", partitions)
        same = next(f"s{i}" for i in range(100) if partition_of(b"s%d" % i, partitions) == stuck)
        others = [f"o{i}" for i in range(100) if partition_of(b"o%d" % i, partitions) != stuck][:6]

        await ingest_env.produce([(b"bad.room", b'{"seq":0}')])
        await until(
            "the bad record's partition paused",
            lambda: asyncio.to_thread(
                lambda: metric(port, "roomcast_ingest_dlq_blocked_partitions") == 1
            ),
        )
        # Other partitions flow; the stuck one is not consumed (its events wait in Kafka).
        good, sent = room_events(others, 60)
        later = [(same.encode(), b'{"seq":%d}' % i) for i in range(1, 11)]
        await ingest_env.produce(later + good)
        blobs = await ingest_env.stream_blobs(60, timeout=15)
        got = events_by_room(blobs)
        want = {r: list(range(1, n + 1)) for r, n in sent.items()}
        assert {r: got.get(r) for r in others} == want
        assert same not in got
        committed = await ingest_env.committed()
        assert (committed.get(stuck) or 0) <= 0, "committed past a dead letter not written"
        alive(worker)

        # The topic takes writes again: the letter lands, the partition resumes, all committed.
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, ingest_env.topic + ".dlq",
                            configs={"max.message.bytes": "1048588"})]
        )  # fmt: skip
    finally:
        await admin.close()
    letters = await dead_letters(ingest_env, 1, timeout=15)
    assert dict(letters[0].headers)["roomcast-error"] == b"bad_room"
    blobs = await ingest_env.stream_blobs(70, timeout=15)
    assert events_by_room(blobs)[same] == list(range(1, 11))
    await until("every offset committed", lambda: fully_committed(ingest_env, partitions))
    assert metric(port, "roomcast_ingest_dlq_blocked_partitions") == 0
    assert (metric(port, "roomcast_ingest_dlq_write_failures_total") or 0) >= 1
    alive(worker)


# ---- 7: a rebalance while NATS is down --------------------------------------------------------


async def test_rebalance_during_nats_outage_keeps_memory_flat_and_loses_nothing(
    ingest_env: IngestEnv, private_nats: LocalNats
) -> None:
    """A new assignment used to come unpaused: the worker consumed its partitions into an
    unbounded backlog while NATS was down. Here a worker leaves and another joins mid-outage."""
    ingest_env.nats = private_nats.url
    opts = ("--window-ms", "200", "--ack-timeout-s", "1", "--history-msgs", "100000")
    port = free_port()
    a, b = ingest_env.start(*opts, "--metrics-port", str(port)), ingest_env.start(*opts)
    rooms = [f"m{i}" for i in range(16)]
    records, _ = room_events(rooms, 96_000, size=120)
    await ingest_env.produce(records[:1600])
    await ingest_env.stream_blobs(1600, timeout=15)  # both flowing

    private_nats.stop()
    await ingest_env.produce(records[1600:])
    rss_a = psutil.Process(a.proc.pid).memory_info().rss
    c = ingest_env.start(*opts)  # joins the group while NATS is down
    b.stop()  # leaves it: A and C get every partition, mid-outage
    await asyncio.sleep(4)  # time to (wrongly) consume ~12 MB of events after the rebalance
    grown = (psutil.Process(a.proc.pid).memory_info().rss - rss_a) / 2**20
    held = await asyncio.to_thread(metric, port, "roomcast_ingest_in_flight_events")
    assert grown < 10, f"ingest grew {grown:.0f} MiB while NATS was down:\n{a.log_tail()}"
    assert held is not None and held <= 10_000, f"{held} events consumed while NATS was down"
    alive(a, c)

    private_nats.start()
    blobs = await ingest_env.stream_blobs(len(records), timeout=30)
    assert events_by_room(blobs, dedup=True) == {r: list(range(1, 6001)) for r in rooms}
    await until("every offset committed", lambda: fully_committed(ingest_env, 8))
    alive(a, c)


async def test_publishes_lost_with_a_dead_connection_are_sent_again_on_reconnect(
    ingest_env: IngestEnv, private_nats: LocalNats
) -> None:
    """A publish whose reply can never come (its server died with the request unanswered) used
    to wait out --ack-timeout-s after the reconnect, and its room's later blobs behind it. Every
    unacknowledged publish now goes again (same Msg-Id) as soon as the connection is back."""
    ingest_env.nats = private_nats.url
    worker = ingest_env.start("--window-ms", "100", "--ack-timeout-s", "120",
                              "--history-msgs", "100000")  # fmt: skip
    rooms = [f"r{i}" for i in range(4)]
    records, _ = room_events(rooms, 400)
    await ingest_env.produce(records[:200])
    await ingest_env.stream_blobs(200, timeout=30)  # flowing

    pid = private_nats.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the server takes the requests in, and never answers them
    try:
        await ingest_env.produce(records[200:])
        await asyncio.sleep(2)  # every room's blob is published and waits for its ack
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
    private_nats.stop()
    private_nats.start()  # same port, same store: the client reconnects
    back = time.monotonic()

    blobs = await ingest_env.stream_blobs(len(records), timeout=20)
    took = time.monotonic() - back
    assert events_by_room(blobs, dedup=True) == {r: list(range(1, 101)) for r in rooms}, (
        f"not all stored {took:.1f}s after NATS came back:\n{worker.log_tail()}"
    )
    alive(worker)


# ---- 8: the stream's settings and failed publishes --------------------------------------------


async def test_existing_stream_keeps_the_operators_settings(ingest_env: IngestEnv) -> None:
    nc = await nats.connect(ingest_env.nats)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=ingest_env.stream, subjects=[f"{ingest_env.history}.>"],
                         description="set by ops", max_bytes=64 * 2**20, max_msgs=50_000,
                         max_msgs_per_subject=5, num_replicas=1)
        )  # fmt: skip
        worker = ingest_env.start("--history-msgs", "77")
        await ingest_env.produce([(b"st", b'{"seq":1}')])
        await ingest_env.stream_blobs(1, timeout=15)
        info = await js.stream_info(ingest_env.stream)
    finally:
        await nc.close()
    cfg = info.config
    assert (cfg.description, cfg.max_bytes, cfg.max_msgs) == ("set by ops", 64 * 2**20, 50_000)
    assert cfg.max_msgs_per_subject == 77  # roomcast's own setting is applied
    alive(worker)


def test_stream_update_never_lowers_replicas_and_keeps_foreign_settings() -> None:
    from nats.js.api import RePublish

    from roomcast.ingest.worker import stream_settings

    # A stream of the older layout (over the subjects gateways subscribe to), an operator's extra.
    existing = StreamConfig(name="S", subjects=["x.room.>", "ops.extra"], num_replicas=3,
                            max_bytes=10, max_msgs_per_subject=5, max_age=60.0)  # fmt: skip
    republish = RePublish(src="x.history.>", dest="x.room.>")
    wanted = StreamConfig(name="S", subjects=["x.history.>"], num_replicas=1,
                          max_msgs_per_subject=100, max_age=120.0, duplicate_window=120.0,
                          republish=republish, allow_direct=True)  # fmt: skip
    update = stream_settings(existing, wanted)
    assert update is not None
    assert update.num_replicas == 3 and update.max_bytes == 10
    # x.room.> would be republished into itself: it goes; the operator's own subject stays
    assert update.subjects == ["ops.extra", "x.history.>"]
    assert (update.republish, update.allow_direct) == (republish, True)
    assert (update.max_msgs_per_subject, update.max_age) == (100, 120.0)
    more = dataclasses.replace(wanted, num_replicas=5)
    raised = stream_settings(existing, more)
    assert raised is not None and raised.num_replicas == 5
    assert stream_settings(update, wanted) is None  # nothing to change: no update at all


async def test_failed_publishes_are_counted_and_warned_about_rate_limited(
    ingest_env: IngestEnv,
) -> None:
    """Publishes that JetStream does not take (here: an operator deleted the stream) used to be
    logged at debug only. Now: a counter, a warning at most every 10 s, and the stream is set
    up again, so delivery resumes."""
    port = free_port()
    worker = ingest_env.start("--window-ms", "0", "--ack-timeout-s", "1", "--history-msgs", "1000",
                              "--metrics-port", str(port))  # fmt: skip
    await ingest_env.produce([(b"pf", b'{"seq":1}')])
    await ingest_env.stream_blobs(1, timeout=15)
    nc = await nats.connect(ingest_env.nats)
    try:
        await nc.jetstream().delete_stream(ingest_env.stream)
    finally:
        await nc.close()
    await ingest_env.produce([(b"pf", b'{"seq":%d}' % i) for i in range(2, 202)], rate=100)
    blobs = await ingest_env.stream_blobs(200, timeout=15)  # (a blob sent twice counts twice)
    # Every event is stored once the stream is back (those refused meanwhile are sent again;
    # subscribers get each one only once it is stored: tests/ingest/test_history.py).
    assert set(events_by_room(blobs)["pf"]) == set(range(2, 202))
    failures = await asyncio.to_thread(metric, port, "roomcast_ingest_publish_failures_total")
    assert failures and failures >= 1
    warnings = [line for line in worker.log_path.read_text().splitlines()
                if "JetStream publish failed" in line]  # fmt: skip
    assert 1 <= len(warnings) <= 2, warnings
    alive(worker)


# ---- #9: a normal start logs no error --------------------------------------------------------


def test_transient_group_coordinator_errors_are_logged_as_info() -> None:
    import roomcast.ingest.worker  # noqa: F401  (installs the filter)

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("aiokafka.consumer.group_coordinator")
    handler = Keep()
    logger.addHandler(handler)
    # Other tests in this process may have configured logging (a disabled logger, a raised
    # threshold): this one is about the filter alone.
    saved = logger.disabled, logger.level, logging.root.manager.disable
    logger.disabled = False
    logger.setLevel(logging.DEBUG)
    logging.disable(logging.NOTSET)
    try:
        from aiokafka.errors import GroupAuthorizationFailedError, GroupCoordinatorNotAvailableError

        logger.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
        logger.error("Group Coordinator Request failed: %s", GroupAuthorizationFailedError())
    finally:
        logger.removeHandler(handler)
        logger.disabled, level, disabled_below = saved
        logger.setLevel(level)
        logging.disable(disabled_below)
    assert [r.levelname for r in records] == ["INFO", "ERROR"]
