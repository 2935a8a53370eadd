"""Gateway metrics, named once. Counted per blob or per connection, never per viewer per frame.

Each worker keeps its own registry and hands it over a private Unix socket; one HTTP endpoint per
process group (`--metrics-port`, off the viewer port) merges every worker's series and adds a
`worker` label, so a scrape sees the whole group and `sum without (worker)` gives the totals.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: nothing reads them, every scrape would carry them
REGISTRY = CollectorRegistry()

READY = Gauge(
    "roomcast_gateway_ready",
    "1 while the worker takes viewers (NATS connected, not draining)",
    registry=REGISTRY,
)
VIEWERS = Gauge("roomcast_gateway_viewers", "Open viewer connections", registry=REGISTRY)
ROOMS = Gauge("roomcast_gateway_rooms", "Rooms with at least one local viewer", registry=REGISTRY)
FRAMES_SENT = Counter(
    "roomcast_gateway_frames_sent_total", "Blob frames written to viewers", registry=REGISTRY
)
FRAMES_DEFLATED = Counter(
    "roomcast_gateway_frames_deflated_total",
    "Blob frames written compressed (permessage-deflate, compressed once per blob)",
    registry=REGISTRY,
)
BYTES_SENT = Counter(
    "roomcast_gateway_bytes_sent_total", "Blob frame bytes written to viewers", registry=REGISTRY
)
FRAMES_DROPPED = Counter(
    "roomcast_gateway_frames_dropped_total",
    "Blob frames not written, by reason (slow: viewer over its write-buffer high-water mark)",
    ["reason"],
    registry=REGISTRY,
)
FRAMES_REPLAYED = Counter(
    "roomcast_gateway_frames_replayed",
    "Frames sent from a room's log or history rather than live: to a slow viewer that drained "
    "(reason=slow; matches what was dropped for it) or to a resuming viewer (reason=resume)",
    ["reason"],
    registry=REGISTRY,
)
RESUMES = Counter(
    "roomcast_gateway_resumes",
    "Joins with `since`, by whether every blob after that position could be sent",
    ["recovered"],
    registry=REGISTRY,
)
RESETS = Counter(
    "roomcast_gateway_resets",
    "`reset` messages: blobs of a room a viewer could not be given (no longer in the history)",
    registry=REGISTRY,
)
HISTORY_READS = Counter(
    "roomcast_gateway_history_reads",
    "Reads of a room's history (JetStream) for resuming or slow viewers; one serves every viewer "
    "waiting in that room",
    registry=REGISTRY,
)
HISTORY_GAPS = Counter(
    "roomcast_gateway_history_gaps",
    "Times a room's chain of blobs had a hole (a blob lost between NATS and this worker), filled "
    "from the history",
    registry=REGISTRY,
)
BLOBS_DUPLICATE = Counter(
    "roomcast_gateway_blobs_duplicate",
    "Blobs received twice (already in the room's log): dropped",
    registry=REGISTRY,
)
COALESCED_WRITES = Counter(
    "roomcast_gateway_coalesced_writes_total",
    "Writes that carried several frames to one viewer (several rooms or push-to-all in one turn)",
    registry=REGISTRY,
)
SLOW_CLOSES = Counter(
    "roomcast_gateway_slow_closes_total",
    "Viewers closed with 4008 for staying over the high-water mark",
    registry=REGISTRY,
)
FANOUT_SECONDS = Histogram(
    "roomcast_gateway_fanout_seconds",
    "Time to write one loop turn's blobs to every local viewer of their rooms",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "roomcast_gateway_delivery_latency_seconds",
    "From a blob's oldest event produced into Kafka to the blob written to this worker's viewers "
    "(ingest's Roomcast-Produced-Ms header; includes the merge window)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
    registry=REGISTRY,
)
FANOUT_ERRORS = Counter(
    "roomcast_gateway_fanout_errors_total",
    "Viewers dropped because a fan-out write to them raised (the others still got the frame)",
    registry=REGISTRY,
)
BLOBS_REJECTED = Counter(
    "roomcast_gateway_blobs_rejected_total",
    "Blobs not sent to anyone, by reason (not_utf8: a text frame every client would fail on)",
    ["reason"],
    registry=REGISTRY,
)
HANDSHAKES = Gauge(
    "roomcast_gateway_handshakes_in_progress",
    "Connections accepted whose WebSocket upgrade request is not complete yet",
    registry=REGISTRY,
)
NATS_MESSAGES = Counter(
    "roomcast_gateway_nats_messages_total", "Blobs received from NATS", registry=REGISTRY
)
REJECTED = Counter(
    "roomcast_gateway_connections_rejected_total",
    "Connections refused before or at the upgrade, by reason",
    ["reason"],
    registry=REGISTRY,
)
CLOSES = Counter(
    "roomcast_gateway_closes_total", "Viewer connections closed by the gateway, by code",
    ["code"], registry=REGISTRY,
)  # fmt: skip

# Viewer counts (counts.py): cluster-wide figures, the same on every worker (take `max`, not
# `sum`, over workers). Per room only for the TOP_ROOMS most watched, from worker 0 of each group.
TOP_ROOMS = 20
CLUSTER_VIEWERS = Gauge(
    "roomcast_gateway_cluster_viewers",
    "Viewers of every room across the cluster, as this worker counts them (one viewer in two "
    "rooms counts twice)",
    registry=REGISTRY,
)
CLUSTER_ROOMS = Gauge(
    "roomcast_gateway_cluster_rooms",
    "Rooms with at least one viewer across the cluster, as this worker counts them",
    registry=REGISTRY,
)
COUNT_WORKERS = Gauge(
    "roomcast_gateway_count_workers",
    "Gateway workers whose viewer counts this worker hears, itself included",
    registry=REGISTRY,
)
TOP_ROOM_VIEWERS = Gauge(
    "roomcast_gateway_top_room_viewers",
    f"Viewers across the cluster of the {TOP_ROOMS} most watched rooms (worker 0 only)",
    ["room"],
    registry=REGISTRY,
)
COUNT_MESSAGES = Counter(
    "roomcast_gateway_count_messages_total",
    "Viewer-count messages on roomcast.counts, by direction (sent, received: from other workers)",
    ["direction"],
    registry=REGISTRY,
)
COUNT_GAPS = Counter(
    "roomcast_gateway_count_gaps_total",
    "Viewer-count messages of another worker missed (a sequence gap: its snapshot is asked for)",
    registry=REGISTRY,
)
COUNT_EXPIRED = Counter(
    "roomcast_gateway_count_workers_expired_total",
    "Workers forgotten after 3 silent intervals (their viewers no longer counted)",
    registry=REGISTRY,
)


class Tally:
    """The fan-out's counts as plain integers, moved into their counters whenever those are read
    (a scrape of this worker, the stats page's sampler: `publish`). A `Counter.inc` checks its
    argument and takes a lock, about a microsecond and a half; the fan-out runs a hundred times a
    second per worker with 100 rooms, and these were a few per cent of its Python."""

    __slots__ = ("bytes_sent", "frames_deflated", "frames_sent", "nats_messages")

    def __init__(self) -> None:
        self.nats_messages = self.frames_sent = self.frames_deflated = self.bytes_sent = 0

    def publish(self) -> None:
        for name, counter in (
            ("nats_messages", NATS_MESSAGES),
            ("frames_sent", FRAMES_SENT),
            ("frames_deflated", FRAMES_DEFLATED),
            ("bytes_sent", BYTES_SENT),
        ):
            if n := getattr(self, name):
                counter.inc(n)
                setattr(self, name, 0)


TALLY = Tally()


def worker_text() -> bytes:
    """This worker's series, as the group's endpoint asks for them."""
    TALLY.publish()
    return generate_latest(REGISTRY)


def fetch(path: str, timeout: float = 2.0) -> str | None:
    """One worker's series over its socket; None if it does not answer in time (or is gone)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode()


class Merged(Collector):
    """Several workers' series as one: every sample gets its worker's `worker` label."""

    def __init__(self, sources: Sequence[tuple[str, str]]) -> None:
        self.sources = sources

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for worker, text in self.sources:
            for family in text_string_to_metric_families(text):
                out = families.get(family.name)
                if out is None:
                    out = Metric(family.name, family.documentation, family.type)
                    families[family.name] = out
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp)
        yield from families.values()


def group_text(sources: Sequence[tuple[str, str]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged(sources))
    return generate_latest(registry)


def ready_value(text: str) -> bool:
    for family in text_string_to_metric_families(text):
        if family.name == "roomcast_gateway_ready":
            return any(s.value == 1 for s in family.samples)
    return False
