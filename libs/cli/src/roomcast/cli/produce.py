"""`roomcast produce`: write events to a room through Kafka, as a producer service would."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

import click

from roomcast.core.blob import MAX_EVENT_BYTES, check_event
from roomcast.core.errors import EventError, RoomNameError
from roomcast.core.rooms import check_room

DEFAULT_TOPIC = "roomcast.events"

EXIT_CODES = """\b
Exit status:
  0  every event sent, and acknowledged by Kafka
  1  an event was refused (not UTF-8, not JSON, over --max-event-bytes):
     the events before it were sent, none after it
  2  bad usage: a bad room name, an unknown option
  3  Kafka unreachable, no such topic, or an event not acknowledged
"""


class KafkaProblem(click.ClickException):
    """Kafka could not be reached or did not take an event: exit status 3."""

    exit_code = 3


@click.command(epilog=EXIT_CODES)
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
@click.option(
    "--max-event-bytes",
    default=MAX_EVENT_BYTES,
    type=click.IntRange(min=1),
    show_default=True,
    show_envvar=True,
    help="Refuse bigger events; the same limit as the ingest workers' --max-event-bytes, over "
    "which they send an event to the dead-letter topic.",
)
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
    max_event_bytes: int,
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

    Each event is checked to be UTF-8 JSON of at most --max-event-bytes before it is sent; a bad
    one stops the command with its number (its line on stdin) and nothing after it is sent. Kafka
    acknowledges each event (acks=all). Blank lines are skipped.
    """
    try:
        check_room(room, allow_reserved=True)
    except RoomNameError as exc:
        raise click.BadParameter(str(exc), param_hint="--room") from None
    # Bytes as given: a shell argument or a line that is not UTF-8 gets a clear error, not a
    # UnicodeEncodeError (arguments come back as their original bytes).
    values: Iterable[bytes] = (
        [os.fsencode(e) for e in events]
        if events
        else (line.rstrip(b"\n") for line in sys.stdin.buffer)
    )
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
    # Our own errors say what is wrong; aiokafka's log lines would only repeat it. Its last error
    # is kept to say why Kafka could not be reached (e.g. a refused SASL login).
    aiokafka_log = logging.getLogger("aiokafka")
    aiokafka_log.setLevel(logging.ERROR)
    aiokafka_log.propagate = False
    aiokafka_log.addHandler(_HEARD)
    sent, error = asyncio.run(_produce(kafka, topic, room, values, max_event_bytes, auth))
    if sent:
        click.echo(f"produced {sent} event{'s' * (sent != 1)} to room {room} ({topic})", err=True)
    if error is not None:
        raise error


def _check(n: int, value: bytes, max_bytes: int) -> None:
    try:
        value.decode()
    except UnicodeDecodeError as exc:
        raise click.ClickException(
            f"event {n} is not valid UTF-8 (byte 0x{value[exc.start]:02x} at position"
            f" {exc.start}); events are JSON text in UTF-8"
        ) from None
    if len(value) > max_bytes:
        raise click.ClickException(
            f"event {n} is {len(value)} bytes, over --max-event-bytes ({max_bytes}); "
            "ingest would send it to the dead-letter topic"
        )
    try:
        check_event(value, max_bytes)
    except EventError as exc:
        raise click.ClickException(f"event {n}: {exc}") from None


class _LastError(logging.Handler):
    """Keeps the last error aiokafka logged (its logs are silenced: our errors say it once)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


_HEARD = _LastError()


async def _produce(
    kafka: str,
    topic: str,
    room: str,
    values: Iterable[bytes],
    max_bytes: int,
    auth: dict[str, Any] | None = None,
) -> tuple[int, click.ClickException | None]:
    """Send each value; returns how many Kafka acknowledged and the error that stopped it."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError, KafkaError, UnknownTopicOrPartitionError

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka, acks="all", linger_ms=5, request_timeout_ms=15000, **(auth or {})
    )
    heard = _HEARD
    try:
        await producer.start()
    except KafkaConnectionError:
        await producer.stop()
        secured = (auth or {}).get("security_protocol", "PLAINTEXT") != "PLAINTEXT"
        why = f" ({heard.last})" if secured and heard.last else ""  # e.g. a refused SASL login
        return 0, KafkaProblem(
            f"cannot reach Kafka at {kafka}{why}; is it running? (`roomcast dev` starts one)"
        )
    except KafkaError as exc:  # e.g. a SASL login refused
        await producer.stop()
        return 0, KafkaProblem(f"Kafka at {kafka} refused us: {type(exc).__name__}: {exc}")

    async def check_topic() -> None:
        """A missing topic is said at once, not after the request timeout."""
        try:
            cluster = await producer.client.fetch_all_metadata()
        except KafkaError:
            return  # the sends say what is wrong
        if topic not in cluster.topics():
            raise UnknownTopicOrPartitionError()

    key = room.encode()
    sent = 0
    pending: list[asyncio.Future[object]] = []
    error: click.ClickException | None = None

    async def settle() -> None:
        nonlocal sent
        results = await asyncio.gather(*pending, return_exceptions=True)
        pending.clear()
        for r in results:
            if isinstance(r, BaseException):
                raise r
            sent += 1

    try:
        for n, value in enumerate(values, 1):
            if not value.strip():
                continue
            try:
                _check(n, value, max_bytes)
            except click.ClickException as exc:
                error = exc
                break
            if not (sent or pending):  # before the first event only
                await check_topic()
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 1000:
                await settle()
        await settle()
    except UnknownTopicOrPartitionError:
        error = KafkaProblem(f"Kafka at {kafka} has no topic {topic!r}")
    except KafkaError as exc:
        error = KafkaProblem(f"Kafka at {kafka} did not take the events: {exc}")
    finally:
        try:
            await producer.stop()
        except KafkaError as exc:
            error = error or KafkaProblem(f"Kafka at {kafka} did not take the events: {exc}")
    return sent, error
