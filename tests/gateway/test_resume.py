"""Resume and catch-up on a live gateway worker, against a real JetStream history.

Each test makes its own stream the way ingest sets it up (history subjects, republished to the
subjects gateways subscribe to, direct gets allowed) and stores blobs in it; the gateway only ever
sees what the stream republishes. What a viewer is checked for is what an app relies on: every
blob after its position exactly once and in order, `recovered` telling the truth, and nothing
read from the history more often than needed.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Callable, Iterator

import nats
import pytest
import websockets
from nats.js.api import RePublish, StreamConfig
from websockets.sync.client import ClientConnection, connect

from roomcast.core.blob import encode_blob
from tests.gateway.conftest import Gateway, RawViewer
from tests.support import scrape, unique


def blob(room: str, n: int, pad: int = 0) -> bytes:
    return encode_blob(room, 0, [n], [json.dumps({"n": n, "pad": "x" * pad}).encode()])


class History:
    """A stream set up as ingest sets it up, and a producer that stores blobs in it."""

    def __init__(self, url: str, max_msgs: int = 100) -> None:
        self.url = url
        self.stream = unique("RESUME").replace("-", "_")
        self.hist = unique("hist").replace("-", "_")
        self.live = unique("live").replace("-", "_")
        self.created = asyncio.run(self._create(max_msgs))

    async def _create(self, max_msgs: int) -> str:
        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            await js.add_stream(
                StreamConfig(
                    name=self.stream,
                    subjects=[f"{self.hist}.>"],
                    max_msgs_per_subject=max_msgs,
                    allow_direct=True,
                    republish=RePublish(src=f"{self.hist}.>", dest=f"{self.live}.>"),
                )
            )
            info = await js.stream_info(self.stream)
            return str(info.created)
        finally:
            await nc.close()

    @property
    def args(self) -> list[str]:
        return [
            "--stream",
            self.stream,
            "--history-prefix",
            self.hist,
            "--subject-prefix",
            self.live,
        ]

    def store(self, *items: tuple[str, bytes]) -> list[int]:
        """Store (room, blob) pairs in order; returns their stream sequences."""

        async def go() -> list[int]:
            nc = await nats.connect(self.url)
            try:
                js = nc.jetstream()
                return [(await js.publish(f"{self.hist}.{r}", b)).seq for r, b in items]
            finally:
                await nc.close()

        return asyncio.run(go())

    def delete(self) -> None:
        async def go() -> None:
            nc = await nats.connect(self.url)
            try:
                await nc.jetstream().delete_stream(self.stream)
            finally:
                await nc.close()

        asyncio.run(go())


@pytest.fixture
def history(nats_url: str) -> Iterator[Callable[..., History]]:
    made: list[History] = []

    def make(max_msgs: int = 100) -> History:
        made.append(History(nats_url, max_msgs))
        return made[-1]

    yield make
    for h in made:
        h.delete()


def recv(ws: ClientConnection, timeout: float = 10) -> dict[str, object]:
    message = json.loads(ws.recv(timeout=timeout))
    assert isinstance(message, dict)
    return message


def blobs(ws: ClientConnection, count: int) -> list[dict[str, object]]:
    out = []
    while len(out) < count:
        m = recv(ws)
        if m["type"] == "blob":
            out.append(m)
    return out


def numbers(got: list[dict[str, object]]) -> list[int]:
    return [e["n"] for b in got for e in b["events"]]  # type: ignore[index, union-attr, misc]


def assert_chain(got: list[dict[str, object]], since: int | None = None) -> None:
    """Each blob's prev is the seq before it: nothing missing, nothing twice."""
    prev = since
    for b in got:
        if prev is not None:
            assert b["prev"] == prev, f"gap or duplicate before seq {b['seq']}"
        prev = b["seq"]  # type: ignore[assignment]


def connect_resume(gw: Gateway, room: str, since: str) -> ClientConnection:
    ws = gw.stack.enter_context(
        connect(f"{gw.ws_url}?room={room}&since={room}:{since}", compression=None, max_size=None)
    )
    return ws


def epoch_of(created: str) -> int:
    head, _, rest = created.replace("Z", "+00:00").partition(".")
    digits = "".join(c for c in rest if c.isdigit())[:6].ljust(6, "0")
    zone = rest[len("".join(c for c in rest if c.isdigit())) :] if rest else "+00:00"
    when = datetime.datetime.fromisoformat(f"{head}.{digits}{zone or '+00:00'}")
    return int(when.timestamp() * 1_000_000)


