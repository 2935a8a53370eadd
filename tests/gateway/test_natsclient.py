"""The gateway's short way in for room messages (roomcast.gateway.natsclient).

The parser is checked against nats-py's own on the same bytes cut at every kind of place: every
message, status and control line comes out the same and in the same order. The feed is checked
against a real nats-server: room blobs (plain, with headers as the history republishes them, big
ones that span reads) take the short way and arrive whole and in order, while requests on the same
connection still work.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.protocol.parser import Parser as NatsParser

from roomcast.gateway.feed import NatsFeed
from roomcast.gateway.natsclient import Client
from tests.support import unique

DIRECT = (1, 2)  # sids of room subscriptions; 3 and 4 are anything else


def stream(big_bytes: int = 76_800) -> bytes:
    """A server's output with every op a client reads, for direct and other subscriptions."""
    hdr = b"NATS/1.0\r\nNats-Stream: S\r\nNats-Sequence: 7\r\nNats-Last-Sequence: 5\r\n\r\n"
    status = b"NATS/1.0 503\r\n\r\n"
    big = (bytes(range(256)) * (big_bytes // 256 + 1))[:big_bytes]  # CRLFs and spaces inside
    ops = [
        b'INFO {"server_id":"x","max_payload":1048576}\r\n',
        b"MSG room.a 1 5\r\nhello\r\n",
        b"MSG room.b 2 0\r\n\r\n",
        b"+OK\r\n",
        b"HMSG room.a 1 %d %d\r\n%sblob\r\n" % (len(hdr), len(hdr) + 4, hdr),
        b"MSG _INBOX.x 3 reply.to 3\r\nabc\r\n",
        b"PING\r\n",
        b"HMSG _INBOX.y 4 %d %d\r\n%s\r\n" % (len(status), len(status), status),
        b"MSG room.b 2 %d\r\n%s\r\n" % (len(big), big),
        b"PONG\r\n",
        b"HMSG room.b 2 reply.z %d %d\r\n%sxy\r\n" % (len(hdr), len(hdr) + 2, hdr),
        b"MSG\troom.a\t1\t2\r\nok\r\n",  # tabs: nats-py's expressions take any blank
        b"MSG room.a 99 4\r\ngone\r\n",  # an unknown sid: dropped by both
        b"MSG room.a 1 3\r\nend\r\n",
    ]
    return b"".join(ops)


class Recording:
    """What a client did with what its parser handed it."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[Any, ...]] = []

    async def _process_ping(self) -> None:
        self.events.append(("ping",))

    async def _process_pong(self) -> None:
        self.events.append(("pong",))

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        self.events.append(("info", info["server_id"]))

    async def _process_err(self, err: str) -> None:
        self.events.append(("err", err))


class Stock(Recording, NatsClient):
    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes | None) -> None:  # fmt: skip
        if sid in self._subs:
            self.events.append(("msg", sid, data, await self._process_headers(headers)))


class Ours(Recording, Client):
    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes | None) -> None:  # fmt: skip
        if sid in DIRECT:
            await super()._process_msg(sid, subject, reply, data, headers)
        elif sid in self._subs:
            self.events.append(("msg", sid, data, await self._process_headers(headers)))


class Sub:
    def __init__(self, sid: int, events: list[tuple[Any, ...]] | None) -> None:
        self._received = 0
        self._cb: Any = None
        if events is not None:

            async def cb(msg: Any) -> None:
                raise AssertionError("the short way was not taken")

            def direct(data: bytes, hdr: dict[str, str] | None) -> None:
                events.append(("msg", sid, data, hdr))

            cb.direct = direct  # type: ignore[attr-defined]
            self._cb = cb


def run(client: Recording, chunks: list[bytes]) -> list[tuple[Any, ...]]:
    async def go() -> None:
        for chunk in chunks:
            await client._ps.parse(chunk)  # type: ignore[attr-defined]

    asyncio.run(go())
    return client.events


def parsed(chunks: list[bytes]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], Ours]:
    stock = Stock()
    stock._ps = NatsParser(stock)
    ours = Ours()
    for sid in (1, 2, 3, 4):
        stock._subs[sid] = Sub(sid, None)  # type: ignore[assignment]
        ours._subs[sid] = Sub(sid, ours.events if sid in DIRECT else None)  # type: ignore[assignment]
    return run(stock, chunks), run(ours, chunks), ours


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def test_whole_stream_parses_as_nats_py_does() -> None:
    stock, ours, client = parsed([stream()])
    assert ours == stock
    kinds = [e[0] for e in ours]
    assert kinds.count("msg") == 9 and kinds.count("ping") == 1 and kinds.count("pong") == 1
    assert client.direct_msgs == 7  # the room messages, not the inbox ones
    assert client.stats["in_msgs"] == 7
    with_headers = [e for e in ours if e[0] == "msg" and e[1] == 1 and e[2] == b"blob"]
    assert with_headers[0][3]["Nats-Sequence"] == "7"


def test_byte_by_byte_parses_as_nats_py_does() -> None:
    data = stream(big_bytes=600)
    stock, ours, _ = parsed([data[i : i + 1] for i in range(len(data))])
    assert ours == stock and len(ours) == 12


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(stream()) - 1), max_size=40))
def test_any_split_parses_as_nats_py_does(points: list[int]) -> None:
    stock, ours, _ = parsed(cut(stream(), points))
    assert ours == stock


def test_a_bad_line_is_refused_as_nats_py_refuses_it() -> None:
    from nats.errors import ProtocolError

    for bad in (b"MSG room.a x 5\r\nhello\r\n", b"MSG room.a 1 5 6 7\r\nhello\r\n"):
        with pytest.raises(ProtocolError):
            run(Ours(), [bad])


def test_a_failing_room_callback_is_reported_not_fatal() -> None:
    errors: list[BaseException] = []
    client = Ours()

    async def error_cb(exc: BaseException) -> None:
        errors.append(exc)

    client._error_cb = error_cb
    sub = Sub(1, [])

    def boom(data: bytes, hdr: object) -> None:
        raise ValueError(data)

    sub._cb.direct = boom
    client._subs[1] = sub  # type: ignore[assignment]
    run(client, [b"MSG room.a 1 1\r\nx\r\nPING\r\nMSG room.a 1 1\r\ny\r\n"])
    assert [str(e) for e in errors] == ["b'x'", "b'y'"]
    assert client.events == [("ping",)]  # parsing went on


async def _feed_roundtrip(nats_url: str) -> None:
    prefix = unique("nc").replace("-", "_")
    got: list[tuple[str, bytes, int, int]] = []
    feed = NatsFeed(nats_url, prefix, "test")
    await feed.start(lambda room, data, produced, seq, prev: got.append((room, data, seq, prev)))
    await feed.subscribe("r1")
    await feed.subscribe("r2")
    pub = await nats.connect(nats_url)
    try:
        sent: list[tuple[str, bytes, int, int]] = []
        for i in range(300):
            room = f"r{1 + i % 2}"
            data = (b"%d:" % i) + (b"x" * (200_000 if i % 97 == 0 else 50))
            if i % 3 == 0:  # as the history republishes a blob
                headers = {"Nats-Stream": feed.stream, "Nats-Sequence": str(i + 1),
                           "Nats-Last-Sequence": str(i)}  # fmt: skip
                await pub.publish(f"{prefix}.{room}", data, headers=headers)
                sent.append((room, data, i + 1, i))
            else:
                await pub.publish(f"{prefix}.{room}", data)
                sent.append((room, data, 0, 0))
        await pub.flush()

        # A request on the same connection takes nats-py's own path.
        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        sub = await pub.subscribe("svc.echo", cb=echo)
        await pub.flush()
        assert feed.nc is not None
        reply = await feed.nc.request("svc.echo", b"ping", timeout=5)
        assert reply.data == b"ping"
        await sub.unsubscribe()
        for _ in range(100):
            if len(got) >= len(sent):
                break
            await asyncio.sleep(0.05)
        assert got == sent
        assert feed.nc.direct_msgs == len(sent)
    finally:
        await pub.close()
        await feed.close()


def test_feed_takes_the_short_way_against_a_real_server(nats_url: str) -> None:
    asyncio.run(_feed_roundtrip(nats_url))
