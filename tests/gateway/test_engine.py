"""The fan-out engine: interest, push-to-all, coalescing, slow viewers, limits, drain, workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import Opcode
from websockets.sync.client import connect

from roomcast.devstack import LocalNats
from tests.gateway.conftest import Gateway, RawViewer, join_message, publish
from tests.support import free_port, plain, scrape


def metric(gw: Gateway, name: str) -> float:
    """A series from the group's /metrics, summed over workers: `name` or `name{label="v"}`."""
    return scrape(gw.metrics_url, name)


def nats_subjects(nats: LocalNats) -> set[str]:
    url = f"{nats.monitor_url}/connz?subs=1"
    conns = json.loads(urllib.request.urlopen(url, timeout=5).read())["connections"]
    return {s for c in conns for s in c.get("subscriptions_list") or []}


def wait_until(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_room_subscription_lives_exactly_while_the_room_has_viewers(
    gateway: Callable[..., Gateway], private_nats: LocalNats
) -> None:
    gw = gateway(nats=private_nats.url)
    subject = f"{gw.prefix}.lobby"
    assert subject not in nats_subjects(private_nats)
    assert f"{gw.prefix}._all" in nats_subjects(private_nats)  # push-to-all: always held
    first, second = gw.viewer("lobby"), gw.viewer("lobby")
    assert subject in nats_subjects(private_nats)  # joined => the server has the SUB
    first.send(json.dumps({"type": "leave", "room": "lobby"}))
    assert json.loads(first.recv(timeout=5))["type"] == "left"
    assert subject in nats_subjects(private_nats)  # one viewer still there
    second.close()  # the last one goes away without a leave
    assert wait_until(lambda: subject not in nats_subjects(private_nats))
    gw.viewer("lobby")
    assert subject in nats_subjects(private_nats)


def test_push_to_all_reaches_every_viewer(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    viewers = [gw.viewer("a"), gw.viewer("b"), gw.viewer()]
    gw.publish("_all", gw.blob("_all", 1))
    for ws in viewers:
        assert json.loads(ws.recv(timeout=5))["room"] == "_all"


def test_frames_for_one_viewer_in_one_turn_go_in_one_write(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    both = RawViewer(gw.port)
    both.send_frame(Opcode.TEXT, join_message("a").encode())
    assert [m["type"] for m in both.messages(1)] == ["joined"]
    gw.publish("a", gw.blob("a", 100))  # fanned out while the viewer is in one room only
    assert both.messages(1)[0]["offsets"] == [100]
    both.send_frame(Opcode.TEXT, join_message("b").encode())
    assert [m["type"] for m in both.messages(1)] == ["joined"]
    before = metric(gw, "roomcast_gateway_coalesced_writes_total")
    # two rooms' blobs in one NATS flush: they reach the gateway in the same loop turn
    gw.publish_many([(r, gw.blob(r, i)) for i in range(20) for r in "ab"])
    got = both.messages(40)
    assert sorted((m["room"], m["offsets"][0]) for m in got) == sorted(
        (r, i) for r in "ab" for i in range(20)
    )
    assert metric(gw, "roomcast_gateway_coalesced_writes_total") > before


def test_a_viewer_that_leaves_gets_nothing_more_from_the_room(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway()
    leaver, stayer = RawViewer(gw.port, "/ws?room=c"), RawViewer(gw.port, "/ws?room=c")
    for v in (leaver, stayer):
        assert [plain(m) for m in v.messages(1)] == [{"type": "joined", "room": "c"}]
    gw.publish("c", gw.blob("c", 1))  # both get it
    for v in (leaver, stayer):
        assert v.messages(1)[0]["offsets"] == [1]
    leaver.send_frame(Opcode.TEXT, b'{"type":"leave","room":"c"}')
    assert leaver.messages(1) == [{"type": "left", "room": "c"}]
    leaver.send_frame(Opcode.TEXT, join_message("d").encode())
    assert [plain(m) for m in leaver.messages(1)] == [{"type": "joined", "room": "d"}]
    gw.publish("c", gw.blob("c", 2))
    assert stayer.messages(1)[0]["offsets"] == [2]  # c's blob has been fanned out by now
    gw.publish("d", gw.blob("d", 3))
    assert [(m["room"], m["offsets"]) for m in leaver.messages(1)] == [("d", [3])]


def test_one_stalled_viewer_never_delays_the_others_and_is_closed_with_4008(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway("--write-buffer-high", "65536", "--slow-grace-s", "1")
    stalled = RawViewer(gw.port, "/ws?room=hot", rcvbuf=4096)
    assert [plain(m) for m in stalled.messages(1)] == [{"type": "joined", "room": "hot"}]
    # From here on the stalled viewer reads nothing.
    others = [gw.viewer("hot") for _ in range(3)]
    # 12 MB: more than the kernel's loopback socket buffers can soak up for the stalled one
    blobs = [gw.blob("hot", i, size=40_000) for i in range(300)]
    started = time.monotonic()
    for i in range(0, len(blobs), 20):
        gw.publish("hot", *blobs[i : i + 20])
        for ws in others:
            got = [json.loads(ws.recv(timeout=5))["offsets"][0] for _ in range(20)]
            assert got == list(range(i, i + 20))  # every frame, in order, promptly
    assert time.monotonic() - started < 30
    assert metric(gw, 'roomcast_gateway_frames_dropped_total{reason="slow"}') > 0
    assert wait_until(lambda: metric(gw, "roomcast_gateway_slow_closes_total") == 1)
    stalled.frames(timeout=10)  # it reads again: the backlog, then the close frame
    assert stalled.close_code == 4008


def test_max_viewers_answers_503_before_the_upgrade(gateway: Callable[..., Gateway]) -> None:
    gw = gateway("--max-viewers", "2")
    gw.viewer(), gw.viewer()
    with pytest.raises(InvalidStatus) as info, connect(gw.ws_url):
        pass
    assert info.value.response.status_code == 503
    assert metric(gw, 'roomcast_gateway_connections_rejected_total{reason="worker_full"}') == 1


def test_connect_rate_limit_answers_503_with_retry_after(gateway: Callable[..., Gateway]) -> None:
    gw = gateway("--max-connects-per-s", "2")
    statuses = []
    for _ in range(6):
        try:
            with connect(gw.ws_url):
                statuses.append(101)
        except InvalidStatus as exc:
            statuses.append(exc.response.status_code)
            assert exc.response.headers["Retry-After"] == "1"
    assert statuses.count(101) >= 2 and 503 in statuses
    time.sleep(1.1)
    with connect(gw.ws_url):  # the bucket refills
        pass


def test_sigterm_drains_paced_with_1012_and_exits_0(gateway: Callable[..., Gateway]) -> None:
    gw = gateway("--drain-seconds", "2")
    viewers = [gw.viewer("r") for _ in range(10)]

    def closed_at(ws: Any) -> tuple[int | None, float]:
        try:
            ws.recv(timeout=15)
        except ConnectionClosedError as exc:
            return (exc.rcvd.code if exc.rcvd else None), time.monotonic()
        return None, time.monotonic()

    # Each viewer waits in its own thread, so the time a close arrives is the time it is seen.
    with ThreadPoolExecutor(len(viewers)) as pool:
        waits = [pool.submit(closed_at, ws) for ws in viewers]
        os.killpg(gw.service.proc.pid, signal.SIGTERM)
        assert wait_until(lambda: _readyz(gw) == 503, timeout=5)
        results = [w.result() for w in waits]
    assert [code for code, _ in results] == [1012] * len(viewers)
    times = [t for _, t in results]
    assert max(times) - min(times) > 0.8  # paced over the period, not all at once
    assert gw.service.proc.wait(15) == 0


def _readyz(gw: Gateway) -> int:
    try:
        return urllib.request.urlopen(f"{gw.http}/readyz", timeout=2).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_workers_share_the_port_and_a_dead_one_is_restarted(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway("--workers", "2")
    answered: set[str] = set()  # /healthz answers once one worker listens: wait for both

    def both_listen() -> bool:
        with urllib.request.urlopen(f"{gw.http}/healthz", timeout=2) as resp:
            answered.add(resp.headers["X-Roomcast-Worker"])
        return answered == {"0", "1"}

    assert wait_until(both_listen, timeout=15)
    viewers, workers = [], set()
    for _ in range(30):
        ws = gw.viewer("shared")
        viewers.append(ws)
        workers.add(ws.response.headers["X-Roomcast-Worker"])
    assert workers == {"0", "1"}  # SO_REUSEPORT spread them
    gw.publish("shared", gw.blob("shared", 1))
    for ws in viewers:
        assert json.loads(ws.recv(timeout=5))["offsets"] == [1]
    supervisor = psutil.Process(gw.service.proc.pid)
    children = [c for c in supervisor.children() if "spawn" in " ".join(c.cmdline())]
    assert len(children) == 2
    victim = children[0]
    victim.kill()
    victim.wait(5)

    def two_live_workers() -> bool:
        live = [c for c in supervisor.children() if "spawn" in " ".join(c.cmdline())]
        return len(live) == 2 and victim.pid not in {c.pid for c in live}

    assert wait_until(two_live_workers, timeout=15)
    # the survivors' viewers still get blobs, and new viewers can land on the new worker
    fresh = [gw.viewer("shared") for _ in range(10)]
    gw.publish("shared", gw.blob("shared", 2))
    for ws in fresh:
        assert json.loads(ws.recv(timeout=5))["offsets"] == [2]


def test_a_list_of_nats_urls_is_a_cluster_to_try_in_turn(
    gateway: Callable[..., Gateway], nats_url: str
) -> None:
    """`--nats a,b,c` (as the chart and docs give a cluster): a dead URL in the list is passed
    over; before, the whole string went to nats-py as one URL and the worker died."""
    dead = f"nats://127.0.0.1:{free_port()}"
    gw = gateway(nats=f"{dead}, {nats_url}")
    ws = gw.viewer("list")
    asyncio.run(publish(nats_url, [(f"{gw.prefix}.list", gw.blob("list", 1))]))
    assert json.loads(ws.recv(timeout=10))["offsets"] == [1]
