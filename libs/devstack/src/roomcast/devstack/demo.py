"""The demo producer: a few rooms of simulated chat and likes at a steady rate."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time

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
    seed: int = 7,
) -> int:
    """Produce `rate_per_s` events per second over `rooms` until `stop` is set; return the count."""
    from aiokafka import AIOKafkaProducer

    rng = random.Random(seed)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=10, acks=1)
    await producer.start()
    seqs = dict.fromkeys(rooms, 0)
    sent = 0
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
            await producer.send(topic, demo_event(room, seqs[room], rng), key=room.encode())
            sent += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        await producer.flush()
    finally:
        await producer.stop()
    return sent
