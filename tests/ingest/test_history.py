"""Every blob a gateway receives is one JetStream has stored, carrying its history position.

Ingest publishes each blob on the room's history subject HISTORY.<room>; the stream stores it and
only then republishes it on PREFIX.<room>, the subject gateways subscribe to, with `Nats-Sequence`
(the blob's `seq`) and `Nats-Last-Sequence` (the room's previous `seq`, its `prev`). Here a core
NATS subscriber holds PREFIX.<room> as a gateway does; real Kafka, NATS and `roomcast ingest`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import itertools
import signal
import time
from collections.abc import Callable
from types import TracebackType

import nats
from nats.aio.msg import Msg
from nats.js.api import RePublish, StreamConfig

from roomcast.core.blob import decode_blob
from roomcast.core.rooms import room_subject
from tests.ingest.conftest import IngestEnv, events_by_room
from tests.ingest.test_ingest import room_events
from tests.ingest.test_resilience import alive, fully_committed, metric, until
from tests.support import free_port, unique


class Subscriber:
    """Core NATS subscriptions of PREFIX.<room>, one per room, as a gateway holds them."""

    def __init__(self, env: IngestEnv, rooms: list[str]) -> None:
        self.env, self.rooms = env, rooms
        self.got: dict[str, list[Msg]] = {room: [] for room in rooms}
        self.nc: nats.NATS | None = None

    async def __aenter__(self) -> Subscriber:
        self.nc = await nats.connect(self.env.nats)
        for room in self.rooms:

            async def on_blob(msg: Msg, room: str = room) -> None:
                self.got[room].append(msg)

            await self.nc.subscribe(room_subject(room, self.env.prefix), cb=on_blob)
        await self.nc.flush()
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.nc is not None
        await self.nc.close()

    async def flush(self) -> None:
        """Whatever the server had sent this connection before now has been handled."""
        assert self.nc is not None
        await self.nc.flush()

    async def until(self, what: str, ok: Callable[[], bool], timeout: float = 30) -> None:
        async def check() -> bool:
            return ok()

        await until(what, check, timeout)

    def events(self, room: str, dedup: bool = True) -> list[int]:
        """The room's events ({"seq": n}) as a viewer applying the dedup rule has them."""
        blobs = [decode_blob(m.data) for m in self.got[room]]
        return events_by_room(blobs, dedup=dedup).get(room, [])


def links(room: str, msgs: list[Msg]) -> list[tuple[int, int]]:
    """(Nats-Sequence, Nats-Last-Sequence) of each blob; each must have come from the stream."""
    out = []
    for m in msgs:
        headers = m.headers or {}
        assert "Nats-Sequence" in headers and "Nats-Last-Sequence" in headers, (
            f"a blob of {room} reached subscribers without the stream's position: {headers}"
        )
        out.append((int(headers["Nats-Sequence"]), int(headers["Nats-Last-Sequence"])))
    return out


def assert_chain(room: str, chain: list[tuple[int, int]], first_prev: int = 0) -> None:
    """Each blob's Last-Sequence is the Sequence of the room's blob before it: nothing missing."""
    assert chain, f"no blob of {room}"
    assert chain[0][1] == first_prev, (room, chain[:3])
    for (before, _), (seq, prev) in itertools.pairwise(chain):
        assert prev == before and seq > before, f"{room}: chain broken at {before} -> {(seq, prev)}"


async def assert_stored(env: IngestEnv, room: str, msgs: list[Msg]) -> None:
    """Each blob is the very message the stream holds at its Nats-Sequence (a direct get)."""
    nc = await nats.connect(env.nats)
    try:
        js = nc.jetstream()
        for m in msgs:
            stored = await js.get_msg(env.stream, int((m.headers or {})["Nats-Sequence"]),
                                      direct=True)  # fmt: skip
            assert stored.data == m.data, room
            assert stored.subject == room_subject(room, env.history), stored.subject
    finally:
        await nc.close()


