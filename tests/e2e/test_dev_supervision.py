"""`roomcast dev` supervises its children: kill -9 any of them and the stack serves again.

One `roomcast dev` with its own NATS and Kafka (as `make dev` runs it) serves the whole module;
each test kills one of its children for real (found as psutil children of the dev process) while
a `roomcast watch` viewer stays connected and a producer sends a numbered probe event every
0.25 s to the viewer's room. What each test pins is what docs/devstack.md promises a viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil
import pytest

from tests.support import ROOMCAST, free_port, unique

SERVING_AGAIN_S = 10.0
# dev runs ingest as a static group member (--instance-id): the restarted worker replaces the
# killed one in the group as soon as it has joined, instead of after the old session's 10 s.
INGEST_SERVING_AGAIN_S = SERVING_AGAIN_S


def _poll(what: str, check: Callable[[], object], timeout: float, every: float = 0.1) -> object:
    """check() until it returns something truthy; fail saying `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(every)


class Lines:
    """A text pipe read line by line in a thread, each line with the time it arrived."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in list(self.lines))

    def has(self, needle: str) -> bool:
        return any(needle in line for _, line in list(self.lines))


class Watch:
    """`roomcast watch ROOM --events` as a person runs it; probes seen on stdout, by arrival."""

    def __init__(self, url: str, room: str) -> None:
        self.proc = subprocess.Popen(
            [*ROOMCAST, "watch", room, "--url", url, "--events"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def probes(self) -> list[tuple[float, int]]:
        """(arrival time, probe number) of each event line: "<time> room p@off <event>"."""
        got = []
        for at, line in list(self.out.lines):
            event = json.loads(line.split(" ", 3)[3])
            got.append((at, event["probe"]))
        return got

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class Prober:
    """Sends {"probe": n} to `room` every 0.25 s from a thread of its own; remembers when each
    was sent and which ones Kafka acknowledged."""

    def __init__(self, kafka: str, topic: str, room: str) -> None:
        self.kafka, self.topic, self.room = kafka, topic, room
        self.sent: dict[int, float] = {}
        self.acked: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # it fails on purpose here
        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka,
            acks="all",
            enable_idempotence=True,  # a retry after the kill must not write a probe twice
            linger_ms=0,
            request_timeout_ms=20_000,
        )
        await producer.start()

        def acked(n: int) -> Callable[[asyncio.Future[object]], None]:
            def done(fut: asyncio.Future[object]) -> None:
                if not fut.cancelled() and fut.exception() is None:
                    self.acked.add(n)

            return done

        n = 0
        try:
            while not self._stop.is_set() and n < 2000:  # bounded: ~8 minutes at most
                n += 1
                self.sent[n] = time.monotonic()
                with contextlib.suppress(KafkaError):
                    fut = await producer.send(
                        self.topic, json.dumps({"probe": n}).encode(), key=self.room.encode()
                    )
                    fut.add_done_callback(acked(n))
                await asyncio.sleep(0.25)
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(producer.flush(), 25)
        finally:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(producer.stop(), 10)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(40)


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    out_path: Path
    state: Path
    nats_port: int
    kafka_port: int
    port: int
    metrics_port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def child(self, name: str) -> psutil.Process | None:
        """The dev process's running child `name` (nats-server, kafka, ingest or gateway)."""
        for c in psutil.Process(self.proc.pid).children():
            try:
                if c.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmd = c.cmdline()
            except psutil.NoSuchProcess:
                continue
            if name == "nats-server" and c.name() == "nats-server":
                return c
            if name == "kafka" and c.name() == "java" and "kafka.Kafka" in cmd:
                return c
            if name in ("ingest", "gateway") and cmd[3:4] == [name]:  # python -m roomcast.cli X
                return c
        return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("dev")
    nats_port, kafka_port, port, metrics_port = free_port(), free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("ROOMCAST_KAFKA", "ROOMCAST_NATS")}
    out_path = tmp / "dev.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [*ROOMCAST, "dev", "--state-dir", str(tmp / "state")]
            + ["--nats-port", str(nats_port), "--kafka-port", str(kafka_port)]
            + ["--port", str(port), "--ingest-metrics-port", str(metrics_port)]
            + ["--gateway-metrics-port", str(free_port()), "--chat-port", str(free_port())]
            + ["--window-ms", "200", "--rate", "10", "--duration", "900"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    s = Stack(proc, out_path, tmp / "state", nats_port, kafka_port, port, metrics_port)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops everything" not in s.output():
            assert proc.poll() is None, s.output()
            assert time.monotonic() < deadline, s.output()
            time.sleep(0.2)
        yield s
        seen = {c.pid for c in psutil.Process(proc.pid).children()}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, s.output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Ctrl-C stopped every child, restarted ones included.
    left = [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, f"still running after Ctrl-C: {left}\n{s.output()}"


def _kill_and_watch(stack: Stack, name: str) -> tuple[Watch, Prober, float, float]:
    """kill -9 `name` while a viewer watches a probed room; returns the viewer, the prober, when
    the kill happened and when the first probe sent after it reached the viewer."""
    room = unique("probe")
    watch = Watch(stack.url, room)
    try:
        # Probes start once the viewer is in the room: a viewer gets no history yet.
        _poll("viewer joined", lambda: watch.err.has(f"watching {room}"), 20)
    except BaseException:
        watch.stop()
        raise
    prober = Prober(stack.kafka, "roomcast.events", room)
    try:
        _poll("probe before the kill", watch.probes, 20)
        victim = stack.child(name)
        assert victim is not None, stack.output()
        killed_at = time.monotonic()
        victim.kill()  # SIGKILL
        # The dead child is reaped (no <defunct>) and another one runs in its place.
        _poll(
            f"{name} reaped",
            lambda: not psutil.pid_exists(victim.pid) or victim.status() != psutil.STATUS_ZOMBIE,
            5,
        )
        _poll(
            f"new {name}", lambda: (c := stack.child(name)) is not None and c.pid != victim.pid, 20
        )

        def first_after_kill() -> float | None:
            after = [at for at, n in watch.probes() if prober.sent[n] > killed_at]
            return min(after) if after else None

        recovered_at = _poll("probe sent after the kill reaching the viewer", first_after_kill, 30)
        assert isinstance(recovered_at, float)
        print(
            f"kill -9 {name}: events reach the viewer again {recovered_at - killed_at:.1f} s after"
        )
        assert stack.proc.poll() is None, stack.output()
        assert f"{name} died (killed by SIGKILL); restarting in" in stack.output()
        _poll(f"'{name} is back'", lambda: f"{name} is back" in stack.output(), 20)
        # Produce on for a while after recovery: every event from then on must arrive.
        time.sleep(2)
    except BaseException:
        prober.stop()
        watch.stop()
        raise
    prober.stop()
    return watch, prober, killed_at, recovered_at


def _assert_after_recovery_all_arrive(watch: Watch, prober: Prober, since: float) -> None:
    wanted = {n for n in prober.acked if prober.sent[n] > since}
    assert wanted, "no probe acknowledged after recovery"
    _poll("every probe sent after recovery", lambda: wanted <= {n for _, n in watch.probes()}, 15)


def _assert_nothing_lost(watch: Watch, prober: Prober, killed_at: float) -> None:
    def missing() -> list[tuple[int, float]]:
        lost = prober.acked - {n for _, n in watch.probes()}
        return sorted((n, round(prober.sent[n] - killed_at, 2)) for n in lost)

    with contextlib.suppress(AssertionError):
        _poll("every acknowledged probe", lambda: not missing(), 20)
    shown = [(round(at - killed_at, 2), n) for at, n in watch.probes()]
    sent = sorted((n, round(at - killed_at, 2)) for n, at in prober.sent.items())
    assert not missing(), (
        f"(probe, sent s after the kill) never shown: {missing()}\n"
        f"shown (s after the kill, probe): {shown}\nsent: {sent}\n"
        f"watch stderr:\n{watch.err.text()}"
    )
    got = [n for _, n in watch.probes()]
    assert len(got) == len(set(got)), "a probe shown twice"


def _assert_kept_connection(watch: Watch) -> None:
    assert not watch.err.has("connection lost"), watch.err.text()
    assert not watch.err.has("reconnected"), watch.err.text()


def test_banner_names_every_port_and_ingest_serves_metrics(stack: Stack) -> None:
    out = stack.output()
    assert f"ws://127.0.0.1:{stack.port}/ws" in out
    assert f"metrics http://127.0.0.1:{stack.metrics_port}/metrics" in out
    assert f"nats://127.0.0.1:{stack.nats_port}" in out and stack.kafka in out
    with socket.create_connection(("127.0.0.1", stack.metrics_port), timeout=5):
        pass  # the ingest worker listens where the banner says


def test_gateway_kill_9_viewer_reconnects_and_gets_new_events(stack: Stack) -> None:
    watch, prober, killed_at, recovered_at = _kill_and_watch(stack, "gateway")
    try:
        assert recovered_at - killed_at <= SERVING_AGAIN_S
        # The viewer was told, on stderr, one line each: lost, then back.
        assert watch.err.has("connection lost (no close frame); reconnecting"), watch.err.text()
        assert watch.err.has("reconnected to"), watch.err.text()
        _assert_after_recovery_all_arrive(watch, prober, recovered_at)
    finally:
        watch.stop()


def test_ingest_kill_9_viewer_keeps_its_connection_and_loses_nothing(stack: Stack) -> None:
    watch, prober, killed_at, recovered_at = _kill_and_watch(stack, "ingest")
    try:
        assert recovered_at - killed_at <= INGEST_SERVING_AGAIN_S
        _assert_kept_connection(watch)
        # The new worker replays what the dead one had not committed; dedup shows each once.
        _assert_nothing_lost(watch, prober, killed_at)
    finally:
        watch.stop()


def test_nats_kill_9_restarts_on_its_port_with_its_jetstream_data(stack: Stack) -> None:
    import nats

    async def stream_state() -> tuple[int, int]:
        nc = await nats.connect(f"nats://127.0.0.1:{stack.nats_port}")
        try:
            info = await nc.jetstream().stream_info("ROOMCAST_ROOMS")
            return info.state.first_seq, info.state.last_seq
        finally:
            await nc.close()

    # Wait until the demo's blobs are in the stream (the stack may have just started).
    _poll("blobs in JetStream", lambda: asyncio.run(stream_state())[1] > 0, 20, every=0.5)
    first_before, last_before = asyncio.run(stream_state())
    watch, prober, killed_at, recovered_at = _kill_and_watch(stack, "nats-server")
    try:
        assert recovered_at - killed_at <= SERVING_AGAIN_S
        _assert_kept_connection(watch)
        _assert_after_recovery_all_arrive(watch, prober, recovered_at)
        first_after, last_after = asyncio.run(stream_state())  # same port, same stream on disk
        assert first_after == first_before and last_after > last_before
    finally:
        watch.stop()


def test_kafka_kill_9_restarts_on_its_port_with_its_log(stack: Stack) -> None:
    async def end_offsets() -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka)
        await consumer.start()
        try:
            parts = [TopicPartition("roomcast.events", p) for p in range(8)]
            return sum((await consumer.end_offsets(parts)).values())
        finally:
            await consumer.stop()

    _poll("demo events in Kafka", lambda: asyncio.run(end_offsets()) > 0, 20, every=0.5)
    before = asyncio.run(end_offsets())
    watch, prober, killed_at, recovered_at = _kill_and_watch(stack, "kafka")
    try:
        assert recovered_at - killed_at <= SERVING_AGAIN_S
        _assert_kept_connection(watch)
        _assert_nothing_lost(watch, prober, killed_at)
        assert asyncio.run(end_offsets()) > before  # the log survived, and grows again
    finally:
        watch.stop()


def test_a_child_that_keeps_crashing_stops_the_stack_with_its_own_error(
    tmp_path: Path, kafka_bootstrap: str, nats_url: str
) -> None:
    """Kill ingest, then take its metrics port: each restart dies at once. After 5 crashes in a
    row dev stops everything, exit status 1, showing the error of the latest start only."""
    port, metrics_port = free_port(), free_port()
    out_path = tmp_path / "dev.out"
    with out_path.open("wb") as out:
        dev = subprocess.Popen(
            [*ROOMCAST, "dev", "--state-dir", str(tmp_path / "state")]
            + ["--kafka", kafka_bootstrap, "--nats", nats_url, "--topic", unique("crash")]
            + ["--port", str(port), "--ingest-metrics-port", str(metrics_port), "--rate", "5"]
            + ["--gateway-metrics-port", str(free_port()), "--chat-port", str(free_port())]
            + ["--duration", "120"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    taken = socket.socket()
    try:
        _poll("banner", lambda: b"Ctrl-C stops everything" in out_path.read_bytes(), 60)
        ingest = next(
            c for c in psutil.Process(dev.pid).children() if c.cmdline()[3:4] == ["ingest"]
        )
        _poll(
            "ingest log",
            lambda: b"ingest running" in (tmp_path / "state/ingest.log").read_bytes(),
            30,
        )
        ingest.kill()
        ingest.wait(5)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", metrics_port))  # ingest binds 0.0.0.0: this blocks it too
        taken.listen()
        assert dev.wait(40) == 1, out_path.read_text()
    finally:
        taken.close()
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    out = out_path.read_text()
    assert "ingest died (killed by SIGKILL); restarting in 0.5 s" in out
    assert "restarting in 4 s" in out  # the backoff doubled: 0.5, 1, 2, 4
    assert "ingest keeps crashing (5 times in a row" in out
    assert "ingest could not start (exit status 1); restarting in 1 s" in out
    assert "The last time it could not start (exit status 1):" in out
    error = out[out.index("ingest keeps crashing") :]
    assert "Address already in use" in error  # its own error ...
    assert f"port {metrics_port} (--ingest-metrics-port) is already in use" in error
    assert "ingest running" not in error  # ... not lines from before its latest start
