"""permessage-deflate, compressed once per blob: real clients decode the shared frames."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from roomcast.core.blob import encode_blob
from roomcast.core.frames import Deflater
from tests.gateway.conftest import Gateway, RawViewer
from tests.gateway.test_engine import metric
from tests.support import plain

WORDS = ["hello", "gg", "wow", "lol", "nice", "play", "what", "a", "goal", "amazing", "team",
         "go", "this", "is", "fun", "stream"]  # fmt: skip


def chat_blob(room: str, first: int, events: int = 40, seed: int = 0) -> bytes:
    """A merged window of chat, as ingest publishes it (~5 KB for 40 events)."""
    rng = random.Random(seed + first)
    values = [
        json.dumps(
            {"type": "chat", "user": f"user{rng.randint(1, 5000)}", "seq": first + i,
             "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))},
            separators=(",", ":"),
        ).encode()
        for i in range(events)
    ]  # fmt: skip
    return encode_blob(room, 0, list(range(first, first + events)), values)


def test_websockets_clients_get_every_blob_compressed_once(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway()
    # websockets' default offer (asks for a 12-bit server window) and an unrestricted one
    viewers = [
        gw.viewer("chat", compression="deflate"),
        gw.viewer("chat", extensions=[ClientPerMessageDeflateFactory()], compression=None),
    ]
    plain = gw.viewer("chat")  # offers nothing: plain frames
    for ws in viewers:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        assert "server_no_context_takeover" in ws.response.headers["Sec-WebSocket-Extensions"]
    assert "Sec-WebSocket-Extensions" not in plain.response.headers
    blobs = [chat_blob("chat", i * 40) for i in range(20)] + [gw.blob("chat", 999)]  # + a tiny one
    gw.publish("chat", *blobs)
    for ws in [*viewers, plain]:
        assert [ws.recv(timeout=5, decode=False) for _ in blobs] == blobs
    deflated = metric(gw, "roomcast_gateway_frames_deflated_total")
    assert deflated == 2 * 20  # the tiny blob goes plain (under --compress-min-bytes)
    sent = metric(gw, "roomcast_gateway_bytes_sent_total")
    raw = sum(len(b) for b in blobs)
    assert sent < raw * 1.7  # 3 viewers, 2 of them at a fraction of the size


def test_a_client_that_needs_a_small_window_gets_plain_frames(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway()
    small = ClientPerMessageDeflateFactory(server_max_window_bits=10)
    ws = gw.viewer("r", extensions=[small], compression=None)
    assert "Sec-WebSocket-Extensions" not in ws.response.headers
    gw.publish("r", chat_blob("r", 0))
    assert ws.recv(timeout=5, decode=False) == chat_blob("r", 0)


def test_no_compress_offers_nothing(gateway: Callable[..., Gateway]) -> None:
    gw = gateway("--no-compress")
    ws = gw.viewer("r", compression="deflate")
    assert "Sec-WebSocket-Extensions" not in ws.response.headers
    gw.publish("r", chat_blob("r", 0))
    assert ws.recv(timeout=5, decode=False) == chat_blob("r", 0)


def compressed_frame(payload: bytes) -> bytes:
    """A masked client text frame with RSV1 set (websockets' Frame refuses to build one)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(data) < 65536
    mask = os.urandom(4)
    header = bytes([0x80 | 0x40 | 0x1]) + (
        bytes([0x80 | len(data)]) if len(data) < 126 else struct.pack("!BH", 0x80 | 126, len(data))
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def test_compressed_client_messages_are_inflated_and_a_bomb_closes_with_1009(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway("--max-message-bytes", "4096")
    ext = [ClientPerMessageDeflateFactory(client_no_context_takeover=True)]
    ok = RawViewer(gw.port, extensions=ext)
    ok.sock.sendall(compressed_frame(b'{"type":"join","room":"z"}'))
    assert [plain(m) for m in ok.messages(1)] == [{"type": "joined", "room": "z"}]
    bomb = RawViewer(gw.port, extensions=ext)
    inflated = b'{"type":"ping","pad":"' + b"a" * 3_000_000 + b'"}'
    frame = compressed_frame(inflated)
    assert len(frame) < 4096  # under the limit on the wire: only inflating finds it out
    bomb.sock.sendall(frame)
    bomb.frames(timeout=5)
    assert bomb.close_code == 1009
    gw.publish("z", chat_blob("z", 0))
    assert ok.messages(1) == [json.loads(chat_blob("z", 0))]  # inflated by the client
    assert metric(gw, "roomcast_gateway_frames_deflated_total") == 1


def test_the_shared_frame_decodes_alone_after_any_earlier_message() -> None:
    """No context takeover: each compressed blob stands alone, whatever came before it."""
    deflater = Deflater(level=6, min_bytes=0)
    blobs = [chat_blob("r", i * 40, seed=i) for i in range(5)]
    frames = [deflater.frame(b) for b in blobs]
    for blob, frame in zip(blobs, frames, strict=True):
        assert frame is not None and frame[0] == 0xC1  # FIN, RSV1, text
        payload = frame[4:] if frame[1] == 126 else frame[2:]
        assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == blob
        assert len(frame) * 3 < len(blob)
    assert Deflater(min_bytes=256).frame(b'{"type":"blob"}') is None  # too short to pay


NODE_CLIENT = Path(__file__).parent.parent / "node" / "ws_viewer.mjs"


@pytest.fixture(scope="session")
def node_ws() -> Path:
    """Node `ws` (as browsers' peer library): installed from tests/node's lockfile once."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed for the Node client tests"
    folder = NODE_CLIENT.parent
    if not (folder / "node_modules" / "ws").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder, check=True,
                       capture_output=True, timeout=300)  # fmt: skip
    return NODE_CLIENT


def test_node_ws_decodes_the_shared_frames_in_order(
    gateway: Callable[..., Gateway], node_ws: Path
) -> None:
    gw = gateway()
    blobs = [chat_blob("n", i * 40) for i in range(10)] + [gw.blob("n", 5000)]
    proc = subprocess.Popen(
        ["node", str(node_ws), f"{gw.ws_url}?room=n", str(len(blobs))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "joined" once the room is live
    assert plain(json.loads(line)) == {"type": "joined", "room": "n"}, proc.stderr.read()  # type: ignore[union-attr]
    gw.publish("n", *blobs)
    out, err = proc.communicate(timeout=20)
    result = json.loads(out)
    assert result["extensions"].startswith("permessage-deflate"), result
    assert [m.encode() for m in result["messages"]] == blobs, err
    assert metric(gw, "roomcast_gateway_frames_deflated_total") == 10