async def stream_info(env: IngestEnv) -> nats.js.api.StreamInfo:
    nc = await nats.connect(env.nats)
    try:
        return await nc.jetstream().stream_info(env.stream, subjects_filter=f"{env.history}.>")
    finally:
        await nc.close()


async def test_two_rooms_keep_an_unbroken_chain_across_an_ingest_kill_and_restart(
    ingest_env: IngestEnv,
) -> None:
    """Two interleaved rooms; the worker is killed mid-stream and another takes over (replaying
    what was not committed): each room's blobs still chain Last-Sequence -> Sequence without a
    hole, every blob is the stored one, and the dedup rule leaves each event once, in order."""
    opts = ("--window-ms", "100", "--session-timeout-ms", "6000")
    first = ingest_env.start(*opts)
    rooms = ["chain-a", "chain-b"]
    records, sent = room_events(rooms, 3000)  # a, b, a, b, ...
    want = {room: list(range(1, n + 1)) for room, n in sent.items()}
    async with Subscriber(ingest_env, rooms) as sub:
        producing = asyncio.create_task(ingest_env.produce(records, rate=500))  # ~6 s
        await sub.until("blobs of both rooms", lambda: all(sub.got[r] for r in rooms))
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        before = {room: len(sub.got[room]) for room in rooms}
        assert not producing.done(), "the kill was meant to land mid-stream"
        second = ingest_env.start(*opts)
        await producing
        await sub.until(
            "every event of both rooms",
            lambda: all(sub.events(room) == want[room] for room in rooms),
            timeout=90,
        )
        await sub.flush()
    alive(second)
    for room in rooms:
        msgs = sub.got[room]
        assert len(msgs) > before[room], f"{room}: nothing after the restart"
        assert_chain(room, links(room, msgs))
        await assert_stored(ingest_env, room, msgs)
        for m in msgs:  # what the stream adds, and ingest's own headers kept
            h = m.headers or {}
            assert h["Nats-Stream"] == ingest_env.stream
            assert h["Nats-Subject"] == room_subject(room, ingest_env.history)
            assert h["Nats-Msg-Id"].startswith(f"{room}/")
            assert int(h["Roomcast-Produced-Ms"]) > 0
            stored_at = datetime.datetime.strptime(h["Nats-Time-Stamp"][:19], "%Y-%m-%dT%H:%M:%S")
            assert abs(stored_at.replace(tzinfo=datetime.UTC).timestamp() - time.time()) < 600, h
    assert {room: sub.events(room) for room in rooms} == want


async def test_a_stream_of_the_old_layout_is_upgraded_in_place_and_keeps_the_operators_settings(
    ingest_env: IngestEnv,
) -> None:
    """A stream the older ingest made (over PREFIX.> itself, no republish), with an operator's
    settings: ingest moves it to the history subjects, republish and direct gets in place. The
    stream, its messages and its creation time (the positions' epoch) stay, and so does every
    setting roomcast does not own."""
    nc = await nats.connect(ingest_env.nats)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=ingest_env.stream, subjects=[f"{ingest_env.prefix}.>"],
                         description="set by ops", max_bytes=64 * 2**20, max_msgs=50_000,
                         max_msgs_per_subject=5, num_replicas=1, duplicate_window=120)
        )  # fmt: skip
        await js.publish(room_subject("up", ingest_env.prefix), b'{"type":"blob","room":"up"}')
        before = await js.stream_info(ingest_env.stream)
        async with Subscriber(ingest_env, ["up"]) as sub:
            worker = ingest_env.start("--history-msgs", "77", "--window-ms", "0")
            await ingest_env.produce([(b"up", b'{"seq":1}'), (b"up", b'{"seq":2}')])
            await sub.until("both events", lambda: sub.events("up") == [1, 2])
        info = await js.stream_info(ingest_env.stream)
    finally:
        await nc.close()
    cfg = info.config
    assert cfg.subjects == [f"{ingest_env.history}.>"]
    assert cfg.republish == RePublish(src=f"{ingest_env.history}.>", dest=f"{ingest_env.prefix}.>")
    assert cfg.allow_direct is True
    assert (cfg.description, cfg.max_bytes, cfg.max_msgs) == ("set by ops", 64 * 2**20, 50_000)
    assert cfg.max_msgs_per_subject == 77  # roomcast's own setting is applied
    assert info.created == before.created and info.state.first_seq == 1  # the same stream
    chain = links("up", sub.got["up"])
    assert_chain("up", chain)  # the room's first blob on its history subject: prev 0
    assert chain[0][0] == 2  # stored after the old layout's message
    alive(worker)


