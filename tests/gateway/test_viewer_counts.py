"""Viewer counts across a cluster: two gateway processes of two workers each on one nats-server,
viewers spread over all four workers; `GET /rooms/{room}` and `count` messages as users see them."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from websockets.sync.client import ClientConnection, connect

from tests.gateway.conftest import Gateway
from tests.gateway.test_auth import JWT_ARGS, token
from tests.gateway.test_engine import metric, wait_until
from tests.support import unique

INTERVAL = 1.0  # --count-interval-s in these tests: a worker is forgotten after 3 s of silence


def room_viewers(gw: Gateway, room: str) -> int:
    with urllib.request.urlopen(f"{gw.http}/rooms/{room}", timeout=5) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        body = json.loads(resp.read())
    assert body["room"] == room
    return int(body["viewers"])


def answers(gateways: list[Gateway], room: str, n: int, rounds: int = 4) -> bool:
    """Every gateway answers n, whichever of its workers a request lands on."""
    return all(room_viewers(gw, room) == n for gw in gateways for _ in range(rounds))


def last_count(ws: ClientConnection, room: str, want: int, timeout: float) -> int | None:
    """Read the viewer's messages until a `count` of the room says `want` (or time runs out):
    the last count it got."""
    deadline = time.monotonic() + timeout
    got = None
    while got != want and (left := deadline - time.monotonic()) > 0:
        try:
            msg = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            break
        if msg["type"] == "count":
            assert msg["room"] == room and set(msg) == {"type", "room", "viewers"}
            got = msg["viewers"]
    return got


def spread(gw: Gateway, room: str, per_worker: int) -> dict[str, list[ClientConnection]]:
    """Viewers of `room` on the gateway until each of its two workers holds `per_worker`; the
    surplus (the kernel picks the worker) is closed again."""
    by_worker: dict[str, list[ClientConnection]] = {"0": [], "1": []}
    for _ in range(200):
        if all(len(vs) >= per_worker for vs in by_worker.values()):
            break
        ws = gw.viewer(room, counts=True)
        mine = by_worker[ws.response.headers["X-Roomcast-Worker"]]
        if len(mine) < per_worker:
            mine.append(ws)
        else:
            ws.close()
    assert all(len(vs) == per_worker for vs in by_worker.values()), by_worker
    return by_worker


def worker_pid(gw: Gateway, worker: int) -> int:
    """The PID of one worker process, from the gateway's own log (`--log-format json`)."""
    pids = [
        line["pid"]
        for line in map(json.loads, filter(None, gw.service.log_path.read_text().splitlines()))
        if line.get("msg") == "gateway worker listening" and line.get("worker") == worker
    ]
    assert pids, gw.service.log_tail()
    return int(pids[-1])


def start_two(gateway: Callable[..., Gateway]) -> list[Gateway]:
    """Two gateways of two workers each, every worker ready (the group's /readyz)."""
    opts = ("--workers", "2", "--count-interval-s", str(INTERVAL), "--log-format", "json")
    gateways = [gateway(*opts, name="gateway-a"), gateway(*opts, name="gateway-b")]
    for gw in gateways:
        assert wait_until(lambda gw=gw: group_ready(gw), timeout=15), gw.service.log_tail()
    return gateways


