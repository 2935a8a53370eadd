"""`roomcast ingest`: run one ingest worker of the consumer group."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import click

from roomcast.core.logs import setup_logging
from roomcast.ingest.config import IngestConfig

_D = IngestConfig()


F = TypeVar("F", bound=Callable[..., Any])


def _opt(*names: str, help: str, **kw: Any) -> Callable[[F], F]:
    return click.option(*names, show_default=True, show_envvar=True, help=help, **kw)


@click.command()
@_opt("--kafka", default=_D.kafka, help="Kafka bootstrap servers, HOST:PORT[,...].")
@_opt("--kafka-security-protocol", default=_D.kafka_security_protocol,
      type=click.Choice(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
      help="How to reach Kafka: plain, TLS, SASL login, or SASL over TLS.")  # fmt: skip
@_opt("--kafka-sasl-mechanism", default=_D.kafka_sasl_mechanism,
      type=click.Choice(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
      help="SASL mechanism (with SASL_PLAINTEXT / SASL_SSL).")  # fmt: skip
@_opt("--kafka-sasl-username", default=_D.kafka_sasl_username, help="SASL user name.")
@_opt("--kafka-sasl-password", default=_D.kafka_sasl_password,
      help="SASL password: set it in the environment, not on the command line.")  # fmt: skip
@_opt("--kafka-ca-file", default=_D.kafka_ca_file,
      help="CA certificate(s) (PEM) the brokers' TLS certificates are checked against; "
      "empty: the system's CAs.")  # fmt: skip
@_opt("--kafka-cert-file", default=_D.kafka_cert_file,
      help="Client certificate (PEM) for mutual TLS, with --kafka-key-file.")  # fmt: skip
@_opt("--kafka-key-file", default=_D.kafka_key_file, help="Client key (PEM) for mutual TLS.")
@_opt("--nats", default=_D.nats, help="NATS server URL(s), comma-separated.")
@_opt("--nats-user", default=_D.nats_user, help="NATS user (with --nats-password).")
@_opt("--nats-password", default=_D.nats_password,
      help="NATS password: set it in the environment.")  # fmt: skip
@_opt("--nats-token", default=_D.nats_token, help="NATS auth token.")
@_opt("--nats-creds", default=_D.nats_creds, help="NATS credentials file (JWT + NKey seed).")
@_opt("--nats-nkey-seed", default=_D.nats_nkey_seed, help="File holding a NATS user NKey seed.")
@_opt("--nats-tls-ca", default=_D.nats_tls_ca,
      help="CA bundle to verify the NATS server's TLS certificate (tls:// URLs).")  # fmt: skip
@_opt("--topic", default=_D.topic, help="The events topic; bad records go to TOPIC.dlq. "
      "Both are created at start if missing (and allowed); an existing topic is never "
      "changed.")  # fmt: skip
@_opt("--topic-partitions", default=_D.topic_partitions, type=click.IntRange(min=1),
      help="Partitions of TOPIC if ingest creates it (TOPIC.dlq gets 1).")  # fmt: skip
@_opt("--group", default=_D.group, help="Kafka consumer group: workers in it share partitions.")
@_opt("--instance-id", default=_D.instance_id,
      help="Static group membership: a name unique to this worker that a restart reuses (a pod's "
      "name), so a restarted worker gets its partitions back at once. Empty: dynamic.")  # fmt: skip
@_opt("--session-timeout-ms", default=_D.session_timeout_ms, type=click.IntRange(min=1000),
      help="A worker silent this long loses its partitions to the others (brokers allow 6000 "
      "and up by default). Lower: faster takeover, more rebalances of slow workers.")  # fmt: skip
@_opt(
    "--window-ms",
    default=_D.window_ms,
    type=click.IntRange(min=0),
    help="Merge window per room: at most one blob per room per window, plus a leading edge "
    "(the first event of an idle room goes out at once). 0 = one blob per event.",
)
@_opt("--max-blob-events", default=_D.max_blob_events, type=click.IntRange(min=1),
      help="Cut a blob early at this many events.")  # fmt: skip
@_opt("--max-blob-bytes", default=_D.max_blob_bytes, type=click.IntRange(min=1),
      help="Cut a blob early at this many bytes of events.")  # fmt: skip
@_opt("--max-event-bytes", default=_D.max_event_bytes, type=click.IntRange(min=1),
      help="Events bigger than this go to the dead-letter topic.")  # fmt: skip
@_opt("--subject-prefix", default=_D.subject_prefix,
      help="The stream republishes each blob of room R it stored on PREFIX.R, the subject "
      "gateways subscribe to; ingest itself never publishes there.")  # fmt: skip
@_opt("--history-prefix", default=_D.history_prefix,
      help="Blobs of room R are published on PREFIX.R, the room's history subject, which the "
      "stream captures. Must not overlap --subject-prefix.")  # fmt: skip
@_opt("--stream", default=_D.stream,
      help="JetStream stream over HISTORY-PREFIX.>, republishing to SUBJECT-PREFIX.>, created "
      "at start if missing. On an existing stream only the subjects, republish, direct gets, "
      "history and dedup window are set; the rest is the operator's.")  # fmt: skip
@_opt("--stream-replicas", default=_D.stream_replicas, type=click.IntRange(min=1, max=5),
      help="Replicas of the stream when ingest creates it; an existing stream's replicas are "
      "raised to this, never lowered.")  # fmt: skip
@_opt("--history-msgs", default=_D.history_msgs, type=click.IntRange(min=1),
      help="Blobs JetStream keeps per room.")  # fmt: skip
@_opt("--history-age-s", default=_D.history_age_s, type=click.FloatRange(min=1),
      help="How long JetStream keeps a blob, in seconds (also the longest dedup window: 120 s "
      "or this, whichever is shorter).")  # fmt: skip
@_opt("--max-in-flight", default=_D.max_in_flight, type=click.IntRange(min=1),
      help="Events consumed but not yet acked by JetStream before consumption pauses.")  # fmt: skip
@_opt("--ack-timeout-s", default=_D.ack_timeout_s, type=click.FloatRange(min=0.1),
      help="Republish a blob (same Msg-Id: stored once) not acked in this time; after a NATS "
           "reconnect, unacked blobs go again at once.")  # fmt: skip
@_opt("--dlq-retry-max-s", default=_D.dlq_retry_max_s, type=click.FloatRange(min=0.5),
      help="Longest wait between attempts to write dead letters (backoff from 0.5 s); while "
      "they fail, only their partitions are paused.")  # fmt: skip
@_opt("--fetch-max-wait-ms", default=_D.fetch_max_wait_ms, type=click.IntRange(min=0),
      help="How long Kafka holds a fetch for new data (the leading edge's floor).")  # fmt: skip
@_opt("--metrics-port", default=_D.metrics_port, type=click.IntRange(min=0),
      help="Prometheus /metrics and the liveness /healthz on this port (0: off).")  # fmt: skip
@_opt("--stall-timeout-s", default=_D.stall_timeout_s, type=click.FloatRange(min=1),
      help="/healthz answers 503 once the consume loop has not turned for this long.")  # fmt: skip
@_opt("--log-format", default="text", type=click.Choice(["text", "json"]), help="Log lines for "
      "people (text) or machines (json).")  # fmt: skip
@_opt("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]),
      help="Least severe log level shown.")  # fmt: skip
def ingest(log_format: str, log_level: str, **options: object) -> None:
    """Run an ingest worker: Kafka -> per-room merge -> NATS/JetStream -> commit.

    \b
    Each record's key is its room and its value one JSON event. Events of a room are merged per
    window into one blob (their bytes are embedded, never re-encoded) and published on
    HISTORY-PREFIX.<room> to JetStream with a Msg-Id; the stream stores it and republishes it on
    SUBJECT-PREFIX.<room> with its sequence (Nats-Sequence) and the room's previous one
    (Nats-Last-Sequence), so gateways see only stored blobs. A partition's offset is committed
    only below the oldest event JetStream has not acknowledged: a crash replays, nothing is lost.
    Bad records (no key, bad room name, no value, not JSON, not UTF-8, too big) go to TOPIC.dlq
    with headers saying why; while TOPIC.dlq cannot take them, only their partitions wait. NATS
    or Kafka down, at start or later: the worker waits for them, paused; it never exits on its
    own.
    Run several workers with the same --group to share the topic's partitions.
    SIGTERM/Ctrl-C: flush, wait for acks, commit, leave the group, exit 0.
    """
    setup_logging(log_level, log_format)
    config = IngestConfig(**options)  # type: ignore[arg-type]
    from roomcast.ingest.kafka_auth import client_options

    try:
        client_options(config)  # fail now, saying why, not on the first connection
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    from roomcast.core.natsauth import check_nats_auth

    if (why := check_nats_auth(config)) is not None:
        raise click.UsageError(why)
    from roomcast.core.rooms import all_subjects, subjects_overlap

    if subjects_overlap(all_subjects(config.history_prefix), all_subjects(config.subject_prefix)):
        raise click.UsageError(
            f"--history-prefix {config.history_prefix!r} overlaps --subject-prefix "
            f"{config.subject_prefix!r}: the stream would republish its blobs to itself"
        )
    try:
        import uvloop

        uvloop.run(_main(config))
    except KeyboardInterrupt:
        pass


async def _main(config: IngestConfig) -> None:
    from roomcast.ingest.worker import IngestWorker

    worker = IngestWorker(config)
    if config.metrics_port:
        from roomcast.ingest import health

        health.serve(
            config.metrics_port, config.metrics_host, lambda: worker.last_turn,
            config.stall_timeout_s,
        )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker.run(stop)
