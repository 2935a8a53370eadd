"""`roomcast watch` as a person runs it, across a gateway that dies and comes back."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO

from tests.client.conftest import HistoryProducer, Pipeline
from tests.support import ROOMCAST, unique


class Lines:
    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(stream), daemon=True).start()

    def has(self, needle: str) -> bool:
        return any(needle in line for line in list(self.lines))


def start_watch(room: str, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ROOMCAST, "watch", room, "--url", url, "--events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


async def until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def test_watch_resumes_after_the_gateway_comes_back_and_shows_each_event_once(
    pipeline: Callable[..., Pipeline],
) -> None:
    p = await asyncio.to_thread(pipeline, ingest=False)
    room = unique("room")
    watch = start_watch(room, p.url)
    out, err = Lines(watch.stdout), Lines(watch.stderr)
    try:
        await until("watching", lambda: err.has(f"watching {room} on {p.url}"))
        async with HistoryProducer(p, room) as history:
            await history.send(3)
            await until("3 events", lambda: len(out.lines) == 3)
            assert p.gateway is not None
            await asyncio.to_thread(p.gateway.stop, signal.SIGKILL)  # every worker, no word
            await until("lost", lambda: err.has("connection lost (no close frame); reconnecting"))
            await history.send(3)  # while no gateway runs
            await asyncio.to_thread(p.start_gateway, "gateway-2")
            await until("resumed", lambda: err.has(f"watching {room} on {p.url} (resumed"))
            await history.send(1)
            await until("7 events", lambda: len(out.lines) >= 7)
    finally:
        watch.kill()
        await asyncio.to_thread(watch.wait, 10)
    shown = [json.loads(line.split(" ", 3)[3])["n"] for line in out.lines]
    assert shown == [1, 2, 3, 4, 5, 6, 7], out.lines
    text = "".join(err.lines)
    assert f"reconnected to {p.url}; resuming {room} after " in text, text
    assert "(resumed: nothing missed)" in text, text
