"""The demo producer: a few rooms of simulated chat and likes at a steady rate."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import Callable

NAMES = ["ana", "bo", "chen", "dara", "eli", "femi", "gus", "hana", "ivo", "jun"]
LINES = [
    "hello!",
    "what a play",
    "gg",
    "first time here",
    "the score though",
    "lol",
    "who else is watching from home?",
    "let's go!!",
]


def demo_rooms(n: int) -> list[str]:
    return [f"demo-{i}" for i in range(1, n + 1)]


def demo_event(room: str, seq: int, rng: random.Random) -> bytes:
    """One event as a producer would write it: chat, a like, or now and then a gift."""
    kind = rng.choices(["chat", "like", "gift"], weights=[5, 12, 1])[0]
    event: dict[str, object] = {"kind": kind, "room": room, "seq": seq, "ts": time.time()}
    if kind == "chat":
        event |= {"user": rng.choice(NAMES), "text": rng.choice(LINES)}
    elif kind == "gift":
        event |= {"user": rng.choice(NAMES), "gift": rng.choice(["rose", "rocket", "crown"])}
    return json.dumps(event, separators=(",", ":")).encode()


async def run_demo_producer(
    kafka: str,
    topic: str,
    rooms: list[str],
    rate_per_s: float,
    stop: asyncio.Event,
    echo: Callable[[str], None] = print,
    seed: int = 7,
) -> int:
    """Produce `rate_per_s` events per second over `rooms` until `stop` is set; return how many
    Kafka acknowledged. While Kafka is unreachable (restarting), events that cannot be sent are
    dropped and counted, with one line when that starts and one when it ends."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    rng = random.Random(seed)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka, linger_ms=10, acks=1, request_timeout_ms=10_000
    )
    await producer.start()
    seqs = dict.fromkeys(rooms, 0)
    sent = 0
    failing = 0  # events lost since the current outage began

    def delivered(fut: asyncio.Future[object]) -> None:
        nonlocal sent, failing
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            sent += 1
            if failing:
                echo(f"demo: Kafka takes events again ({failing} dropped meanwhile)")
                failing = 0
            return
        if not failing:
            echo(f"demo: cannot send to Kafka ({exc!r}); dropping events until it is back")
        failing += 1

    interval = 1.0 / rate_per_s
    next_at = time.monotonic()
    try:
        for room in itertools.cycle(rooms):
            if stop.is_set():
                break
            # The first room is the hot one: it gets half the traffic.
            if rng.random() < 0.5:
                room = rooms[0]
            seqs[room] += 1
            event = demo_event(room, seqs[room], rng)
            try:
                fut = await producer.send(topic, event, key=room.encode())
            except KafkaError as exc:
                failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
                failed.set_exception(exc)
                fut = failed
            fut.add_done_callback(delivered)
            next_at = max(next_at + interval, time.monotonic() - 1.0)  # no burst after a stall
            delay = next_at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(producer.flush(), 5)
    finally:
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(producer.stop(), 5)
    return sent
