"""One ingest worker: the I/O around roomcast.core's merge window and commit tracking.

Loop: fetch a batch from Kafka -> check each record (room key, UTF-8 JSON value; bad ones are
queued for the dead-letter topic, written by a task of their own) -> MergeWindow.add -> publish
the blobs that are due to JetStream, pipelined (acks come back as futures) -> commit each
partition's offset below its oldest unacked event -> pause exactly the partitions that must not
be consumed now (NATS down or too much unacked: all; dead letters stuck: theirs).

No outage stops the worker: it starts without NATS or Kafka and waits for them, and a bad record
or an unwritable dead-letter topic holds back at most its own partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
import nats.errors
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    for_code,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RePublish, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from roomcast.core.blob import PRODUCED_HEADER, check_event, validate_json
from roomcast.core.errors import EventError
from roomcast.core.merge import MergeWindow, PendingBlob
from roomcast.core.natsauth import nats_connect_options, nats_servers
from roomcast.core.positions import PartitionOffsets
from roomcast.core.rooms import all_subjects, room_error, room_subject, subjects_overlap
from roomcast.ingest import metrics
from roomcast.ingest.config import IngestConfig
from roomcast.ingest.deadletters import DeadLetter, DeadLetterWriter
from roomcast.ingest.kafka_auth import client_options

log = logging.getLogger("roomcast.ingest")

_NO_KEY = "no_key"
_BAD_ROOM = "bad_room"
_TRANSIENT_COORDINATOR_ERRORS = (
    "GroupCoordinatorNotAvailableError",
    "NotCoordinatorForGroupError",
    "CoordinatorLoadInProgressError",
)


class _TransientAsInfo(logging.Filter):
    """aiokafka logs "Group Coordinator Request failed" at error level while the coordinator is
    still being elected, which is every normal start on a fresh cluster; it retries by itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and any(
            name in str(arg) for arg in record.args or () for name in _TRANSIENT_COORDINATOR_ERRORS
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("aiokafka.consumer.group_coordinator").addFilter(_TransientAsInfo())


class _Every:
    """Lets a repeated message through at most once per `interval_s`; counts the others."""

    __slots__ = ("_interval", "_next", "suppressed")

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._next = 0.0
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            return True
        self.suppressed += 1
        return False


def stream_settings(existing: StreamConfig, wanted: StreamConfig) -> StreamConfig | None:
    """The update roomcast makes to an existing stream, or None if it needs none.

    roomcast owns only what its delivery depends on: its history subjects being in the stream,
    the republish of every stored blob to the subjects gateways subscribe to, direct gets, the
    per-room history (count and age) and the dedup window. Subjects an operator added stay, except
    those that overlap the republish destination (the stream would republish into itself, which
    JetStream refuses): a stream of the older layout, over `roomcast.room.>` itself, is thus moved
    to `roomcast.history.>` in place, keeping its messages and its creation time (the epoch).
    Replicas are raised to `wanted`'s, never lowered; every other setting (limits, placement,
    description, ...) is the operator's.
    """
    dest = wanted.republish.dest if wanted.republish is not None else None
    subjects = [s for s in existing.subjects or [] if not (dest and subjects_overlap(s, dest))]
    subjects += [s for s in wanted.subjects or [] if s not in subjects]
    replicas = max(existing.num_replicas or 1, wanted.num_replicas or 1)
    update = dataclasses.replace(
        existing,
        subjects=subjects,
        republish=wanted.republish,
        allow_direct=wanted.allow_direct,
        max_msgs_per_subject=wanted.max_msgs_per_subject,
        max_age=wanted.max_age,
        duplicate_window=wanted.duplicate_window,
        num_replicas=replicas,
    )
    return None if update == existing else update


class _JetStream(JetStreamContext):
    """nats-py's JetStream context, with publish_async's refusals delivered to the ack future.

    nats-py (2.16 at least) raises the error of a refused publish (a stream answering
    "409 duplicate message id is in process", "503", "message size exceeds maximum", ...) inside
    its reply handler instead of setting it on the future (nats.py issue 985): the future stayed
    pending until the ack timeout and the error only reached the connection's error callback.
    Here it fails the future at once, so the blob is retried after a short pause."""

    async def _handle_async_reply(self, msg: Msg) -> None:
        try:
            await super()._handle_async_reply(msg)
        except APIError as exc:
            token = msg.subject[len(self._nc._inbox_prefix) + 22 + 2 :]  # as nats-py parses it
            future = self._publish_async_futures.get(token)
            if future is not None and not future.done():
                future.set_exception(exc)


@dataclass(slots=True)
class _InFlight:
    seq: int
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
        # A new assignment starts unpaused: pause what must be before anything is fetched.
        self.worker._flow_control()


class IngestWorker:
    """Consume -> merge -> publish -> commit, for one member of the consumer group."""

    def __init__(self, config: IngestConfig) -> None:
        self.cfg = config
        self.window = MergeWindow(config.window_s, config.max_blob_events, config.max_blob_bytes)
        self.offsets: dict[int, PartitionOffsets] = {}
        # Every blob handed to JetStream and not yet acked, oldest first. Per room (history
        # subject) only the oldest is ever sent: the others wait in `_rooms_unacked` behind it.
        self.in_flight: dict[int, _InFlight] = {}
        self._rooms_unacked: dict[str, deque[_InFlight]] = {}  # subject -> its unacked, in order
        self._sent: dict[int, _InFlight] = {}  # the blobs sent and not acked, by time of sending
        # Set on reconnect: what was sent before it can no longer be acked (the reply would go
        # to the old connection), so it goes again at once instead of after --ack-timeout-s.
        self._lost_before = 0.0
        self.held = 0  # blobs waiting for an earlier blob of their room to be acked
        self._tasks: set[asyncio.Task[None]] = set()
        self.backlog: deque[PendingBlob] = deque()  # due blobs waiting for NATS to come back
        self.stats = _Stats()
        self._seq = 0
        self._rooms: dict[bytes | None, str | tuple[str, str]] = {}
        self._subjects: dict[str, str] = {}
        self._paused = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dead_letters: DeadLetterWriter | None = None
        self._nc: NATS | None = None
        self._js: Any = None
        self._stream_ready = False
        self._nats_task: asyncio.Task[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._publish_warning = _Every(10.0)
        self._republish_log = _Every(10.0)
        self._dead_letter_log: dict[str, _Every] = {}
        self._closing = False
        self.last_turn: float | None = None  # monotonic time of the loop's last turn (/healthz)

    # ---- start / stop -------------------------------------------------------------------------

    async def _connect_nats(self, stop: asyncio.Event) -> None:
        """Connect to NATS and set up the stream, retrying with backoff until both are done.

        Runs beside the consume loop: while it has not succeeded, consumption stays paused."""
        delay = 0.5
        while not stop.is_set():
            try:
                if self._nc is None:
                    self._nc = await self._nats_client()
                    self._js = _JetStream(self._nc, publish_async_max_pending=100_000)
                await self._ensure_stream()
                self._stream_ready = True
                return
            except Exception as exc:  # down, no JetStream yet, or a stream it cannot set up
                log.warning(
                    "NATS/JetStream not ready (%s); consumption paused; retrying in %.1fs",
                    exc or type(exc).__name__, delay, extra={"nats": self.cfg.nats},
                )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10)

    async def _nats_client(self) -> NATS:
        async def disconnected() -> None:
            if self._closing:
                return
            log.warning(
                "NATS disconnected; pausing consumption until it is back",
                extra={"nats": self.cfg.nats},
            )

        async def reconnected() -> None:
            self._lost_before = time.monotonic()
            log.info("NATS reconnected; resuming", extra={"nats": self.cfg.nats})

        errors = _Every(10.0)  # while NATS is down, nats-py reports each reconnect attempt

        async def error(exc: Exception) -> None:
            if errors.ready():
                log.warning("NATS error: %s", exc, extra={"repeats": errors.suppressed + 1})
                errors.suppressed = 0

        return await nats.connect(
            nats_servers(self.cfg.nats),
            name="roomcast-ingest",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            pending_size=64 * 1024 * 1024,
            **nats_connect_options(self.cfg),
        )

    async def _ensure_stream(self) -> None:
        """Create the stream if it is missing; on an existing one, change only what roomcast owns
        (see `stream_settings`): an operator's settings, and its replicas, are kept.

        The stream captures the history subjects and republishes every blob it stores to the
        subject gateways subscribe to, with its sequence and the room's previous one: a gateway
        only ever sees stored blobs, chained in the order the history has them."""
        history = all_subjects(self.cfg.history_prefix)
        cfg = StreamConfig(
            name=self.cfg.stream,
            subjects=[history],
            republish=RePublish(src=history, dest=all_subjects(self.cfg.subject_prefix)),
            allow_direct=True,  # gateways read older blobs with direct gets by subject
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=self.cfg.history_msgs,
            max_age=self.cfg.history_age_s,
            # at most the history's age: JetStream refuses a longer dedup window
            duplicate_window=min(self.cfg.duplicate_window_s, self.cfg.history_age_s),
            num_replicas=self.cfg.stream_replicas,
        )
        try:
            info = await self._js.stream_info(self.cfg.stream)
        except NotFoundError:
            await self._js.add_stream(cfg)
            log.info("created stream", extra={"stream": self.cfg.stream,
                                              "replicas": self.cfg.stream_replicas})  # fmt: skip
            return
        update = stream_settings(info.config, cfg)
        if update is not None:
            await self._js.update_stream(update)
            log.info("updated stream", extra={"stream": self.cfg.stream,
                                              "replicas": update.num_replicas})  # fmt: skip

    async def _start_kafka(self, stop: asyncio.Event) -> None:
        delay = 0.5
        auth = client_options(self.cfg)
        while not stop.is_set():
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.cfg.kafka,
                **auth,
                group_id=self.cfg.group,
                group_instance_id=self.cfg.instance_id or None,
                session_timeout_ms=self.cfg.session_timeout_ms,
                heartbeat_interval_ms=min(3000, self.cfg.session_timeout_ms // 3),
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
                client_id="roomcast-ingest-dlq",
                request_timeout_ms=int(self.cfg.dlq_timeout_s * 1000),
                **auth,
            )  # fmt: skip
            try:
                await consumer.start()
                await producer.start()
                await self._ensure_topics()
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
            self._dead_letters = DeadLetterWriter(
                producer, self.cfg.dlq_topic, self._dead_letter_written,
                attempt_timeout_s=self.cfg.dlq_timeout_s, backoff_max_s=self.cfg.dlq_retry_max_s,
            )  # fmt: skip
            self._dead_letters.start()
            return

    async def _ensure_topics(self) -> None:
        """Create the events and dead-letter topics if they are missing and we may (idempotent:
        an existing topic is never changed; without the right to create, say so and go on)."""
        cfg = self.cfg
        admin = AIOKafkaAdminClient(
            bootstrap_servers=cfg.kafka,
            client_id="roomcast-ingest-admin",
            request_timeout_ms=10000,
            **client_options(cfg),  # the same TLS / SASL settings as the consumer
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = {cfg.topic: cfg.topic_partitions, cfg.dlq_topic: 1}
            missing = {name: n for name, n in wanted.items() if name not in existing}
            if not missing:
                return
            brokers = len((await admin.describe_cluster()).get("brokers") or [None])
            replicas = min(3, brokers)
            resp = await admin.create_topics(
                [NewTopic(name, n, replicas) for name, n in missing.items()]
            )
            for name, code, *rest in resp.topic_errors:
                err = for_code(code) if code else None
                if err is None:
                    log.info("created topic", extra={"topic": name, "partitions": missing[name],
                                                     "replicas": replicas})  # fmt: skip
                elif err is not TopicAlreadyExistsError:  # another worker was quicker: fine
                    raise err(rest[0] if rest and rest[0] else name)
        except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError) as exc:
            log.info("not allowed to create topics (%s); they must exist", exc,
                     extra={"topics": [cfg.topic, cfg.dlq_topic]})  # fmt: skip
        except KafkaConnectionError:
            raise
        except (KafkaError, TimeoutError) as exc:
            log.warning("could not create missing topics (%s); going on without", exc,
                        extra={"topics": [cfg.topic, cfg.dlq_topic]})  # fmt: skip
        finally:
            await admin.close()

    async def run(self, stop: asyncio.Event) -> None:
        self._nats_task = asyncio.create_task(self._connect_nats(stop), name="roomcast-nats")
        await self._start_kafka(stop)
        if self._consumer is None:
            await self._close_nats()
            return
        log.info(
            "ingest running",
            extra={"topic": self.cfg.topic, "group": self.cfg.group,
                   "window_ms": self.cfg.window_ms, "stream": self.cfg.stream,
                   "subjects": all_subjects(self.cfg.history_prefix),
                   "republished_to": all_subjects(self.cfg.subject_prefix)},
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
        if self._dead_letters is not None:
            await self._dead_letters.close()
        if self._consumer is not None:
            if self.cfg.instance_id:
                # A static member does not leave the group on close (aiokafka, like Kafka's Java
                # client): its partitions would wait out the session timeout. Shutting down is
                # not restarting, so leave as a dynamic member does: they move on at once.
                self._consumer._coordinator._group_instance_id = None
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        await self._close_nats()
        log.info("ingest stopped", extra={"events": self.stats.events, "blobs": self.stats.blobs})

    async def _close_nats(self) -> None:
        self._closing = True
        for task in (self._nats_task, self._stream_task, *self._tasks):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
                self._dead_letter(r, *room)
                continue
            value = r.value
            # check_event's test, inlined for the common case; check_event says why when it fails.
            # JSON (msgspec skips it as Raw, which does not check the UTF-8 inside strings), then
            # UTF-8 (isascii() is a word-at-a-time scan; only other values pay a decode).
            ok = value is not None and len(value) <= max_bytes
            if ok:
                try:
                    validate(value)
                    if not value.isascii():
                        value.decode()
                except (msgspec.DecodeError, UnicodeDecodeError):
                    ok = False
            if not ok:
                try:
                    check_event(value, max_bytes)
                except EventError as exc:
                    self._dead_letter(r, exc.reason, str(exc))
                continue
            blobs = add(room, partition, offset, value, now, r.timestamp)  # type: ignore[arg-type]
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
            subject = self._subjects[room] = room_subject(room, self.cfg.history_prefix)
        return subject

    async def _publish(self, blob: PendingBlob) -> None:
        if self.backlog or not self._nats_up():
            self.backlog.append(blob)
            return
        await self._enqueue(blob)

    async def _enqueue(self, blob: PendingBlob) -> None:
        """Send `blob` now, unless an earlier blob of its room is not acked yet: then it waits,
        in order, and is sent once that one is (see `_acked`).

        This is what keeps every room's history in Kafka order whatever fails: a publish that
        errs or times out (a leader change, a reconnect, a refusal) is retried, with the same
        Nats-Msg-Id, before the room's next blob is even sent, so no later blob of the room can
        be stored ahead of it. Rooms do not wait for each other: the pipeline stays full."""
        self._seq += 1
        subject = self._subject(blob.room)
        entry = _InFlight(self._seq, blob, subject, blob.encode())
        self.in_flight[entry.seq] = entry
        queue = self._rooms_unacked.get(subject)
        if queue is not None:
            queue.append(entry)
            self.held += 1
            return
        self._rooms_unacked[subject] = deque((entry,))
        await self._send(entry)

    async def _send(self, entry: _InFlight) -> None:
        if self.in_flight.get(entry.seq) is not entry:  # handed over before its turn came
            return
        entry.attempts += 1
        entry.sent_at = time.monotonic()
        self._sent.pop(entry.seq, None)  # re-inserted: `_sent` stays in order of sending
        self._sent[entry.seq] = entry
        headers = {"Nats-Msg-Id": entry.blob.msg_id}
        if entry.blob.produced_ms >= 0:  # the gateways' delivery latency starts here
            headers[PRODUCED_HEADER] = str(entry.blob.produced_ms)
        try:
            fut = await self._js.publish_async(entry.subject, entry.data, headers=headers)
        except Exception as exc:  # disconnected, buffer full: the retry timer sends it again
            self._publish_failed(exc, entry)
            entry.future = None
            return
        if self.in_flight.get(entry.seq) is not entry:  # handed over meanwhile
            fut.cancel()
            return
        entry.future = fut
        fut.add_done_callback(lambda f, entry=entry: self._acked(entry, f))

    def _send_soon(self, entry: _InFlight) -> None:
        task = asyncio.ensure_future(self._send(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish_failed(self, exc: BaseException, entry: _InFlight) -> None:
        """Count every failed publish; say so at most every 10 s, with how many since."""
        metrics.PUBLISH_FAILURES.inc()
        # No stream answers (an operator deleted it?): set it up again, once at a time, whether
        # or not this failure is logged. Until then nothing is stored, so nothing is republished
        # to the gateways: the blob waits for its retry.
        if isinstance(exc, NoStreamResponseError | nats.errors.NoRespondersError) and (
            self._stream_task is None or self._stream_task.done()
        ):
            self._stream_task = asyncio.ensure_future(self._ensure_stream())
            self._stream_task.add_done_callback(self._stream_setup_done)
        warn = self._publish_warning
        if not warn.ready():
            return
        log.warning(
            "JetStream publish failed (%s); retrying every %.1fs", exc or type(exc).__name__,
            self.cfg.ack_timeout_s,
            extra={"room": entry.blob.room, "stream": self.cfg.stream,
                   "failures_since_last_warning": warn.suppressed + 1},
        )  # fmt: skip
        warn.suppressed = 0

    def _stream_setup_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("cannot set up stream %s: %s", self.cfg.stream, task.exception())

    def _acked(self, entry: _InFlight, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or entry.future is not fut:
            return  # superseded by a republish
        exc = fut.exception()
        if exc is not None:
            self._publish_failed(exc, entry)
            entry.future = None
            return
        if self.in_flight.pop(entry.seq, None) is None:
            return
        self._sent.pop(entry.seq, None)
        queue = self._rooms_unacked.get(entry.subject)
        if queue is not None and queue and queue[0] is entry:
            queue.popleft()
            if queue:  # stored: the room's next blob may go
                self.held -= 1
                self._send_soon(queue[0])
            else:
                del self._rooms_unacked[entry.subject]
        blob = entry.blob
        offsets = self.offsets.get(blob.partition)
        if offsets is not None:
            offsets.done(blob.offsets)
        self.stats.blobs += 1
        metrics.BLOBS_OUT.inc()
        metrics.EVENTS_PER_BLOB.observe(len(blob.offsets))
        metrics.PUBLISH_LATENCY.observe(time.monotonic() - entry.sent_at)

    def _nats_up(self) -> bool:
        return self._stream_ready and self._nc is not None and self._nc.is_connected

    async def _flush_backlog(self) -> None:
        while self.backlog and self._nats_up():
            await self._enqueue(self.backlog.popleft())

    def _retry_timed_out(self, now: float) -> None:
        """Send again every blob JetStream has not acked in time, or whose publish failed at
        least a retry interval ago (same Nats-Msg-Id: stored once). Only the oldest unacked blob
        of each room is ever sent (see `_enqueue`), so a retry cannot land behind a later one.
        After a reconnect, everything sent before it goes again now: no ack can come for it."""
        if not self._nats_up():
            return
        lost_before, self._lost_before = self._lost_before, 0.0
        if not self._sent:
            return
        timeout = self.cfg.ack_timeout_s
        retry = min(1.0, timeout)  # after a failed publish: paced, not every loop turn
        # `_sent` is in order of sending: nothing sent after `now - retry` can be due.
        stale = []
        for entry in self._sent.values():
            if entry.sent_at < lost_before:
                stale.append(entry)
                continue
            if now - entry.sent_at < retry:
                break
            if entry.future is None or now - entry.sent_at >= timeout:
                stale.append(entry)
        if not stale:
            return
        metrics.REPUBLISHED.inc(len(stale))
        if self._republish_log.ready():
            log.info("republishing blobs not acked in time",
                     extra={"blobs": len(stale),
                            "rounds": self._republish_log.suppressed + 1})  # fmt: skip
            self._republish_log.suppressed = 0
        for entry in stale:
            if entry.future is not None:
                entry.future.cancel()
                entry.future = None
            self._sent.pop(entry.seq, None)  # not due again until the resend is under way
            self._send_soon(entry)

    def _flow_control(self) -> None:
        """Pause exactly the partitions that must not be consumed now; memory stays bounded.

        All of them while NATS is down or too much is unacked; else those whose dead letters
        cannot be written. Compared with what the consumer has paused on every call, not with
        our own last decision: a rebalance hands out partitions unpaused."""
        consumer = self._consumer
        if consumer is None:
            return
        # Consumed and not yet acked: in a merge window, in the backlog, in flight to JetStream,
        # or a dead letter on its way (one len() per partition, not a walk over the blobs).
        unacked = sum(o.in_flight for o in self.offsets.values())
        metrics.IN_FLIGHT.set(unacked)
        metrics.HELD.set(self.held)
        nats_up = self._nats_up()
        pause_all = not nats_up or unacked > self.cfg.max_in_flight
        assigned = consumer.assignment()
        if pause_all:
            want = set(assigned)
        else:
            blocked = self._dead_letters.blocked if self._dead_letters is not None else ()
            want = {tp for tp in assigned if tp.partition in blocked} if blocked else set()
        paused = consumer.paused()
        if want != paused:
            if paused - want:
                consumer.resume(*(paused - want))
            if want - paused:
                consumer.pause(*(want - paused))
            metrics.PAUSED_PARTITIONS.set(len(want))
        if pause_all != self._paused:
            # Down NATS is news; a full pipeline under a backlog is ordinary flow control.
            log.log(
                logging.WARNING if pause_all and not nats_up else logging.DEBUG,
                "consumption paused" if pause_all else "consumption resumed",
                extra={"nats_up": nats_up, "unacked": unacked},
            )
            self._paused = pause_all
            metrics.PAUSED.set(int(pause_all))

    # ---- dead letters -------------------------------------------------------------------------

    def _dead_letter(self, record: Any, reason: str, message: str) -> None:
        """Queue a record for the dead-letter topic; its offset stays pending until written."""
        assert self._dead_letters is not None
        self._dead_letters.add(DeadLetter(record.topic, record.partition, record.offset,
                                          record.key, record.value, reason, message))  # fmt: skip
        self.stats.dead_letters += 1
        # One line per reason per second at most: a producer sending nothing but bad records
        # must not turn the worker into a log writer (the metric counts every one).
        every = self._dead_letter_log.get(reason)
        if every is None:
            every = self._dead_letter_log[reason] = _Every(1.0)
        if every.ready():
            log.warning("dead letter", extra={"reason": reason, "partition": record.partition,
                                              "offset": record.offset, "error": message,
                                              "not_logged_since": every.suppressed})  # fmt: skip
            every.suppressed = 0

    def _dead_letter_written(self, letter: DeadLetter) -> None:
        offsets = self.offsets.get(letter.partition)
        if offsets is not None:
            offsets.done([letter.offset])

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

        letters = self._dead_letters

        def blobs_pending() -> bool:
            return any(partitions is None or e.blob.partition in partitions
                       for e in self.in_flight.values()) or bool(self.backlog)  # fmt: skip

        def letters_pending() -> bool:
            return letters is not None and letters.pending(partitions)

        while time.monotonic() < deadline:
            blobs = blobs_pending()
            if not (letters_pending() or (blobs and self._nats_up())):
                break  # all settled, or only blobs that cannot be acked before NATS is back
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
        # Forget everything of these partitions: the new owner replays it from the commit. Kept,
        # it would be published late (or never) and no longer count against --max-in-flight.
        for p in partitions:
            self.offsets.pop(p, None)
            self.stats.last_commit.pop(p, None)
            with contextlib.suppress(KeyError):  # its lag is the new owner's to export
                metrics.CONSUMER_LAG.remove(str(p))
        if self.backlog:
            self.backlog = deque(b for b in self.backlog if b.partition not in partitions)
        for seq in [s for s, e in self.in_flight.items() if e.blob.partition in partitions]:
            entry = self.in_flight.pop(seq)
            self._sent.pop(seq, None)
            if entry.future is not None:
                entry.future.cancel()
                entry.future = None
        for subject, queue in list(self._rooms_unacked.items()):
            kept = deque(e for e in queue if e.blob.partition not in partitions)
            if not kept:
                del self._rooms_unacked[subject]
                continue
            self._rooms_unacked[subject] = kept
            if kept[0] is not queue[0]:  # a room fed by two partitions (the topic grew): go on
                self._send_soon(kept[0])
        self.held = sum(len(q) - 1 for q in self._rooms_unacked.values())
        if self._dead_letters is not None:
            self._dead_letters.forget(partitions)
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
