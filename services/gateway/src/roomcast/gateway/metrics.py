"""Gateway metrics, named once. Counted per blob or per connection, never per viewer per frame.

Each worker process serves its own registry on /metrics; with several workers behind one port a
scrape sees one worker at a time, so scrape each pod's workers or sum over `worker` (a label on
every series).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

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
