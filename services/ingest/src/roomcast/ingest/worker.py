"""One ingest worker: the I/O around roomcast.core's merge window and commit tracking.

Loop: fetch a batch from Kafka -> check each record (room key, JSON value; bad ones to the
dead-letter topic) -> MergeWindow.add -> publish the blobs that are due to JetStream, pipelined
(acks come back as futures) -> commit each partition's offset below its oldest unacked event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from roomcast.core.blob import check_event, validate_json
from roomcast.core.errors import EventError
from roomcast.core.merge import MergeWindow, PendingBlob
from roomcast.core.positions import PartitionOffsets
from roomcast.core.rooms import all_subjects, room_error, room_subject
from roomcast.ingest import metrics
from roomcast.ingest.config import IngestConfig
from roomcast.ingest.kafka_auth import client_options

log = logging.getLogger("roomcast.ingest")

_NO_KEY = "no_key"
_BAD_ROOM = "bad_room"


@dataclass(slots=True)
class _InFlight:
    blob: PendingBlob
    subject: str
    data: bytes
    sent_at: float = 0.0
    future: asyncio.Future[Any] | None = None
    attempts: int = 0


@dataclass(slots=True)
class _Stats:
    events: int = 0
    blobs: int = 0
    dead_letters: int = 0
    commits: int = 0
    last_commit: dict[int, int] = field(default_factory=dict)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.hand_over({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)}
        )


class IngestWorker:
    """Consume -> merge -> publish -> commit, for one member of the consumer group."""

    def __init__(self, config: IngestConfig) -> None:
        self.cfg = config
        self.window = MergeWindow(config.window_s, config.max_blob_events, config.max_blob_bytes)
        self.offsets: dict[int, PartitionOffsets] = {}
        self.in_flight: dict[int, _InFlight] = {}  # insertion order = publish order
        self.backlog: deque[PendingBlob] = deque()  # due blobs waiting for NATS to come back
        self.stats = _Stats()
        self._seq = 0
        self._rooms: dict[bytes | None, str | tuple[str, str]] = {}
        self._subjects: dict[str, str] = {}
        self._paused = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._nc: nats.NATS | None = None
        self._js: Any = None
        self._dlq_pending: set[asyncio.Future[Any]] = set()
        self._closing = False
        self.last_turn: float | None = None  # monotonic time of the loop's last turn (/healthz)

    # ---- start / stop -------------------------------------------------------------------------

    async def _connect_nats(self) -> None:
        async def disconnected() -> None:
            if self._closing:
                return
            log.warning(
                "NATS disconnected; pausing consumption until it is back",
                extra={"nats": self.cfg.nats},
            )

        async def reconnected() -> None:
            log.info("NATS reconnected; resuming", extra={"nats": self.cfg.nats})

        async def error(exc: Exception) -> None:
            log.warning("NATS error: %s", exc)

        self._nc = await nats.connect(
            self.cfg.nats,
            name="roomcast-ingest",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            pending_size=64 * 1024 * 1024,
        )
        self._js = self._nc.jetstream(publish_async_max_pending=100_000)
        await self._ensure_stream()

    async def _ensure_stream(self) -> None:
        """Create the stream, or bring its settings to the configured ones (idempotent)."""
        cfg = StreamConfig(
            name=self.cfg.stream,
            subjects=[all_subjects(self.cfg.subject_prefix)],
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=self.cfg.history_msgs,
            max_age=self.cfg.history_age_s,
            duplicate_window=self.cfg.duplicate_window_s,
            num_replicas=self.cfg.stream_replicas,
        )
        try:
            await self._js.stream_info(self.cfg.stream)
        except NotFoundError:
            await self._js.add_stream(cfg)
            log.info("created stream", extra={"stream": self.cfg.stream})
        else:
            await self._js.update_stream(cfg)

    async def _start_kafka(self, stop: asyncio.Event) -> None:
        delay = 0.5
        auth = client_options(self.cfg)
        while not stop.is_set():
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.cfg.kafka,
                **auth,
                group_id=self.cfg.group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=self.cfg.fetch_max_wait_ms,
                max_partition_fetch_bytes=4 * 1024 * 1024,
                fetch_max_bytes=32 * 1024 * 1024,
                max_poll_records=self.cfg.max_poll_records,
                client_id="roomcast-ingest",
            )
            producer = AIOKafkaProducer(
                bootstrap_servers=self.cfg.kafka, acks="all", linger_ms=5,
                client_id="roomcast-ingest-dlq", **auth,
            )  # fmt: skip
            try:
                await consumer.start()
                await producer.start()
            except KafkaConnectionError as exc:
                await consumer.stop()
                await producer.stop()
                log.warning(
                    "Kafka unreachable (%s); retrying in %.1fs", exc, delay,
                    extra={"kafka": self.cfg.kafka},
                )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10)
                continue
            consumer.subscribe([self.cfg.topic], listener=_Rebalance(self))
            self._consumer, self._producer = consumer, producer
            return

    async def run(self, stop: asyncio.Event) -> None:
        await self._connect_nats()
        await self._start_kafka(stop)
        if self._consumer is None:
            await self._close_nats()
            return
        log.info(
            "ingest running",
            extra={"topic": self.cfg.topic, "group": self.cfg.group,
                   "window_ms": self.cfg.window_ms, "stream": self.cfg.stream,
                   "subjects": all_subjects(self.cfg.subject_prefix)},
        )  # fmt: skip
        try:
            await self._loop(stop)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Flush what is buffered, wait for acks, commit, leave the group."""
        for blob in self.window.drain():
            await self._publish(blob)
        await self._settle(within_s=10)
        with contextlib.suppress(KafkaError):
            await self._commit()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        await self._close_nats()
        log.info("ingest stopped", extra={"events": self.stats.events, "blobs": self.stats.blobs})

    async def _close_nats(self) -> None:
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()

    # ---- the loop -----------------------------------------------------------------------------

    async def _loop(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None
        window = self.window
        next_commit = next_lag = time.monotonic()
        while not stop.is_set():
            due = window.next_due()
            now = time.monotonic()
            wait_ms = 50 if due is None else max(0, min(50, int((due - now) * 1000) + 1))
            batches = await consumer.getmany(timeout_ms=wait_ms)
            now = time.monotonic()
            self.last_turn = now
            for tp, records in batches.items():
                await self._take(tp.partition, records, now)
            for blob in window.due(now):
                await self._publish(blob)
            await self._flush_backlog()
            self._retry_timed_out(now)
            self._flow_control()
            if now >= next_commit:
                next_commit = now + self.cfg.commit_interval_s
                try:
                    await self._commit()
                except KafkaError as exc:
                    log.warning("commit failed (%s); will retry", exc)
            if now >= next_lag:
                next_lag = now + 2.0
                self._update_lag()

    async def _take(self, partition: int, records: list[Any], now: float) -> None:
        """The hot loop: one pass over a fetched batch of one partition."""
        offsets = self.offsets.get(partition)
        if offsets is None:
            offsets = self.offsets[partition] = PartitionOffsets()
        rooms = self._rooms
        add = self.window.add
        max_bytes = self.cfg.max_event_bytes
        validate = validate_json
        # Every offset is pending from now until its blob (or dead letter) is acknowledged.
        offsets.consumed_many([r.offset for r in records])
        for r in records:
            offset = r.offset
            room = rooms.get(r.key)
            if room is None:
                room = rooms[r.key] = self._check_key(r.key)
                if len(rooms) > 200_000:
                    rooms.clear()
            if type(room) is tuple:
                await self._dead_letter(r, *room)
                continue
            value = r.value
            # check_event's test, inlined for the common case; check_event says why when it fails.
            ok = value is not None and len(value) <= max_bytes
            if ok:
                try:
                    validate(value)
                except msgspec.DecodeError:
                    ok = False
            if not ok:
                try:
                    check_event(value, max_bytes)
                except EventError as exc:
                    await self._dead_letter(r, exc.reason, str(exc))
                continue
            blobs = add(room, partition, offset, value, now)  # type: ignore[arg-type]
            if blobs:  # usually not: most events wait in their room's window
                for blob in blobs:
                    await self._publish(blob)
        self.stats.events += len(records)
        metrics.EVENTS_IN.inc(len(records))

    @staticmethod
    def _check_key(key: bytes | None) -> str | tuple[str, str]:
        """The room a record key names, or (reason, message) for the dead-letter topic."""
        if not key:
            return (_NO_KEY, "record has no key; the key must be the room name")
        try:
            room = key.decode()
        except UnicodeDecodeError:
            return (_BAD_ROOM, "record key is not UTF-8")
        why = room_error(room)
        if why is None and room.startswith("_") and room != "_all":
            why = f"room names starting with '_' are reserved (got {room!r})"
        return room if why is None else (_BAD_ROOM, why)

    # ---- publishing ---------------------------------------------------------------------------

    def _subject(self, room: str) -> str:
        subject = self._subjects.get(room)
        if subject is None:
            if len(self._subjects) > 200_000:
                self._subjects.clear()
            subject = self._subjects[room] = room_subject(room, self.cfg.subject_prefix)
        return subject

    async def _publish(self, blob: PendingBlob) -> None:
        if self.backlog or not self._nats_up():
            self.backlog.append(blob)
            return
        self._seq += 1
        entry = _InFlight(blob, self._subject(blob.room), blob.encode())
        self.in_flight[self._seq] = entry
        await self._send(self._seq, entry)

    async def _send(self, seq: int, entry: _InFlight) -> None:
        entry.attempts += 1
        entry.sent_at = time.monotonic()
        try:
            fut = await self._js.publish_async(
                entry.subject, entry.data, headers={"Nats-Msg-Id": entry.blob.msg_id}
            )
        except Exception as exc:  # disconnected, buffer full: the retry timer sends it again
            log.debug("publish failed: %s", exc)
            entry.future = None
            return
        entry.future = fut
        fut.add_done_callback(lambda f, seq=seq, entry=entry: self._acked(seq, entry, f))

    def _acked(self, seq: int, entry: _InFlight, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or entry.future is not fut:
            return  # superseded by a republish
        if fut.exception() is not None:
            log.warning(
                "JetStream refused a blob (%s); will retry",
                fut.exception(),
                extra={"room": entry.blob.room},
            )
            entry.future = None
            return
        if self.in_flight.pop(seq, None) is None:
            return
        blob = entry.blob
        offsets = self.offsets.get(blob.partition)
        if offsets is not None:
            offsets.done(blob.offsets)
        self.stats.blobs += 1
        metrics.BLOBS_OUT.inc()
        metrics.EVENTS_PER_BLOB.observe(len(blob.offsets))
        metrics.PUBLISH_LATENCY.observe(time.monotonic() - entry.sent_at)

    def _nats_up(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def _flush_backlog(self) -> None:
        while self.backlog and self._nats_up():
            blob = self.backlog.popleft()
            self._seq += 1
            entry = _InFlight(blob, self._subject(blob.room), blob.encode())
            self.in_flight[self._seq] = entry
            await self._send(self._seq, entry)

    def _retry_timed_out(self, now: float) -> None:
        """Republish, in order, every blob JetStream has not acked in time (same Msg-Id: stored
        once). Resending all of them keeps a room's blobs in order in the stream."""
        if not self.in_flight or not self._nats_up():
            return
        oldest = next(iter(self.in_flight.values()))
        if oldest.future is not None and now - oldest.sent_at < self.cfg.ack_timeout_s:
            return
        stale = [(s, e) for s, e in self.in_flight.items()
                 if e.future is None or now - e.sent_at >= self.cfg.ack_timeout_s]  # fmt: skip
        metrics.REPUBLISHED.inc(len(stale))
        log.info("republishing blobs not acked in time", extra={"blobs": len(stale)})
        for seq, entry in stale:
            if entry.future is not None:
                entry.future.cancel()
            task = asyncio.ensure_future(self._send(seq, entry))
            task.add_done_callback(lambda t: t.exception())

    def _flow_control(self) -> None:
        """Pause consumption while NATS is down or too much is unacked; memory stays bounded."""
        consumer = self._consumer
        assert consumer is not None
        # Consumed and not yet acked: in a merge window, in the backlog, in flight to JetStream,
        # or a dead letter on its way (one len() per partition, not a walk over the blobs).
        unacked = sum(o.in_flight for o in self.offsets.values())
        metrics.IN_FLIGHT.set(unacked)
        should_pause = not self._nats_up() or unacked > self.cfg.max_in_flight
        if should_pause != self._paused:
            parts = consumer.assignment()
            if should_pause:
                consumer.pause(*parts)
                # Down NATS is news; a full pipeline under a backlog is ordinary flow control.
                log.log(
                    logging.WARNING if not self._nats_up() else logging.DEBUG,
                    "consumption paused",
                    extra={"nats_up": self._nats_up(), "unacked": unacked},
                )
            else:
                consumer.resume(*parts)
                log.debug("consumption resumed")
            self._paused = should_pause
            metrics.PAUSED.set(int(should_pause))

    # ---- dead letters -------------------------------------------------------------------------

    async def _dead_letter(self, record: Any, reason: str, message: str) -> None:
        producer = self._producer
        assert producer is not None
        headers = [
            ("roomcast-error", reason.encode()),
            ("roomcast-error-message", message.encode()[:1000]),
            ("roomcast-topic", record.topic.encode()),
            ("roomcast-partition", str(record.partition).encode()),
            ("roomcast-offset", str(record.offset).encode()),
        ]
        fut = await producer.send(self.cfg.dlq_topic, record.value, key=record.key, headers=headers)
        partition, offset = record.partition, record.offset
        self._dlq_pending.add(fut)

        def done(f: asyncio.Future[Any]) -> None:
            self._dlq_pending.discard(f)
            if f.cancelled() or f.exception() is not None:
                log.error("dead letter not written (%s); offset stays uncommitted",
                          None if f.cancelled() else f.exception(),
                          extra={"partition": partition, "offset": offset})  # fmt: skip
                return
            offsets = self.offsets.get(partition)
            if offsets is not None:
                offsets.done([offset])

        fut.add_done_callback(done)
        self.stats.dead_letters += 1
        metrics.DEAD_LETTERS.labels(reason).inc()
        log.warning("dead letter", extra={"reason": reason, "partition": partition,
                                          "offset": offset, "error": message})  # fmt: skip

    # ---- commits and rebalances ---------------------------------------------------------------

    async def _commit(self, partitions: set[int] | None = None) -> None:
        consumer = self._consumer
        assert consumer is not None
        assigned = {tp.partition for tp in consumer.assignment()}
        to_commit = {}
        for p, offsets in self.offsets.items():
            if p not in assigned or (partitions is not None and p not in partitions):
                continue
            off = offsets.committable()
            if off is not None and off != self.stats.last_commit.get(p):
                to_commit[TopicPartition(self.cfg.topic, p)] = off
        if to_commit:
            await consumer.commit(to_commit)
            for tp, off in to_commit.items():
                self.stats.last_commit[tp.partition] = off
            self.stats.commits += 1
            metrics.COMMITS.inc()

    async def _settle(self, within_s: float, partitions: set[int] | None = None) -> None:
        """Wait until the blobs (and dead letters) of `partitions` are acknowledged."""
        deadline = time.monotonic() + within_s

        def pending() -> bool:
            if self._dlq_pending:
                return True
            return any(partitions is None or e.blob.partition in partitions
                       for e in self.in_flight.values()) or bool(self.backlog)  # fmt: skip

        while pending() and time.monotonic() < deadline:
            await self._flush_backlog()
            self._retry_timed_out(time.monotonic())
            await asyncio.sleep(0.01)

    async def hand_over(self, partitions: set[int]) -> None:
        """Partitions revoked: publish their buffered events, wait for acks, commit, forget them.

        If acks do not come in time, the new owner replays from the last commit (dedup absorbs it).
        """
        if not partitions:
            return
        for blob in self.window.drain(partitions):
            await self._publish(blob)
        await self._settle(within_s=self.cfg.ack_timeout_s, partitions=partitions)
        try:
            await self._commit(partitions)
        except KafkaError as exc:
            log.warning("commit on revoke failed (%s); the new owner replays", exc)
        for p in partitions:
            self.offsets.pop(p, None)
            self.stats.last_commit.pop(p, None)
        log.info("partitions handed over", extra={"partitions": sorted(partitions)})

    def _update_lag(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            offsets = self.offsets.get(tp.partition)
            if high is not None and offsets is not None and offsets.last_consumed >= 0:
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(
                    max(0, high - offsets.last_consumed - 1)
                )


async def run_ingest(config: IngestConfig, stop: asyncio.Event | None = None) -> IngestWorker:
    """Run one worker until `stop` is set (or forever); returns it for its stats."""
    worker = IngestWorker(config)
    await worker.run(stop or asyncio.Event())
    return worker
