"""`roomcast produce`: write events to a room through Kafka, as a producer service would."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable

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
def produce(events: tuple[str, ...], room: str, kafka: str, topic: str) -> None:
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
    lines: Iterable[str] = events if events else (line.rstrip("\n") for line in sys.stdin)
    try:
        sent = asyncio.run(_produce(kafka, topic, room, lines))
    except EventError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach Kafka at {kafka}: {exc}") from None
    click.echo(f"produced {sent} event{'s' * (sent != 1)} to room {room} ({topic})", err=True)


async def _produce(kafka: str, topic: str, room: str, lines: Iterable[str]) -> int:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka, acks="all", linger_ms=5, request_timeout_ms=15000
    )
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise OSError(f"{exc}; is it running? (`roomcast dev` starts one)") from None
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
