"""No client and no connection can hurt anyone else: a live worker, attacked for real."""

from __future__ import annotations

import json
import re
import select
import socket
import time
import urllib.request
from collections.abc import Callable

import psutil
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.gateway.conftest import Gateway, RawViewer, join_message
from tests.gateway.test_engine import metric, wait_until


def masked(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=True)


def text(message: str | bytes) -> bytes:
    return masked(Opcode.TEXT, message.encode() if isinstance(message, str) else message)


class OneRead:
    """An upgrade request and frames sent in one write: the gateway gets them in one read."""

    def __init__(self, port: int, *frames: bytes) -> None:
        self.proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"), max_size=None)
        self.proto.send_request(self.proto.connect())
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"".join(self.proto.data_to_send()) + b"".join(frames))

    def close_code(self, timeout: float = 10) -> int | None:
        """Read until the gateway's close frame (or EOF); then drop the TCP connection."""
        deadline = time.monotonic() + timeout
        while self.proto.close_rcvd is None and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ConnectionError):
                break
            if not data:
                break
            self.proto.receive_data(data)
            self.proto.events_received()
        self.sock.close()  # gone for good: no close reply, as a crashed or hostile client
        return None if self.proto.close_rcvd is None else self.proto.close_rcvd.code


def gateway_holds(gw: Gateway, local_port: int) -> bool:
    """Does the gateway process still have a socket to this client port?"""
    conns = psutil.Process(gw.service.proc.pid).net_connections()
    return any(c.raddr and c.raddr.port == local_port for c in conns)


VIOLATIONS = [
    ("binary frame", masked(Opcode.BINARY, b"\x00\x01"), 1008),
    ("text that is not JSON", text("not json"), 1008),
    ("bad UTF-8", text(b'{"type":"ping","x":"\xff"}'), 1007),
    ("bad room name", text(join_message("bad.room")), 1008),
    ("unknown message type", text('{"type":"dance"}'), 1008),
    # A protocol error among frames sent with the request: no upgrade at all (no close code).
    ("a fragment that never started", masked(Opcode.CONT, b"x"), None),
]


def test_a_violation_then_a_join_in_one_read_never_poisons_the_room(
    gateway: Callable[..., Gateway],
) -> None:
    """One read: upgrade, violation, join. The failed connection must never be in the room; the
    next blob then reaches every real viewer (it used to raise inside the fan-out, for good)."""
    gw = gateway()
    good = gw.viewer("hot")
    for i, (what, violation, code) in enumerate(VIOLATIONS):
        attacker = OneRead(gw.port, violation, text(join_message("hot")))
        port = attacker.sock.getsockname()[1]
        assert attacker.close_code() == code, what
        assert wait_until(lambda port=port: not gateway_holds(gw, port)), what
        gw.publish("hot", gw.blob("hot", i))
        assert json.loads(good.recv(timeout=5))["offsets"] == [i], what
    assert metric(gw, "roomcast_gateway_viewers") == 1
    assert urllib.request.urlopen(f"{gw.http}/healthz", timeout=5).status == 200


def test_a_blob_that_is_not_utf8_is_never_sent_and_viewers_stay(
    gateway: Callable[..., Gateway],
) -> None:
    """Every standard client fails the connection on a text frame that is not UTF-8."""
    gw = gateway()
    viewers = [gw.viewer("r") for _ in range(3)]  # websockets' client checks UTF-8
    bad = b'{"type":"blob","room":"r","partition":0,"offsets":[1],"events":["\xff\xfe"]}'
    gw.publish("r", bad, gw.blob("r", 2))
    for ws in viewers:
        assert json.loads(ws.recv(timeout=5))["offsets"] == [2]
    assert metric(gw, 'roomcast_gateway_blobs_rejected_total{reason="not_utf8"}') == 1


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


def test_unfinished_handshakes_are_dropped_at_their_deadlines(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway("--handshake-timeout-s", "1.5", "--handshake-idle-s", "0.5")
    proc = psutil.Process(gw.service.proc.pid)
    baseline = proc.num_fds()
    silent = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(40)]
    dribblers = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(5)]
    request = b"GET /ws HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 100
    started = time.monotonic()
    closed_at: dict[socket.socket, float] = {}
    for s in silent + dribblers:
        s.setblocking(False)
    sent = 0
    while len(closed_at) < len(silent) + len(dribblers) and time.monotonic() - started < 6:
        for s in dribblers:  # one byte every 0.2 s: never idle, never done
            if s not in closed_at:
                try:
                    s.send(request[sent : sent + 1])
                except OSError:
                    closed_at[s] = time.monotonic() - started
        sent += 1
        readable, _, _ = select.select(
            [s for s in silent + dribblers if s not in closed_at], [], [], 0.2
        )
        for s in readable:
            if _closed_by_server(s):
                closed_at[s] = time.monotonic() - started
    assert all(s in closed_at for s in silent + dribblers), "a handshake was never dropped"
    assert max(closed_at[s] for s in silent) < 1.5  # idle deadline 0.5 s (+ the 0.25 s tick)
    assert all(1.3 < closed_at[s] < 3.0 for s in dribblers)  # by the handshake deadline
    assert (
        metric(gw, 'roomcast_gateway_connections_rejected_total{reason="handshake_timeout"}') == 45
    )
    assert wait_until(lambda: proc.num_fds() <= baseline)
    for s in silent + dribblers:
        s.close()


def test_descriptors_never_run_out_and_probes_answer_at_the_viewer_cap(
    gateway: Callable[..., Gateway],
) -> None:
    """A worker under a 300-descriptor limit: its caps are fitted under it, a flood of idle
    connections evicts the oldest handshakes, and /healthz and new viewers still get answers."""
    gw = gateway("--max-handshakes", "50", "--fd-reserve", "32", "--max-viewers", "10000",
                 open_files=300)  # fmt: skip
    log = gw.service.log_tail(200)
    assert re.search(r"open-files limit .*soft=300 hard=300", log), log
    m = re.search(r"--max-viewers lowered .*max_viewers=(\d+)", log)
    assert m, log
    cap = int(m.group(1))
    assert cap == 300 - 32 - 32 - 50
    viewers = [RawViewer(gw.port, "/ws?room=full") for _ in range(cap)]
    flood = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(300)]
    assert urllib.request.urlopen(f"{gw.http}/healthz", timeout=5).status == 200
    assert urllib.request.urlopen(f"{gw.http}/readyz", timeout=5).status == 200
    assert _upgrade_status(gw.port) == 503  # one viewer too many: a clear answer, not a hang
    assert metric(gw, 'roomcast_gateway_connections_rejected_total{reason="handshake_cap"}') >= 250
    assert psutil.Process(gw.service.proc.pid).num_fds() < 300
    gw.publish("full", gw.blob("full", 1))
    assert viewers[0].messages(2)[-1]["offsets"] == [1]
    assert viewers[-1].messages(2)[-1]["offsets"] == [1]
    for s in flood:
        s.close()


def _upgrade_status(port: int) -> int:
    proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"))
    proto.send_request(proto.connect())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(proto.data_to_send()))
        while True:
            data = sock.recv(65536)
            if not data:
                proto.receive_eof()
            else:
                proto.receive_data(data)
            for event in proto.events_received():
                if isinstance(event, Response):
                    return event.status_code
            if not data:
                return 0
