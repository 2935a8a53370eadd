"""The four scenarios. Each is bounded in time, uses loopback only, and stops what it starts.

Every function returns one flat dict (the `--json` object, see docs/benchmarks.md) and takes
a `progress(text)` callable for the live display.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import psutil

from roomcast.bench import stack
from roomcast.bench.loadclient import LoadClients, wait_joined
from roomcast.core.blob import encode_blob
from roomcast.core.rooms import room_subject

Progress = Callable[[str], None]


@dataclass
class Common:
    viewers: int
    duration_s: float
    workers: int
    state_dir: Path
    progress: Progress


def _paths(viewers: int, rooms: list[str]) -> list[str]:
    return [f"/ws?room={rooms[i % len(rooms)]}" for i in range(viewers)]


def _chat_blob(room: str, events: int, variant: int) -> bytes:
    """A merged window of the e2e producer's chat events, as ingest publishes it."""
    rng = random.Random(f"{room}/{variant}")
    t0 = 1_760_000_000.0 + rng.random() * 1000
    first = 5000 + variant * events
    values = [
        b'{"type":"chat","seq":%d,"ts":%.6f,"text":"bench event with some text"}'
        % (first + i, t0 + i * rng.random() * 0.02)
        for i in range(events)
    ]
    return encode_blob(room, rng.randrange(8), list(range(first, first + events)), values)


def make_blobs(room: str, kind: str, size: int, events: int) -> list[bytes]:
    """What the fanout scenario publishes to a room, in turn: `synthetic` (one blob of about
    `size` bytes of short, alike events) or `chat` (merged 1 s windows of `events` e2e chat
    events; 8 different ones, so a per-connection compressor cannot just point at the last)."""
    if kind == "chat":
        return [_chat_blob(room, events, v) for v in range(8)]
    return [_sample_blob(room, size)]


def _sample_blob(room: str, size: int) -> bytes:
    """A blob as ingest would publish it, about `size` bytes."""
    events, offsets = [], []
    while sum(map(len, events)) + 80 < size:
        n = len(events)
        events.append(b'{"type":"chat","user":"u%d","text":"hello from the bench"}' % n)
        offsets.append(1000 + n)
    return encode_blob(room, 0, offsets, events)


# ---- fanout -----------------------------------------------------------------------------------


async def _publish(
    nats_url: str,
    prefix: str,
    rooms: list[str],
    rate: float,
    seconds: float,
    blobs: list[list[bytes]],
) -> tuple[int, float]:
    """Publish `rate` blobs per room per second for `seconds`, spread evenly (room i gets
    `blobs[i]` in turn). Returns how many were published and over how many seconds."""
    nc = await nats.connect(nats_url, pending_size=64 * 1024 * 1024)
    subjects = [room_subject(r, prefix) for r in rooms]
    per_s = rate * len(rooms)
    start = time.monotonic()
    sent = 0
    cycle = itertools.cycle(range(len(rooms)))
    turns = [0] * len(rooms)
    try:
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * per_s) - sent
            for _ in range(due):
                i = next(cycle)
                variants = blobs[i]
                await nc.publish(subjects[i], variants[turns[i] % len(variants)])
                turns[i] += 1
            sent += max(due, 0)
            await nc.flush()
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - start
    finally:
        await nc.close()
    return sent, elapsed


def _connect_all(
    c: Common,
    clients: LoadClients,
    port: int,
    paths: list[str],
    label: str,
    inspect: bool = False,
    compress: bool = False,
    churn_s: float = 0.0,
) -> float:
    """Connect one viewer per path and wait for every `joined` ack; the seconds it took."""
    t0 = time.monotonic()
    clients.connect(port, paths, inspect=inspect, compress=compress, churn_s=churn_s)
    wait_joined(
        clients,
        len(paths),
        timeout=60 + len(paths) / 500,
        progress=lambda s: c.progress(f"[{label}] {s}"),
    )
    return time.monotonic() - t0


