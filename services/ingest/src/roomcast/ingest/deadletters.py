"""Dead letters: records that cannot become events, written to the dead-letter topic off the loop.

The consume loop only queues a dead letter (no I/O, never blocks). A task of its own writes the
queue to Kafka in consumption order and reports each acknowledged letter, so its offset can be
committed. When the topic cannot take them (missing, no leader, too few in-sync replicas, broker
down) it retries with exponential backoff, and the partitions whose letters are stuck are
`blocked`: the worker pauses exactly those partitions until their letters are written, so the
queue stays bounded and the other partitions keep flowing. Nothing here ever raises into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from roomcast.ingest import metrics

log = logging.getLogger("roomcast.ingest")

_BATCH = 500  # letters written per attempt


@dataclass(slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    message: str

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("roomcast-error", self.reason.encode()),
            ("roomcast-error-message", self.message.encode()[:1000]),
            ("roomcast-topic", self.topic.encode()),
            ("roomcast-partition", str(self.partition).encode()),
            ("roomcast-offset", str(self.offset).encode()),
        ]


class DeadLetterWriter:
    """Writes queued dead letters to `topic` in the background; see the module docstring."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        written: Callable[[DeadLetter], None],
        attempt_timeout_s: float = 5.0,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.queue: deque[DeadLetter] = deque()
        self.blocked: set[int] = set()  # partitions whose letters cannot be written now
        self._written = written
        self._timeout = attempt_timeout_s
        self._backoff_min = backoff_min_s
        self._backoff_max = backoff_max_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="roomcast-dead-letters")

    def add(self, letter: DeadLetter) -> None:
        """Queue a letter (from the consume loop: no I/O here)."""
        self.queue.append(letter)
        self._wake.set()

    def pending(self, partitions: set[int] | None = None) -> bool:
        if partitions is None:
            return bool(self.queue)
        return any(letter.partition in partitions for letter in self.queue)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their new owner replays and dead-letters these records again."""
        gone = set(partitions)
        if any(letter.partition in gone for letter in self.queue):
            self.queue = deque(letter for letter in self.queue if letter.partition not in gone)
        self.blocked -= gone
        metrics.DLQ_BLOCKED.set(len(self.blocked))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---- the writer task ----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._backoff_min
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self.queue[i] for i in range(min(_BATCH, len(self.queue)))]
            try:
                failed, error = await self._write(batch)
            except Exception as exc:  # never let the writer die: log, back off, retry
                failed, error = batch, f"{type(exc).__name__}: {exc}"
            if not failed:
                backoff = self._backoff_min
                if self.blocked:
                    log.warning(
                        "dead-letter topic writable again; resuming partitions",
                        extra={"dlq": self.topic, "partitions": sorted(self.blocked)},
                    )
                    self.blocked.clear()
                    metrics.DLQ_BLOCKED.set(0)
                continue
            stuck = {letter.partition for letter in failed}
            newly = stuck - self.blocked
            self.blocked = stuck
            metrics.DLQ_BLOCKED.set(len(stuck))
            metrics.DLQ_FAILURES.inc(len(failed))
            delay = backoff * random.uniform(0.8, 1.2)
            log.log(
                logging.ERROR if newly else logging.WARNING,
                "dead-letter topic %s unavailable (%s); partitions %s paused until it takes "
                "their dead letters; retrying in %.1fs",
                self.topic, error, sorted(stuck), delay,
                extra={"dlq": self.topic, "letters": len(self.queue)},
            )  # fmt: skip
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self._backoff_max)

    async def _send(self, letter: DeadLetter) -> asyncio.Future[Any]:
        producer = self.producer
        if letter.key is None and letter.value is None:
            # Kafka takes a record with neither key nor value, aiokafka's send() asserts on it.
            batch = producer.create_batch()
            batch.append(key=None, value=None, timestamp=None, headers=letter.headers())
            partitions = sorted(producer.client.cluster.partitions_for_topic(self.topic) or [0])
            fut: asyncio.Future[Any] = await producer.send_batch(
                batch, self.topic, partition=partitions[letter.offset % len(partitions)]
            )
            return fut
        fut = await producer.send(self.topic, letter.value, key=letter.key,
                                  headers=letter.headers())  # fmt: skip
        return fut

    async def _write(self, batch: list[DeadLetter]) -> tuple[list[DeadLetter], str]:
        """One attempt at `batch`: returns the letters not written and why."""
        client = self.producer.client
        if client.cluster.partitions_for_topic(self.topic) is None:
            # Ask once, at our own pace: producer.send() would poll the metadata every 100 ms
            # for 40 s, logging each time, then raise.
            client.add_topic(self.topic)
            await asyncio.wait_for(client.force_metadata_update(), self._timeout)
            if client.cluster.partitions_for_topic(self.topic) is None:
                return batch, f"topic {self.topic} not found"
        futures: list[asyncio.Future[Any]] = []
        error = ""
        for letter in batch:
            try:
                fut = await asyncio.wait_for(self._send(letter), self._timeout)
            except (KafkaError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            futures.append(fut)
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = batch[len(futures) :]
        written = set()
        for letter, result in zip(batch, results, strict=False):
            if isinstance(result, BaseException):
                failed.append(letter)
                error = error or f"{type(result).__name__}: {result}"
            else:
                written.add(id(letter))
                metrics.DEAD_LETTERS.labels(letter.reason).inc()
                self._written(letter)
        if written:
            self.queue = deque(letter for letter in self.queue if id(letter) not in written)
        return failed, error
