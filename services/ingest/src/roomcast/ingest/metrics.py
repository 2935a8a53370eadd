"""Ingest metrics, named once. Counted per batch or per blob, never per event in the hot loop."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("roomcast_ingest_events_in_total", "Events consumed from Kafka (valid or not)")
BLOBS_OUT = Counter("roomcast_ingest_blobs_out_total", "Blobs acknowledged by JetStream")
EVENTS_PER_BLOB = Histogram(
    "roomcast_ingest_events_per_blob",
    "Events merged into one blob",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
PUBLISH_LATENCY = Histogram(
    "roomcast_ingest_publish_latency_seconds",
    "From publishing a blob to JetStream's ack",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HELD = Gauge(
    "roomcast_ingest_held_blobs",
    "Blobs waiting for an earlier blob of their room to be acked (kept in order)",
)
REPUBLISHED = Counter("roomcast_ingest_republished_total", "Blobs sent again after no ack in time")
DEAD_LETTERS = Counter(
    "roomcast_ingest_dead_letters_total", "Records sent to the dead-letter topic", ["reason"]
)
CONSUMER_LAG = Gauge(
    "roomcast_ingest_consumer_lag", "Records behind the partition's high watermark", ["partition"]
)
IN_FLIGHT = Gauge("roomcast_ingest_in_flight_events", "Events consumed but not yet acknowledged")
PAUSED = Gauge("roomcast_ingest_paused", "1 while consumption is paused (NATS down or backlog)")
COMMITS = Counter("roomcast_ingest_commits_total", "Offset commits to Kafka")
PAUSED_PARTITIONS = Gauge(
    "roomcast_ingest_paused_partitions", "Owned partitions not being consumed right now"
)
DLQ_BLOCKED = Gauge(
    "roomcast_ingest_dlq_blocked_partitions",
    "Partitions paused because the dead-letter topic does not take their dead letters",
)
DLQ_FAILURES = Counter(
    "roomcast_ingest_dlq_write_failures_total", "Dead letters not written on an attempt (retried)"
)
PUBLISH_FAILURES = Counter(
    "roomcast_ingest_publish_failures_total",
    "JetStream publishes that failed or were refused (retried)",
)