def _measure_server(
    c: Common,
    server: stack.Server,
    clients: LoadClients,
    nats_url: str,
    prefix: str,
    rooms: list[str],
    rate: float,
    blobs: list[list[bytes]],
    label: str,
    compress: bool,
) -> dict[str, Any]:
    with server:
        base_rss = server.rss_bytes()
        paths = _paths(c.viewers, rooms)
        _connect_all(c, clients, server.port, paths, f"fanout {label}", compress=compress)
        time.sleep(min(1.0, 0.2 + c.viewers / 10_000))  # settle before reading idle memory
        idle_rss = server.rss_bytes()
        c.progress(f"[fanout {label}] warming up")
        asyncio.run(_publish(nats_url, prefix, rooms, rate, 1.0, blobs))
        time.sleep(0.5)
        clients.reset()
        client_procs = [psutil.Process(p) for p in clients.pids]
        softirqd = stack.softirq_threads()
        if not softirqd:
            c.progress(
                f"[fanout {label}] no ksoftirqd thread visible (a PID namespace?): "
                "the kernel's deferred work is left out, softirqd figures are null"
            )
        cpu0, ccpu0, t0 = server.cpu_seconds(), stack.cpu_seconds(client_procs), time.monotonic()
        user0, kcpu0 = server.cpu_seconds(user_only=True), stack.cpu_seconds(softirqd)

        async def publish_with_progress() -> tuple[int, float]:
            task = asyncio.create_task(_publish(nats_url, prefix, rooms, rate, c.duration_s, blobs))
            while not task.done():
                await asyncio.sleep(1.0)
                elapsed = time.monotonic() - t0
                frames = clients.stats()["frames"]
                c.progress(
                    f"[fanout {label}] {min(elapsed, c.duration_s):4.1f}/{c.duration_s:g}s "
                    f"{c.viewers:,} viewers, {frames / max(elapsed, 1e-9):,.0f} frames/s"
                )
            return task.result()

        published, elapsed = asyncio.run(publish_with_progress())
        time.sleep(0.5)  # the last frames land
        # The server's own processes, plus the receive work deferred to ksoftirqd meanwhile
        # (the load clients' and publisher's share of it is small: ~0 for the floors).
        kcpu = stack.cpu_seconds(softirqd) - kcpu0
        cpu = server.cpu_seconds() - cpu0 + kcpu
        user = server.cpu_seconds(user_only=True) - user0
        ccpu = stack.cpu_seconds(client_procs) - ccpu0
        s = clients.stats()
        clients.drop()
    expected = published * (c.viewers // len(rooms))
    frames = s["frames"]
    return {
        "cpu_us_per_frame": cpu / frames * 1e6 if frames else None,
        "user_cpu_us_per_frame": user / frames * 1e6 if frames else None,
        "softirqd_cpu_us_per_frame": kcpu / frames * 1e6 if frames and softirqd else None,
        "client_cpu_us_per_frame": ccpu / frames * 1e6 if frames else None,
        "frames": frames,
        "frames_per_s": frames / elapsed,
        "bytes_per_frame": s["bytes"] / frames if frames else None,
        "dropped": max(0, expected - frames),
        "memory_kib_per_viewer": max(0, idle_rss - base_rss) / c.viewers / 1024,
        "server_cpu_share": cpu / elapsed,
        "closes": dict(s["closes"]),
    }


def fanout(
    c: Common,
    nats_url: str,
    rooms: int,
    rate: float,
    blob_size: int,
    compare: bool,
    stock_loop: str = "asyncio",
    rounds: int = 1,
    compress: bool = False,
    blob_kind: str = "synthetic",
    events_per_blob: int = 40,
    compress_level: int = 1,
    fanout_path: str = "auto",
) -> dict[str, Any]:
    rid = stack.run_id()
    prefix = f"{rid}.room"
    names = [f"r{i}" for i in range(rooms)]
    blobs = [make_blobs(r, blob_kind, blob_size, events_per_blob) for r in names]
    logs = c.state_dir / "logs"
    extra = ("--compress-level", str(compress_level), "--fanout", fanout_path)
    servers = [stack.gateway(logs, nats_url, prefix, c.workers, extra=extra)]
    if compare:
        # With --compress on, stock runs with its default: deflate per connection.
        stock_extra = ("--compression", "deflate" if compress else "none")
        servers += [
            stack.reference(logs, "floor", nats_url, prefix, c.workers),
            stack.reference(logs, "cfloor", nats_url, prefix, c.workers),
            stack.reference(logs, "stock", nats_url, prefix, c.workers, stock_loop, stock_extra),
        ]
    per_round: list[dict[str, dict[str, Any]]] = []
    with LoadClients(c.viewers) as clients:
        for r in range(rounds):
            # Each round starts with a different server, so a drift in the machine's load over
            # the run does not always favour the same one.
            order = servers[r % len(servers) :] + servers[: r % len(servers)]
            measured: dict[str, dict[str, Any]] = {}
            for server in order:
                tag = f"round {r + 1}/{rounds} {server.name}" if rounds > 1 else server.name
                measured[server.name] = _measure_server(
                    c, server, clients, nats_url, prefix, names, rate, blobs, tag, compress
                )
            per_round.append(measured)
    results = {s.name: _median_run([m[s.name] for m in per_round]) for s in servers}
    gw = results["gateway"]
    out: dict[str, Any] = {
        "rooms": rooms,
        "rounds": rounds,
        "workers": c.workers,
        "blobs_per_room_per_s": rate,
        "blob_kind": blob_kind,
        "blob_bytes": statistics.mean(len(b) for variants in blobs for b in variants),
        "compress": compress,
        "compress_level": compress_level,
        "fanout": fanout_path,
        "gateway_cpu_us_per_frame": gw["cpu_us_per_frame"],
        "gateway_user_cpu_us_per_frame": gw["user_cpu_us_per_frame"],
        "gateway_softirqd_cpu_us_per_frame": gw["softirqd_cpu_us_per_frame"],
        "gateway_bytes_per_frame": gw["bytes_per_frame"],
        "frames_per_s": gw["frames_per_s"],
        "dropped": gw["dropped"],
        "memory_kib_per_viewer": gw["memory_kib_per_viewer"],
        "client_cpu_us_per_frame": gw["client_cpu_us_per_frame"],
        "gateway_cpu_share": gw["server_cpu_share"],
    }
    if compare:
        fl, st = results["floor"], results["stock"]
        out |= {
            "floor_cpu_us_per_frame": fl["cpu_us_per_frame"],
            "cfloor_cpu_us_per_frame": results["cfloor"]["cpu_us_per_frame"],
            "ratio_vs_cfloor": _median_ratio(per_round, "gateway", "cfloor"),
            "stock_cpu_us_per_frame": st["cpu_us_per_frame"],
            "floor_bytes_per_frame": fl["bytes_per_frame"],
            "stock_bytes_per_frame": st["bytes_per_frame"],
            # Ratios are taken within each round (same minutes of the machine), then the median.
            "ratio_vs_floor": _median_ratio(per_round, "gateway", "floor"),
            "speedup_vs_stock": _median_ratio(per_round, "stock", "gateway"),
            "stock_memory_kib_per_viewer": st["memory_kib_per_viewer"],
            "stock_loop": stock_loop,
            "floor_dropped": fl["dropped"],
            "stock_dropped": st["dropped"],
        }
    if rounds > 1:
        out["rounds_cpu_us_per_frame"] = [
            {name: m["cpu_us_per_frame"] for name, m in measured.items()} for measured in per_round
        ]
        out["rounds_softirqd_us_per_frame"] = [
            {name: m["softirqd_cpu_us_per_frame"] for name, m in measured.items()}
            for measured in per_round
        ]
    return out


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median CPU per frame (runs that delivered nothing sort last)."""
    ordered = sorted(runs, key=lambda m: m["cpu_us_per_frame"] or float("inf"))
    return ordered[(len(ordered) - 1) // 2]


def _median_ratio(per_round: list[dict[str, dict[str, Any]]], a: str, b: str) -> float | None:
    ratios = [
        r
        for m in per_round
        if (r := _ratio(m[a]["cpu_us_per_frame"], m[b]["cpu_us_per_frame"])) is not None
    ]
    return statistics.median(ratios) if ratios else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# ---- connect ----------------------------------------------------------------------------------


def connect(c: Common, nats_url: str, rooms: int, auth: str = "off") -> dict[str, Any]:
    """With auth="jwt", the gateway checks an HS256 token (in the URL) at every handshake."""
    rid = stack.run_id()
    names = [f"r{i}" for i in range(rooms)]
    paths = _paths(c.viewers, names)
    extra: tuple[str, ...] = ()
    if auth == "jwt":
        import secrets

        from roomcast.gateway.token import mint

        key = secrets.token_urlsafe(32)
        extra = ("--auth", "jwt", "--auth-secret", key)
        tok = mint(key, "HS256", "bench", ["*"], 3600)
        paths = [f"{p}&token={tok}" for p in paths]
    server = stack.gateway(c.state_dir / "logs", nats_url, f"{rid}.room", c.workers, extra=extra)
    with server, LoadClients(c.viewers) as clients:
        time.sleep(0.5)
        base_rss = server.rss_bytes()
        handshake_s = _connect_all(c, clients, server.port, paths, "connect")
        first = clients.stats()
        time.sleep(min(1.0, 0.2 + c.viewers / 10_000))  # settle before reading idle memory
        idle_rss = server.rss_bytes()
        c.progress("[connect] reconnect storm: every viewer dropped at once")
        clients.drop()
        storm_s = _connect_all(c, clients, server.port, paths, "connect storm")
        storm = clients.stats()
    return {
        "rooms": rooms,
        "workers": c.workers,
        "auth": auth,
        "handshakes_per_s": c.viewers / handshake_s,
        "memory_kib_per_viewer": max(0, idle_rss - base_rss) / c.viewers / 1024,
        "storm_recovery_s": storm_s,
        # Diagnostics: connection attempts that failed (refused, reset, timed out) and
        # handshakes answered with something else than 101, per phase.
        "connect_errors": first["failed"],
        "refused": dict(first["rejected"]),
        "storm_connect_errors": storm["failed"],
        "storm_refused": dict(storm["rejected"]),
    }


# ---- ingest -----------------------------------------------------------------------------------


def _zipf_cdf(n: int, s: float = 1.0) -> list[float]:
    weights = [1.0 / (k**s) for k in range(1, n + 1)]
    total = sum(weights)
    acc, out = 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def _zipf_pick(cdf: list[float], rng: random.Random) -> int:
    return bisect.bisect_left(cdf, rng.random())


def _next_event(cdf: list[float], rng: random.Random, seqs: list[int]) -> tuple[bytes, bytes]:
    """(key, value): a chat event for a Zipf-picked room, with that room's next sequence number
    and the time it was made (the e2e viewers check both)."""
    r = _zipf_pick(cdf, rng)
    value = b'{"type":"chat","seq":%d,"ts":%.6f,"text":"bench event with some text"}' % (
        seqs[r],
        time.time(),
    )
    seqs[r] += 1
    return f"r{r}".encode(), value


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1), NewTopic(topic + ".dlq", 1, 1)])
    finally:
        await admin.close()


async def _produce_bulk(
    bootstrap: str, topic: str, events: int, rooms: int, progress: Progress
) -> None:
    from aiokafka import AIOKafkaProducer

    cdf = _zipf_cdf(rooms)
    rng = random.Random(7)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks=1
    )
    await producer.start()
    try:
        seqs = [0] * rooms
        pending = []
        for i in range(events):
            key, value = _next_event(cdf, rng, seqs)
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
                progress(f"[ingest] producing {i + 1:,}/{events:,} events")
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


class _Span:
    """Rate over the middle of a run: from 10% to 90% of `total` (start-up and the last
    window's wait are outside it, so the figure is the steady state). Runs too small to
    show a middle fall back to the whole run, from the first observation."""

    def __init__(self, total: int) -> None:
        self.lo, self.hi = total // 10, total - total // 10
        self.t_start = time.monotonic()
        self.t_lo = self.t_hi = 0.0
        self.n_lo = self.n_hi = 0

    def see(self, n: int) -> bool:
        now = time.monotonic()
        if not self.t_lo and n >= self.lo:
            self.t_lo, self.n_lo = now, n
        if self.t_lo and n >= self.hi:
            self.t_hi, self.n_hi = now, n
            return True
        return False

    @property
    def rate(self) -> float:
        if self.n_hi - self.n_lo >= (self.hi - self.lo) // 2 and self.t_hi > self.t_lo:
            return (self.n_hi - self.n_lo) / (self.t_hi - self.t_lo)
        return self.n_hi / max(self.t_hi - self.t_start, 1e-9)


def _consumer_settings() -> dict[str, Any]:
    # As roomcast ingest configures its consumer (services/ingest/.../worker.py).
    return {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": 20,
        "max_partition_fetch_bytes": 4 << 20,
        "fetch_max_bytes": 32 << 20,
    }


async def _consume_only(bootstrap: str, topic: str, events: int, progress: Progress) -> float:
    """The ceiling: an aiokafka consumer doing nothing but reading, in a group of its own."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=stack.run_id(), **_consumer_settings()
    )
    await consumer.start()
    span = _Span(events)
    try:
        got = 0
        while not span.see(got):
            batch = await consumer.getmany(timeout_ms=1000)
            got += sum(len(v) for v in batch.values())
            progress(f"[ingest ceiling] {got:,}/{events:,} events read")
        return span.rate
    finally:
        await consumer.stop()


async def _pipeline(
    bootstrap: str, topic: str, group: str, events: int, proc: Any, progress: Progress
) -> float:
    """Time `roomcast ingest` by its committed offsets: committed = acked by JetStream."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    span = _Span(events)
    deadline = time.monotonic() + max(180.0, events / 2000)
    try:
        while True:
            if not proc.alive():
                raise stack.BrokerError(f"ingest exited; log tail:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ingest did not commit {events:,} events in time")
            try:
                offsets = await admin.list_consumer_group_offsets(group)
            except Exception:
                offsets = {}
            done = sum(m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset > 0)
            progress(f"[ingest pipeline] {done:,}/{events:,} events committed")
            if span.see(done):
                return span.rate
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


def ingest(
    c: Common,
    kafka: str,
    nats_url: str,
    events: int,
    rooms: int,
    partitions: int,
    window_ms: int,
) -> dict[str, Any]:
    rid = stack.run_id()
    topic = f"{rid}.events"
    asyncio.run(_create_topic(kafka, topic, partitions))
    asyncio.run(_produce_bulk(kafka, topic, events, rooms, c.progress))
    ceiling = asyncio.run(_consume_only(kafka, topic, events, c.progress))
    proc, metrics_port = stack.ingest(c.state_dir / "logs", kafka, nats_url, topic, rid, window_ms)
    proc.start()
    try:
        rate = asyncio.run(_pipeline(kafka, topic, rid, events, proc, c.progress))
        _, values = stack.scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        proc.stop()
    blobs = values.get("roomcast_ingest_blobs_out_total", 0.0)
    events_in = values.get("roomcast_ingest_events_in_total", 0.0)
    return {
        "events": events,
        "rooms": rooms,
        "partitions": partitions,
        "window_ms": window_ms,
        "events_per_s": rate,
        "ceiling_events_per_s": ceiling,
        "ratio_vs_ceiling": rate / ceiling,
        "blobs": blobs,
        "events_per_blob": events_in / blobs if blobs else None,
    }


# ---- e2e --------------------------------------------------------------------------------------


async def _produce_live(
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    rooms: int,
    progress: Progress,
    stats: Callable[[], dict[str, Any]],
) -> list[int]:
    from aiokafka import AIOKafkaProducer

    cdf = _zipf_cdf(rooms)
    rng = random.Random(11)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    seqs = [0] * rooms
    try:
        start = time.monotonic()
        sent, last_report = 0, start
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate) - sent
            futures = []
            for _ in range(due):
                key, value = _next_event(cdf, rng, seqs)
                futures.append(await producer.send(topic, value, key=key))
            sent += max(due, 0)
            if futures:
                await asyncio.gather(*futures)
            if now - last_report >= 1.0:
                last_report = now
                s = stats()
                progress(
                    f"[e2e] {now - start:4.1f}/{seconds:g}s produced {sent:,}, "
                    f"viewers got {s['events']:,} events in {s['frames']:,} frames"
                )
            await asyncio.sleep(0.005)
    finally:
        await producer.stop()
    return seqs


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def e2e(
    c: Common,
    kafka: str,
    nats_url: str,
    rooms: int,
    rate: float,
    window_ms: int,
    partitions: int,
    compress: bool = False,
    churn_s: float = 0.0,
) -> dict[str, Any]:
    rid = stack.run_id()
    topic = f"{rid}.events"
    logs = c.state_dir / "logs"
    asyncio.run(_create_topic(kafka, topic, partitions))
    cdf = _zipf_cdf(rooms)
    rng = random.Random(3)
    viewer_rooms = [_zipf_pick(cdf, rng) for _ in range(c.viewers)]
    paths = [f"/ws?room=r{r}" for r in viewer_rooms]
    proc, _ = stack.ingest(logs, kafka, nats_url, topic, rid, window_ms)
    server = stack.gateway(logs, nats_url, f"{rid}.room", c.workers,
                           extra=stack.history_options(rid))  # fmt: skip
    proc.start()
    try:
        with server, LoadClients(c.viewers, per_process=5000) as clients:
            _connect_all(
                c, clients, server.port, paths, "e2e", inspect=True, compress=compress,
                churn_s=churn_s,
            )  # fmt: skip
            clients.reset()
            t0 = time.monotonic()
            produced = asyncio.run(
                _produce_live(kafka, topic, rate, c.duration_s, rooms, c.progress, clients.stats)
            )
            produce_s = time.monotonic() - t0
            expected = sum(produced[r] for r in viewer_rooms)
            # Let the last window close and the pipeline drain: until viewers have it all, or
            # nothing more arrives for a few windows.
            last, still = -1, 0.0
            settle_deadline = time.monotonic() + 30 + 3 * window_ms / 1000
            while time.monotonic() < settle_deadline:
                s = clients.stats()
                c.progress(f"[e2e] settling: {s['events']:,}/{expected:,} events delivered")
                if s["events"] >= expected:
                    break
                if s["events"] == last:
                    still += 0.25
                    if still > 5 + 3 * window_ms / 1000:
                        break
                else:
                    last, still = s["events"], 0.0
                time.sleep(0.25)
            elapsed = time.monotonic() - t0
            s = clients.stats(latencies=True)
            drops = stack.gateway_totals(server, ["roomcast_gateway_frames_dropped_total"])
    finally:
        proc.stop()
    lat = sorted(s["latencies"])
    return {
        "rooms": rooms,
        "workers": c.workers,
        "window_ms": window_ms,
        "compress": compress,
        "bytes_per_frame": s["bytes"] / s["frames"] if s["bytes"] and s["frames"] else None,
        "produced_events": sum(produced),
        "produced_events_per_s": sum(produced) / produce_s,
        "events_per_s": s["events"] / elapsed,
        "frames_per_s": s["frames"] / elapsed,
        "delivered_events": s["events"],
        "expected_events": expected,
        "latency_ms": {
            "p50": _percentile(lat, 0.50),
            "p90": _percentile(lat, 0.90),
            "p99": _percentile(lat, 0.99),
            "p999": _percentile(lat, 0.999),
            "max": lat[-1] if lat else None,
        },
        "latency_samples": lat,
        "dropped": int(drops.get("roomcast_gateway_frames_dropped_total", 0)),
        "lost": max(0, expected - s["events"]),
        "duplicated": s["duplicated"],
        "replayed_and_dropped_by_dedup": s["replayed"],
        "connections_lost": s["lost_connections"],
        "churn_s": churn_s,
        "churned": s["churned"],
        "resumed": s["resumed"],
        "recovered_false": s["recovered_false"],
        "resets": s["resets"],
    }