async def test_a_duplicate_is_neither_stored_nor_republished_twice(ingest_env: IngestEnv) -> None:
    """With --window-ms 0 a Kafka replay builds the very same blobs, with the same Nats-Msg-Id:
    here a second consumer group reads the topic again from the start. JetStream stores each
    once and so republishes each once: subscribers see every blob once."""
    first = ingest_env.start("--window-ms", "0")
    async with Subscriber(ingest_env, ["dup"]) as sub:
        await ingest_env.produce([(b"dup", b'{"seq":%d}' % i) for i in range(1, 21)])
        await sub.until("20 blobs", lambda: sub.events("dup", dedup=False) == list(range(1, 21)))
        assert first.stop() == 0
        ingest_env.group = unique("g")  # a fresh group starts at the earliest offset: a replay
        second = ingest_env.start("--window-ms", "0")
        await until("the replay acked and committed", lambda: fully_committed(ingest_env, 8), 60)
        await ingest_env.produce([(b"dup", b'{"seq":21}')])  # the replaying worker's first own
        await sub.until("blob 21", lambda: 21 in sub.events("dup", dedup=False))
        await sub.flush()
    got = sub.events("dup", dedup=False)
    assert got == list(range(1, 22)), f"{len(got)} events for 21 sent: {got}"
    assert_chain("dup", links("dup", sub.got["dup"]))
    assert (await stream_info(ingest_env)).state.messages == 21
    alive(second)


async def test_nothing_reaches_subscribers_while_the_stream_refuses_or_is_missing(
    ingest_env: IngestEnv,
) -> None:
    """The stream is replaced by one that refuses every blob (sealed), then deleted: while blobs
    are not stored, no subscriber gets them, however often ingest sends them. Once ingest has
    set its stream up again, they flow, stored, in a chain that starts afresh (a new stream)."""
    port = free_port()
    ingest_env.start("--window-ms", "0", "--ack-timeout-s", "1", "--metrics-port", str(port))
    async with Subscriber(ingest_env, ["gone"]) as sub:
        await ingest_env.produce([(b"gone", b'{"seq":1}')])
        await sub.until("the first blob", lambda: sub.events("gone") == [1])
        nc = await nats.connect(ingest_env.nats)
        try:
            js = nc.jetstream()
            await js.delete_stream(ingest_env.stream)
            refusing = StreamConfig(name=ingest_env.stream, subjects=[f"{ingest_env.history}.>"])
            await js.add_stream(refusing)
            await js.update_stream(dataclasses.replace(refusing, sealed=True))
            await ingest_env.produce([(b"gone", b'{"seq":%d}' % i) for i in range(2, 12)])

            async def sent_again() -> bool:  # the room's oldest refused blob, again and again
                n = await asyncio.to_thread(metric, port, "roomcast_ingest_republished_total")
                return (n or 0) >= 3

            await until("ingest sending the refused blobs again", sent_again)
            await sub.flush()
            assert sub.events("gone", dedup=False) == [1], "blobs reached subscribers unstored"
            await js.delete_stream(ingest_env.stream)  # missing: ingest sets it up again
        finally:
            await nc.close()
        await sub.until("every event", lambda: sub.events("gone") == list(range(1, 12)), 30)
        await sub.flush()
    assert sub.events("gone", dedup=False) == list(range(1, 12))
    after = sub.got["gone"][1:]
    assert_chain("gone", links("gone", after))  # the new stream's chain, from 0
    await assert_stored(ingest_env, "gone", after)
    info = await stream_info(ingest_env)
    assert info.config.republish is not None and not info.config.sealed


