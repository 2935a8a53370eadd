"""`roomcast watch`: join rooms and print each blob as it arrives (a person's view of a room)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import click
from websockets.exceptions import InvalidStatus

from roomcast.client.viewer import ConnectionStatus, Viewer, ViewerClosed, describe_connect_error
from roomcast.core.errors import RoomcastError, RoomNameError
from roomcast.core.rooms import check_room

EXIT_CODES = """\b
Exit status:
  0  --count lines printed, or stopped with Ctrl-C
  1  --timeout passed first, or the gateway turned the viewer away for good
     (HTTP 400/401/403, or a close code that says not to come back)
  2  bad usage: a bad room name, an unknown option
"""


def _status_printer() -> Callable[[ConnectionStatus], None]:
    """Connection changes on stderr, one line each; stdout carries only what the rooms say."""
    lost = False

    def show(status: ConnectionStatus) -> None:
        nonlocal lost
        if status.state == "connecting":
            if lost:
                return  # "connection lost ...; reconnecting" said it
            line = f"connecting to {status.url}"
        elif status.state == "retrying":
            line = f"{status.error}, retrying in {status.retry_in_s:.2g} s"
        elif status.state == "lost":
            lost = True
            line = f"connection lost ({status.error}); reconnecting"
        elif status.state == "reconnected":
            # No resume yet: the gateway sends what is published from now on.
            line = f"reconnected to {status.url}; events sent while disconnected are not replayed"
        else:
            return  # connected: the "watching ROOM" lines say so
        click.echo(line, err=True)

    return show


def _check_rooms(
    ctx: click.Context, param: click.Parameter, rooms: tuple[str, ...]
) -> tuple[str, ...]:
    for room in rooms:
        try:
            check_room(room)
        except RoomNameError as exc:
            raise click.BadParameter(str(exc)) from None
    return rooms


@click.command(epilog=EXIT_CODES)
@click.argument("rooms", nargs=-1, required=True, callback=_check_rooms)
@click.option(
    "--url",
    default="ws://127.0.0.1:8080/ws",
    show_default=True,
    show_envvar=True,
    help="The gateway's WebSocket endpoint.",
)
@click.option(
    "--events",
    "per_event",
    is_flag=True,
    help="Print one line per event (after dedup) instead of one line per blob.",
)
@click.option(
    "--count",
    type=int,
    default=0,
    help="Exit after printing this many lines: blobs, or events with --events (0: until Ctrl-C).",
)
@click.option(
    "--timeout",
    type=float,
    default=0,
    help="Exit with status 1 if --count lines have not come after this many seconds (0: wait).",
)
@click.option(
    "--token",
    default="",
    show_envvar=True,
    help="A viewer token for a gateway with --auth jwt (`roomcast token` mints one).",
)
def watch(
    rooms: tuple[str, ...], url: str, per_event: bool, count: int, timeout: float, token: str
) -> None:
    """Join ROOMS on a gateway and print each blob as it arrives.

    \b
    Each blob line shows the arrival time, the room, how many events it merged and their Kafka
    positions, then the blob itself as the gateway sent it:
        12:00:01.004 lobby p3 10..14 (5 events) {"type":"blob","room":"lobby",...}
    The viewer reconnects by itself if the gateway is unreachable or goes away, and never prints
    an event twice. Connection changes go to stderr, one line each: "connecting to URL",
    "connection refused, retrying in 0.4 s", "connection lost (...); reconnecting",
    "reconnected to URL" (events sent while it was disconnected are not replayed).
    """
    try:
        ok = asyncio.run(_watch(list(rooms), url, per_event, count, timeout, token))
    except KeyboardInterrupt:
        ok = True
    except InvalidStatus as exc:
        raise click.ClickException(
            f"the gateway at {url} refused the viewer: {describe_connect_error(exc)}"
        ) from None
    except (RoomcastError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(0 if ok else 1)


async def _watch(
    rooms: list[str], url: str, per_event: bool, count: int, limit_s: float, token: str = ""
) -> bool:
    seen = 0
    out = sys.stdout

    async def loop() -> None:
        nonlocal seen

        def joined(room: str) -> None:
            click.echo(f"watching {room} on {url}", err=True)

        async with Viewer(
            url, rooms, on_joined=joined, on_status=_status_printer(), token=token
        ) as viewer:
            async for got in viewer:
                stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
                b = got.blob
                if per_event:
                    for offset, event in got.fresh:
                        out.write(f"{stamp} {b.room} p{b.partition}@{offset} {event.decode()}\n")
                        seen += 1
                        if count and seen >= count:  # exactly --count lines, even mid-blob
                            break
                else:
                    span = f"{b.offsets[0]}..{b.offsets[-1]}" if b.offsets else "-"
                    n = len(b.offsets)
                    out.write(
                        f"{stamp} {b.room} p{b.partition} {span} ({n} event{'s' * (n != 1)}) "
                        f"{got.raw.decode()}\n"
                    )
                    seen += 1
                out.flush()
                if count and seen >= count:
                    return

    try:
        if limit_s > 0:
            async with asyncio.timeout(limit_s):
                await loop()
        else:
            await loop()
    except TimeoutError:
        click.echo(f"watch: {seen} of {count} lines after {limit_s:g}s", err=True)
        return False
    except ViewerClosed as exc:
        click.echo(f"watch: {exc}", err=True)
        return False
    return True
