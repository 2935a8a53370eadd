"""Viewer protocol conformance: handshakes, rejects, messages, pings and every close code."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect

from tests.gateway.conftest import Gateway, RawViewer, join_message
from tests.support import plain


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_handshake_with_one_and_two_rooms_then_blobs_flow(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    one = gw.viewer("a")
    two = gw.viewer("a", "b")
    assert one.response.headers["X-Roomcast-Worker"] == "0"
    gw.publish("a", gw.blob("a", 1))
    gw.publish("b", gw.blob("b", 2))
    assert json.loads(one.recv(timeout=5))["offsets"] == [1]
    got = sorted(json.loads(two.recv(timeout=5))["room"] for _ in range(2))
    assert got == ["a", "b"]


def test_blobs_reach_viewers_byte_for_byte(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    ws = gw.viewer("r")
    blob = gw.blob("r", 7, size=200_000)  # over 64 KiB: the 8-byte length form
    gw.publish("r", blob)
    assert ws.recv(timeout=5, decode=False) == blob


@pytest.mark.parametrize(
    "path,status,body",
    [
        ("/ws?room=a.b", 400, "has the character '.'"),
        ("/ws?room=" + "x" * 200, 400, "200 characters long"),
        ("/ws?room=_all", 400, "push-to-all"),
        ("/nope", 404, "/ws?room=ROOM"),
        ("/ws?room=a", 426, ""),  # a plain GET, no upgrade
        ("/healthz", 200, "ok"),
        ("/readyz", 200, "ready"),
        ("/metrics", 404, "--metrics-port"),  # never on the public port
    ],
)
def test_http_answers(gateway: Callable[..., Gateway], path: str, status: int, body: str) -> None:
    gw = gateway()
    got_status, got_body = http_get(gw.http + path)
    assert got_status == status and body in got_body


def test_join_leave_acks_and_app_ping(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    ws = gw.viewer()
    ws.send(join_message("x"))
    assert plain(json.loads(ws.recv(timeout=5))) == {"type": "joined", "room": "x"}
    ws.send(json.dumps({"type": "ping"}))
    assert json.loads(ws.recv(timeout=5)) == {"type": "pong"}
    ws.send(json.dumps({"type": "leave", "room": "x"}))
    assert json.loads(ws.recv(timeout=5)) == {"type": "left", "room": "x"}
    gw.publish("x", gw.blob("x", 1))
    ws.send(json.dumps({"type": "ping"}))
    assert json.loads(ws.recv(timeout=5)) == {"type": "pong"}  # no blob came before it


def test_websocket_ping_gets_pong(gateway: Callable[..., Gateway]) -> None:
    ws = gateway().viewer()
    assert ws.ping().wait(5)


def test_gateway_pings_and_closes_a_viewer_that_never_pongs(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway("--ping-interval-s", "0.5", "--ping-timeout-s", "0.5")
    live = gw.viewer()  # answers pings automatically
    raw = RawViewer(gw.port)
    raw.answer = False  # never pong
    pings = [f for f in raw.frames(timeout=10) if f.opcode is Opcode.PING]
    assert len(pings) >= 1 and raw.close_code == 1011
    live.send(json.dumps({"type": "ping"}))
    assert json.loads(live.recv(timeout=5)) == {"type": "pong"}


@pytest.mark.parametrize(
    "message,code",
    [
        ("not json", 1008),
        (json.dumps({"type": "dance"}), 1008),
        (json.dumps({"type": "join"}), 1008),
        (join_message("bad.room"), 1008),
        (join_message("_all"), 1008),
    ],
)
def test_bad_messages_close_with_1008_and_say_why(
    gateway: Callable[..., Gateway], message: str, code: int
) -> None:
    ws = gateway().viewer()
    ws.send(message)
    error = json.loads(ws.recv(timeout=5))
    assert error["type"] == "error" and error["message"]
    with pytest.raises(ConnectionClosedError) as info:
        ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == code


def test_binary_message_closes_with_1008(gateway: Callable[..., Gateway]) -> None:
    raw = RawViewer(gateway().port)
    raw.send_frame(Opcode.BINARY, b"\x00\x01")
    raw.frames(timeout=5)
    assert raw.close_code == 1008


def test_oversized_message_closes_with_1009(gateway: Callable[..., Gateway]) -> None:
    ws = gateway("--max-message-bytes", "256").viewer()
    ws.send(json.dumps({"type": "join", "room": "a" * 100, "pad": "x" * 300}))
    with pytest.raises(ConnectionClosedError) as info:
        ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_invalid_utf8_closes_with_1007(gateway: Callable[..., Gateway]) -> None:
    raw = RawViewer(gateway().port)
    raw.send_frame(Opcode.TEXT, b'{"type":"ping","x":"\xff"}')
    raw.frames(timeout=5)
    assert raw.close_code == 1007


def test_fragmented_message_is_reassembled(gateway: Callable[..., Gateway]) -> None:
    raw = RawViewer(gateway().port)
    msg = join_message("frag").encode()
    raw.send_frame(Opcode.TEXT, msg[:5], fin=False)
    raw.send_frame(Opcode.CONT, msg[5:12], fin=False)
    raw.send_frame(Opcode.CONT, msg[12:], fin=True)
    assert [plain(m) for m in raw.messages(1)] == [{"type": "joined", "room": "frag"}]


def test_too_many_rooms(gateway: Callable[..., Gateway]) -> None:
    gw = gateway("--max-rooms-per-conn", "2")
    with pytest.raises(InvalidStatus) as info, connect(f"{gw.ws_url}?room=a&room=b&room=c"):
        pass
    assert info.value.response.status_code == 400
    ws = gw.viewer("a", "b")
    ws.send(join_message("c"))
    assert json.loads(ws.recv(timeout=5))["code"] == "too_many_rooms"
    with pytest.raises(ConnectionClosedError) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003


def test_replies_come_in_request_order_even_behind_a_join_being_set_up(
    gateway: Callable[..., Gateway],
) -> None:
    """join x (its subscription is not live yet), ping, leave x, join y, ping: in one read."""
    raw = RawViewer(gateway().port)
    requests = [
        join_message("x"),
        json.dumps({"type": "ping"}),
        json.dumps({"type": "leave", "room": "x"}),
        join_message("y"),
        json.dumps({"type": "ping"}),
    ]
    raw.sock.sendall(
        b"".join(Frame(Opcode.TEXT, r.encode()).serialize(mask=True) for r in requests)
    )
    assert [plain(m) for m in raw.messages(5)] == [
        {"type": "joined", "room": "x"},
        {"type": "pong"},
        {"type": "left", "room": "x"},
        {"type": "joined", "room": "y"},
        {"type": "pong"},
    ]
