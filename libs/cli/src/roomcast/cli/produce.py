"""`roomcast produce`: write events to a room through Kafka, as a producer service would."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import Any

import click

from roomcast.core.blob import check_event
from roomcast.core.errors import EventError, RoomNameError
from roomcast.core.rooms import check_room

DEFAULT_TOPIC = "roomcast.events"


@click.command()
@click.argument("events", nargs=-1)
@click.option("--room", required=True, help="The room the events go to (the Kafka record key).")
@click.option(
    "--kafka",
    default="127.0.0.1:9092",
    show_default=True,
    show_envvar=True,
    help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].",
)
@click.option("--topic", default=DEFAULT_TOPIC, show_default=True, show_envvar=True)
@click.option("--kafka-security-protocol", default="PLAINTEXT", show_default=True,
              show_envvar=True,
              type=click.Choice(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
              help="As ingest's option of that name.")  # fmt: skip
@click.option("--kafka-sasl-mechanism", default="SCRAM-SHA-512", show_default=True,
              show_envvar=True, type=click.Choice(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
              help="SASL mechanism (with SASL_*).")  # fmt: skip
@click.option("--kafka-sasl-username", default="", show_envvar=True, help="SASL user name.")
@click.option("--kafka-sasl-password", default="", show_envvar=True,
              help="SASL password: set it in the environment.")  # fmt: skip
@click.option("--kafka-ca-file", default="", show_envvar=True,
              help="CA (PEM) for the brokers' TLS certificates (SSL, SASL_SSL).")  # fmt: skip
def produce(
    events: tuple[str, ...],
    room: str,
    kafka: str,
    topic: str,
    kafka_security_protocol: str,
    kafka_sasl_mechanism: str,
    kafka_sasl_username: str,
    kafka_sasl_password: str,
    kafka_ca_file: str,
) -> None:
    """Write EVENTS (each one JSON value) to ROOM; with no EVENTS, read one per line from stdin.

    \b
    roomcast produce --room lobby '{"text":"hi"}'
    seq 5 | sed 's/.*/{"n":&}/' | roomcast produce --room lobby
    roomcast produce --room _all '{"notice":"maintenance at 12:00"}'   # push to every viewer

    Each event is checked to be JSON before it is sent; a bad line stops the command with its line
    number and nothing after it is sent. Kafka acknowledges each event (acks=all).
    """
    try:
        check_room(room, allow_reserved=True)
    except RoomNameError as exc:
        raise click.BadParameter(str(exc), param_hint="--room") from None
    from roomcast.ingest.config import IngestConfig
    from roomcast.ingest.kafka_auth import client_options

    try:
        auth = client_options(IngestConfig(
            kafka_security_protocol=kafka_security_protocol,
            kafka_sasl_mechanism=kafka_sasl_mechanism,
            kafka_sasl_username=kafka_sasl_username,
            kafka_sasl_password=kafka_sasl_password,
            kafka_ca_file=kafka_ca_file,
        ))  # fmt: skip
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    lines: Iterable[str] = events if events else (line.rstrip("\n") for line in sys.stdin)
    try:
        sent = asyncio.run(_produce(kafka, topic, room, lines, auth))
    except EventError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach Kafka at {kafka}: {exc}") from None
    click.echo(f"produced {sent} event{'s' * (sent != 1)} to room {room} ({topic})", err=True)


async def _produce(
    kafka: str, topic: str, room: str, lines: Iterable[str], auth: dict[str, Any] | None = None
) -> int:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError, KafkaError

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka, acks="all", linger_ms=5, request_timeout_ms=15000, **(auth or {})
    )
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise OSError(f"{exc}; is it running? (`roomcast dev` starts one)") from None
    except KafkaError as exc:  # e.g. a SASL login refused
        await producer.stop()
        raise OSError(f"{type(exc).__name__}: {exc}") from None
    key = room.encode()
    sent = 0
    pending = []
    try:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            value = line.encode()
            try:
                check_event(value)
            except EventError as exc:
                raise EventError(exc.reason, f"event {n}: {exc}") from None
            pending.append(await producer.send(topic, value, key=key))
            sent += 1
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent
