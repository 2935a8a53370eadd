"""Every ingest setting, with its default, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from roomcast.core.blob import MAX_EVENT_BYTES
from roomcast.core.merge import DEFAULT_MAX_BYTES, DEFAULT_MAX_EVENTS
from roomcast.core.rooms import HISTORY_PREFIX, SUBJECT_PREFIX


@dataclass(frozen=True, slots=True)
class IngestConfig:
    kafka: str = "127.0.0.1:9092"
    kafka_security_protocol: str = "PLAINTEXT"  # SSL, SASL_PLAINTEXT, SASL_SSL (kafka_auth.py)
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ca_file: str = ""  # the brokers' CA (PEM); empty: the system's CAs
    kafka_cert_file: str = ""  # client certificate and key (PEM) for mutual TLS
    kafka_key_file: str = ""
    nats: str = "nats://127.0.0.1:4222"
    nats_user: str = ""
    nats_password: str = ""
    nats_token: str = ""
    nats_creds: str = ""  # NATS .creds file (JWT + NKey seed)
    nats_nkey_seed: str = ""  # file holding a user NKey seed (SU...), for NKey users
    nats_tls_ca: str = ""  # CA bundle to verify a tls:// NATS server
    topic: str = "roomcast.events"
    topic_partitions: int = 8  # when ingest creates the topic; an existing one is never changed
    group: str = "roomcast-ingest"
    instance_id: str = ""  # static group membership (KIP-345) when set; unique per worker
    session_timeout_ms: int = 10_000  # the group gives a silent worker's partitions away after it
    window_ms: int = 1000
    max_blob_events: int = DEFAULT_MAX_EVENTS
    max_blob_bytes: int = DEFAULT_MAX_BYTES
    max_event_bytes: int = MAX_EVENT_BYTES
    subject_prefix: str = SUBJECT_PREFIX  # the stream republishes room R's blobs on PREFIX.R
    history_prefix: str = HISTORY_PREFIX  # ingest publishes them on PREFIX.R; the stream has them
    stream: str = "ROOMCAST_ROOMS"
    stream_replicas: int = 1  # at creation; an existing stream's are raised to it, never lowered
    history_msgs: int = 100  # blobs kept per room subject
    history_age_s: float = 120.0
    duplicate_window_s: float = 120.0
    # Unacked events (in merge windows, in flight, or backlogged) before consumption pauses.
    # Throughput is at most this many per window: 1M ~ 150 MB of 150-byte events.
    max_in_flight: int = 1_000_000
    ack_timeout_s: float = 5.0  # republish (same Msg-Id) when JetStream has not acked by then
    commit_interval_s: float = 0.2
    fetch_max_wait_ms: int = 20  # broker-side wait: bounds the leading edge's latency
    max_poll_records: int = 5000
    dlq_timeout_s: float = 5.0  # one attempt at writing dead letters
    dlq_retry_max_s: float = 10.0  # the longest wait between attempts (backoff from 0.5 s)
    metrics_port: int = 9464  # 0: no metrics endpoint (and no /healthz)
    stall_timeout_s: float = 30.0  # /healthz: 503 once the consume loop has not turned this long
    metrics_host: str = "0.0.0.0"

    @property
    def dlq_topic(self) -> str:
        return self.topic + ".dlq"

    @property
    def window_s(self) -> float:
        return self.window_ms / 1000.0