async def test_a_room_whose_history_aged_out_starts_again_at_prev_zero(
    ingest_env: IngestEnv,
) -> None:
    """Nats-Last-Sequence names the room's previous blob still in the stream (docs/protocol.md,
    JetStream): once a quiet room's blobs are past --history-age-s, its next blob has prev 0."""
    ingest_env.start("--window-ms", "0", "--history-age-s", "1")
    async with Subscriber(ingest_env, ["quiet"]) as sub:
        await ingest_env.produce([(b"quiet", b'{"seq":1}'), (b"quiet", b'{"seq":2}')])
        await sub.until("two blobs", lambda: sub.events("quiet") == [1, 2])

        async def aged_out() -> bool:
            return (await stream_info(ingest_env)).state.messages == 0

        await until("the room's blobs aged out of the history", aged_out)
        await ingest_env.produce([(b"quiet", b'{"seq":3}')])
        await sub.until("the third blob", lambda: sub.events("quiet") == [1, 2, 3])
    chain = links("quiet", sub.got["quiet"])
    assert_chain("quiet", chain[:2])
    assert chain[2][1] == 0 and chain[2][0] > chain[1][0], chain


async def test_a_room_keeps_kafka_order_in_the_history_when_one_publish_fails(
    ingest_env: IngestEnv,
) -> None:
    """The stream refuses one blob of a room (here: over an operator's --max-msg-size; in
    production: a leader change, an ack timeout, a reconnect) while it would take the room's next
    ones. Those must not be stored ahead of it: gateways follow the stored chain, and a viewer's
    dedup rule (docs/protocol.md) drops every event at or below the newest offset it has seen,
    so a blob stored late is lost to viewers. Once the stream takes it, the room's blobs follow
    it, in Kafka order; another room never waits for it."""
    port = free_port()
    worker = ingest_env.start("--window-ms", "0", "--metrics-port", str(port))
    async with Subscriber(ingest_env, ["first", "other"]) as sub:
        await ingest_env.produce([(b"first", b'{"seq":1}')])
        await sub.until("the first blob", lambda: sub.events("first") == [1])
        nc = await nats.connect(ingest_env.nats)
        try:
            js = nc.jetstream()
            config = (await js.stream_info(ingest_env.stream)).config
            await js.update_stream(dataclasses.replace(config, max_msg_size=1024))
            resent = await asyncio.to_thread(metric, port, "roomcast_ingest_republished_total")
            big = b'{"seq":2,"pad":"%s"}' % (b"x" * 2000)
            records = [(b"first", big)]
            for i in range(3, 9):
                records += [(b"first", b'{"seq":%d}' % i), (b"other", b'{"seq":%d}' % (i - 2))]
            await ingest_env.produce(records)
            others = list(range(1, 7))
            await sub.until("the other room's events", lambda: sub.events("other") == others)

            async def refused_again() -> bool:  # the big blob was refused, then sent again
                n = await asyncio.to_thread(metric, port, "roomcast_ingest_republished_total")
                return (n or 0) >= (resent or 0) + 1

            await until("the refused blob sent again", refused_again)
            await sub.flush()
            assert sub.events("first", dedup=False) == [1], "blobs stored ahead of a refused one"
            await js.update_stream(dataclasses.replace(config, max_msg_size=-1))
        finally:
            await nc.close()
        await sub.until(
            "every event of the room",
            lambda: sorted(sub.events("first", dedup=False)) == list(range(1, 9)),
        )
        await sub.flush()
    assert sub.events("first") == list(range(1, 9)), "a viewer lost events"
    assert sub.events("first", dedup=False) == list(range(1, 9))
    assert_chain("first", links("first", sub.got["first"]))
    stored = events_by_room(await ingest_env.stream_blobs(14))
    assert stored == {"first": list(range(1, 9)), "other": list(range(1, 7))}, stored
    await until("everything acked and committed", lambda: fully_committed(ingest_env, 8))
    alive(worker)