def test_live_blobs_carry_their_history_position_as_one_chain(
    gateway: Callable[..., Gateway], history: Callable[..., History]
) -> None:
    h = history()
    gw = gateway(*h.args)
    ws = gw.viewer("lobby")
    seqs = h.store(("lobby", blob("lobby", 0)), ("other", blob("other", 0)),
                   ("lobby", blob("lobby", 1)), ("lobby", blob("lobby", 2)))  # fmt: skip
    got = blobs(ws, 3)
    assert numbers(got) == [0, 1, 2]
    assert [b["seq"] for b in got] == [seqs[0], seqs[2], seqs[3]]  # the stream's own sequence
    assert got[0]["prev"] == 0 and got[1]["prev"] == seqs[0] and got[2]["prev"] == seqs[2]
    assert {b["epoch"] for b in got} == {epoch_of(h.created)}
    assert list(got[0])[:5] == ["type", "epoch", "seq", "prev", "room"]


def test_resume_sends_exactly_what_was_missed_then_live(
    gateway: Callable[..., Gateway], history: Callable[..., History]
) -> None:
    h = history()
    gw = gateway(*h.args)
    seqs = h.store(*[("lobby", blob("lobby", n)) for n in range(6)])
    epoch = epoch_of(h.created)
    # A fresh worker: nothing of the room in memory, so the history is read.
    ws = connect_resume(gw, "lobby", f"{epoch}:{seqs[2]}")
    assert recv(ws) == {"type": "joined", "room": "lobby", "recovered": True}
    got = blobs(ws, 3)
    assert numbers(got) == [3, 4, 5]
    assert_chain(got, seqs[2])
    more = h.store(("lobby", blob("lobby", 6)))
    live = blobs(ws, 1)
    assert numbers(live) == [6] and live[0]["seq"] == more[0] and live[0]["prev"] == seqs[5]
    assert scrape(gw.metrics_url, "roomcast_gateway_history_reads_total") == 1
    # A second resume, in a join message this time, is served from the worker's ring.
    ws2 = gw.viewer()
    ws2.send(json.dumps({"type": "join", "room": "lobby", "since": f"{epoch}:{seqs[4]}"}))
    assert recv(ws2) == {"type": "joined", "room": "lobby", "recovered": True}
    assert numbers(blobs(ws2, 2)) == [5, 6]
    assert scrape(gw.metrics_url, "roomcast_gateway_history_reads_total") == 1
    assert scrape(gw.metrics_url, 'roomcast_gateway_resumes_total{recovered="true"}') == 2
    # Up to date: nothing to replay, live from here.
    ws3 = connect_resume(gw, "lobby", f"{epoch}:{more[0]}")
    assert recv(ws3) == {"type": "joined", "room": "lobby", "recovered": True}
    last = h.store(("lobby", blob("lobby", 7)))
    for w in (ws, ws2, ws3):
        b = blobs(w, 1)[0]
        assert (b["seq"], b["prev"]) == (last[0], more[0])


def test_resume_past_the_history_says_recovered_false_with_the_oldest(
    gateway: Callable[..., Gateway], history: Callable[..., History]
) -> None:
    h = history(max_msgs=3)
    gw = gateway(*h.args)
    seqs = h.store(*[("lobby", blob("lobby", n)) for n in range(8)])
    epoch = epoch_of(h.created)
    ws = connect_resume(gw, "lobby", f"{epoch}:{seqs[1]}")
    assert recv(ws) == {
        "type": "joined", "room": "lobby", "recovered": False, "oldest": f"{epoch}:{seqs[5]}"
    }  # fmt: skip
    h.store(("lobby", blob("lobby", 8)))
    assert numbers(blobs(ws, 1)) == [8]  # live from there, nothing replayed
    # A position from another history (an epoch that is not this stream's) is not resumed.
    ws2 = connect_resume(gw, "lobby", f"{epoch - 1}:{seqs[6]}")
    joined = recv(ws2)
    assert joined["recovered"] is False
    assert scrape(gw.metrics_url, 'roomcast_gateway_resumes_total{recovered="false"}') == 2


def test_a_bad_since_is_refused(
    gateway: Callable[..., Gateway], history: Callable[..., History]
) -> None:
    h = history()
    gw = gateway(*h.args)
    for query in ("room=a&since=a:1", "room=a&since=a:x:1", "room=a&since=b:1:2", "since=a:1:2"):
        with pytest.raises(websockets.exceptions.InvalidStatus) as err:
            connect(f"{gw.ws_url}?{query}")
        assert err.value.response.status_code == 400
        assert b"bad since" in err.value.response.body
    ws = gw.viewer()
    ws.send(json.dumps({"type": "join", "room": "a", "since": "12"}))
    assert recv(ws)["code"] == "bad_message"
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_a_viewer_that_stops_reading_is_caught_up_with_every_blob_once(
    gateway: Callable[..., Gateway], history: Callable[..., History]
) -> None:
    h = history(max_msgs=1000)
    gw = gateway(*h.args, "--write-buffer-high", "16384", "--slow-grace-s", "10")
    fast = gw.viewer("lobby")
    slow = RawViewer(gw.port, "/ws?room=lobby", rcvbuf=4096)
    assert slow.messages(1)[0]["type"] == "joined"
    slow.answer = False
    n = 120
    started = time.monotonic()
    for i in range(0, n, 10):  # ~2 s of blobs while the slow viewer reads nothing
        h.store(*[("lobby", blob("lobby", k, pad=30_000)) for k in range(i, i + 10)])
        time.sleep(0.15)
    assert numbers(blobs(fast, n)) == list(range(n))
    dropped = scrape(gw.metrics_url, 'roomcast_gateway_frames_dropped_total{reason="slow"}')
    assert dropped > 0, "the viewer never fell behind: the test does not test anything"
    assert time.monotonic() - started < 10
    slow.answer = True
    got = [m for m in slow.messages(n, timeout=20) if m["type"] == "blob"]
    assert numbers(got) == list(range(n))
    assert_chain(got)
    assert slow.close_code is None
    replayed = scrape(gw.metrics_url, 'roomcast_gateway_frames_replayed_total{reason="slow"}')
    assert replayed == dropped
    slow.close()


def test_a_burst_of_resumes_reads_each_rooms_history_once(
    gateway: Callable[..., Gateway], history: Callable[..., History]
) -> None:
    h = history()
    gw = gateway(*h.args, "--max-connects-per-s", "100000", open_files=6000)
    epoch = epoch_of(h.created)
    seqs = {room: h.store(*[(room, blob(room, n)) for n in range(10)]) for room in ("a", "b")}
    viewers = 2000

    async def one(i: int, handshakes: asyncio.Semaphore) -> list[int]:
        room = "ab"[i % 2]
        position = 7 if i % 10 == 1 else 5  # most at one position, a few further on
        since = seqs[room][position]
        url = f"{gw.ws_url}?room={room}&since={room}:{epoch}:{since}"
        async with handshakes:  # under the worker's --max-handshakes in flight
            ws = await websockets.connect(url, compression=None, open_timeout=30)
        async with ws:
            joined = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert joined == {"type": "joined", "room": room, "recovered": True}
            got = []
            for _ in range(9 - position):
                b = json.loads(await asyncio.wait_for(ws.recv(), 30))
                got += [e["n"] for e in b["events"]]
            return got

    async def burst() -> list[list[int]]:
        handshakes = asyncio.Semaphore(500)
        return await asyncio.gather(*(one(i, handshakes) for i in range(viewers)))

    results = asyncio.run(burst())
    for i, got in enumerate(results):
        assert got == list(range(8 if i % 10 == 1 else 6, 10)), f"viewer {i}"
    assert scrape(gw.metrics_url, 'roomcast_gateway_resumes_total{recovered="true"}') == viewers
    assert scrape(gw.metrics_url, "roomcast_gateway_history_reads_total") == 2  # once per room


def test_blobs_lost_between_nats_and_the_worker_are_filled_from_the_history(
    gateway: Callable[..., Gateway], history: Callable[..., History]
) -> None:
    """The worker stops reading NATS (SIGSTOP) while ~90 MB of blobs are stored: the server cuts
    it off as a slow consumer and those blobs never reach it live. Once it runs again, what it
    missed is read from the history (when it reconnects, or when the next blob's chain shows the
    hole) and everything reaches the viewer in order, once."""
    import os
    import signal

    h = history(max_msgs=1000)
    gw = gateway(*h.args, "--write-buffer-high", str(256 * 1024 * 1024))
    ws = gw.viewer("lobby")
    first = h.store(("lobby", blob("lobby", 0)))
    assert numbers(blobs(ws, 1)) == [0]
    os.killpg(gw.service.proc.pid, signal.SIGSTOP)
    try:
        big = 900_000  # under NATS' 1 MB payload limit; 90 of them overflow its 64 MB per client
        for i in range(1, 91, 10):
            h.store(*[("lobby", blob("lobby", n, pad=big)) for n in range(i, i + 10)])
        time.sleep(3)  # past the server's flush of a slow consumer it closes: the rest is lost
    finally:
        os.killpg(gw.service.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while scrape(gw.metrics_url, "roomcast_gateway_ready") != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    h.store(("lobby", blob("lobby", 91)))
    got = blobs(ws, 91)
    assert numbers(got) == list(range(1, 92))
    assert_chain(got, first[0])
    assert scrape(gw.metrics_url, "roomcast_gateway_history_gaps_total") >= 1
