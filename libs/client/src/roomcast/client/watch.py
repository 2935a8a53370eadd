"""`roomcast watch`: join rooms and print each blob as it arrives (a person's view of a room)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import click
from websockets.exceptions import InvalidStatus

from roomcast.client.errors import ViewerClosed, describe_connect_error
from roomcast.client.subscription import Status, subscribe
from roomcast.client.viewer import wire_bytes
from roomcast.core.blob import Blob
from roomcast.core.errors import ProtocolError, RoomcastError, RoomNameError
from roomcast.core.protocol import Joined, Position, Reset, parse_since_param
from roomcast.core.rooms import check_room

EXIT_CODES = """\b
Exit status:
  0  --count lines printed, or stopped with Ctrl-C
  1  --timeout passed first, or the gateway turned the viewer away for good
     (HTTP 400/401/403, or a close code that says not to come back)
  2  bad usage: a bad room name, a bad --since, an unknown option
"""


def _status_printer(positions: Callable[[], dict[str, str]]) -> Callable[[Status], None]:
    """Connection changes on stderr, one line each; stdout carries only what the rooms say."""

    def show(status: Status) -> None:
        if status.state == "connecting":
            if status.lost:
                line = f"connection lost ({status.error}); reconnecting"
            elif status.error:
                line = f"{status.error}, retrying in {status.retry_in_s:.2g} s"
            else:
                line = f"connecting to {status.url}"
        elif status.state == "recovering":
            where = ", ".join(f"{room} after {pos}" for room, pos in positions().items())
            line = f"reconnected to {status.url}; " + (
                f"resuming {where}" if where else "no blob yet, nothing to resume"
            )
        else:
            return  # live: the "watching ROOM" lines say so; closed: the exit says why
        click.echo(line, err=True)

    return show


def _say(msg: object, url: str) -> None:
    """What the gateway said about a room, on stderr."""
    if isinstance(msg, Joined):
        line = f"watching {msg.room} on {url}"
        if msg.recovered:
            line += " (resumed: nothing missed)"
        elif msg.recovered is False:
            oldest = msg.oldest if isinstance(msg.oldest, str) else "nothing"
            line += (
                f"; events sent while disconnected were missed (the history now starts at "
                f"{oldest}): reload the room"
            )
        click.echo(line, err=True)
    elif isinstance(msg, Reset):
        click.echo(f"{msg.room}: some events will not come (reset): reload the room", err=True)


def _check_since(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Position]:
    since: dict[str, Position] = {}
    for value in values:
        try:
            room, pos = parse_since_param(value)
        except ProtocolError as exc:
            raise click.BadParameter(str(exc)) from None
        since[room] = pos
    return since


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
@click.option(
    "--since",
    multiple=True,
    callback=_check_since,
    metavar="ROOM:EPOCH:SEQ",
    help="Resume ROOM after this position (a blob line's epoch and seq); may repeat.",
)
def watch(
    rooms: tuple[str, ...],
    url: str,
    per_event: bool,
    count: int,
    timeout: float,
    token: str,
    since: dict[str, Position],
) -> None:
    """Join ROOMS on a gateway and print each blob as it arrives.

    \b
    Each blob line shows the arrival time, the room, how many events it merged and their Kafka
    positions, then the blob itself as the gateway sent it:
        12:00:01.004 lobby p3 10..14 (5 events) {"type":"blob","room":"lobby",...}
    The viewer reconnects by itself if the gateway is unreachable or goes away, resumes each
    room after the last blob it printed (so nothing sent meanwhile is missed), and never prints
    an event twice. Connection changes go to stderr, one line each: "connecting to URL",
    "connection refused, retrying in 0.4 s", "connection lost (...); reconnecting",
    "reconnected to URL; resuming ROOM after EPOCH:SEQ", then "watching ROOM on URL (resumed:
    nothing missed)", or "...were missed...: reload the room" when the history no longer
    reaches back that far.
    """
    for room in since:
        if room not in rooms:
            raise click.BadParameter(
                f"{room} is not one of the rooms to watch", param_hint="'--since'"
            )
    try:
        ok = asyncio.run(_watch(list(rooms), url, per_event, count, timeout, token, since))
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
    rooms: list[str],
    url: str,
    per_event: bool,
    count: int,
    limit_s: float,
    token: str = "",
    since: dict[str, Position] | None = None,
) -> bool:
    seen = 0
    out = sys.stdout

    async def loop() -> None:
        nonlocal seen
        sub = subscribe(url, rooms, token=token or None, since=since, messages=True)
        sub.on_status = _status_printer(lambda: sub.positions)
        async with sub:
            async for item in sub:
                if not isinstance(item, Blob):
                    _say(item, url)
                    continue
                stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
                b = item
                if per_event:
                    for offset, event in zip(b.offsets, b.events, strict=True):
                        text = bytes(event).decode()
                        out.write(f"{stamp} {b.room} p{b.partition}@{offset} {text}\n")
                        seen += 1
                        if count and seen >= count:  # exactly --count lines, even mid-blob
                            break
                else:
                    span = f"{b.offsets[0]}..{b.offsets[-1]}" if b.offsets else "-"
                    n = len(b.offsets)
                    out.write(
                        f"{stamp} {b.room} p{b.partition} {span} ({n} event{'s' * (n != 1)}) "
                        f"{wire_bytes(b).decode()}\n"
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