def group_ready(gw: Gateway) -> bool:
    try:
        with urllib.request.urlopen(f"{gw.metrics_url}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_counts_add_up_across_gateways_and_follow_joins_and_leaves_within_2_s(
    gateway: Callable[..., Gateway],
) -> None:
    a, b = start_two(gateway)
    room, other = unique("counted"), unique("other")
    assert room_viewers(a, room) == 0 and room_viewers(b, room) == 0  # nobody watches it

    on_a = spread(a, room, 2)  # 2 viewers on each of a's workers
    on_b = spread(b, room, 1)
    quiet = b.viewer(other, counts=True)  # another room: its count is its own
    joined = time.monotonic()
    assert wait_until(lambda: answers([a, b], room, 6), timeout=2), (
        room_viewers(a, room), room_viewers(b, room),
    )  # fmt: skip
    assert time.monotonic() - joined < 2
    viewers = [ws for vs in [*on_a.values(), *on_b.values()] for ws in vs]
    for ws in viewers:  # every viewer is told, whichever gateway and worker it is on
        assert last_count(ws, room, 6, timeout=3) == 6
    assert last_count(quiet, other, 1, timeout=3) == 1
    assert room_viewers(a, other) == 1

    for ws in (on_a["0"][0], on_a["1"][0], on_b["1"][0]):
        ws.close()
    left = time.monotonic()
    assert wait_until(lambda: answers([a, b], room, 3), timeout=2), (
        room_viewers(a, room), room_viewers(b, room),
    )  # fmt: skip
    assert time.monotonic() - left < 2
    for ws in (on_a["0"][1], on_a["1"][1], on_b["0"][0]):
        assert last_count(ws, room, 3, timeout=3) == 3

    late = a.viewer(room, counts=True)  # a viewer that joins is told the count, no change needed
    assert last_count(late, room, 4, timeout=2) == 4
    assert wait_until(lambda: answers([a, b], room, 4), timeout=2)

    top = f'roomcast_gateway_top_room_viewers{{room="{room}"}}'  # from worker 0 of each gateway
    assert wait_until(lambda: metric(a, top) == metric(b, top) == 4, timeout=3)
    # Each worker hears all four (and maybe workers of earlier tests killed < 3 intervals ago).
    assert metric(a, "roomcast_gateway_count_workers") >= 2 * 4
    assert metric(a, "roomcast_gateway_count_messages_total") > 0


def test_a_killed_worker_stops_being_counted_once_its_share_expires(
    gateway: Callable[..., Gateway],
) -> None:
    a, b = start_two(gateway)
    room = unique("crash")
    on_a = spread(a, room, 2)
    spread(b, room, 1)
    assert wait_until(lambda: answers([a, b], room, 6), timeout=2)
    survivor = on_a["0"][0]
    assert last_count(survivor, room, 6, timeout=3) == 6

    os.kill(worker_pid(a, 1), signal.SIGKILL)  # no goodbye: only its silence says it is gone
    killed = time.monotonic()
    expired = wait_until(lambda: answers([b], room, 4), timeout=3 * INTERVAL + 3)
    assert expired, room_viewers(b, room)
    # Forgotten for its silence: 3 intervals after the last message it sent (at most an
    # interval before the kill), not sooner.
    assert time.monotonic() - killed >= 2 * INTERVAL
    assert metric(b, "roomcast_gateway_count_workers_expired_total") >= 2  # each of b's workers
    assert wait_until(lambda: answers([a, b], room, 4), timeout=3)
    assert last_count(survivor, room, 4, timeout=3) == 4


def test_bad_room_names_are_refused(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    for path in ("/rooms/a.b", "/rooms/", "/rooms/_all", "/rooms/" + "x" * 129):
        try:
            urllib.request.urlopen(f"{gw.http}{path}", timeout=5)
        except urllib.error.HTTPError as exc:
            assert exc.code == 400, path
            assert exc.read().startswith(b"bad room:")
        else:
            raise AssertionError(f"{path}: not refused")
    ws = gw.viewer("a:b", counts=True)
    assert last_count(ws, "a:b", 1, timeout=5) == 1
    with urllib.request.urlopen(f"{gw.http}/rooms/a%3Ab", timeout=5) as resp:  # encoded
        assert json.loads(resp.read()) == {"room": "a:b", "viewers": 1}


def test_with_jwt_auth_a_count_needs_a_token_that_grants_the_room(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway(*JWT_ARGS)
    watcher = gw.stack.enter_context(
        connect(f"{gw.ws_url}?room=user:alice&token={token(sub='alice')}", compression=None)
    )
    assert json.loads(watcher.recv(timeout=10)) == {"type": "joined", "room": "user:alice"}

    def status(query: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"{gw.http}/rooms/user:alice{query}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    # Whether someone watches a personal room says whether they are online: not for anyone.
    assert status("")[0] == 401
    assert status("?token=garbage")[0] == 401
    assert status(f"?token={token('*', sub='bob')}")[0] == 403
    assert status(f"?token={token(sub='alice')}") == (200, b'{"room":"user:alice","viewers":1}')
