"""`roomcast bench fuzz`: a socket-level fuzzer against one live gateway worker.

Each case is a short byte script played over a raw TCP socket: an HTTP upgrade request (valid,
mutated or random), then WebSocket frames built by hand (wrong opcodes, reserved bits, unmasked
client frames, lying or 64-bit huge lengths, control frames over 125 bytes or fragmented, CONT
without a start, interleaved fragments, invalid UTF-8, random JSON, protocol violations followed
by a valid join in the same write, many messages in one write), ended by a close, a close frame,
a half-close or a reset, sometimes dribbled a few bytes at a time. Cases run many at a time on
one event loop. A few good viewers stay connected to the rooms the cases join for the whole run.

After every batch the fuzzer publishes a numbered blob to each room and checks that every good
viewer got every blob, in order; that the worker is alive and answers /healthz; that its open
descriptors and RSS stay flat (see `Limits`); and that handshakes left unfinished are closed
(`--handshake-timeout-s`). Valid cases also check their own answers (101, then one `joined`,
`left` or `pong` per message). Case i of a run depends on the seed and i alone, so every case
can be replayed on its own (`--replay`), and a failed batch is narrowed down to the case that
breaks the gateway by replaying its suspects one by one on a fresh gateway.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import socket
import string
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri
from websockets.utils import apply_mask

from roomcast.bench import stack
from roomcast.core.blob import encode_blob

Progress = Callable[[str], None]

_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

# Categories, and whether their traffic is valid (RFC 6455 and docs/protocol.md). A run with
# `--only valid` plays only those: it must pass on any correct gateway, so a failure in a full run
# comes from the invalid traffic, not from the fuzzer itself.
CATEGORIES: dict[str, bool] = {
    "valid": True,  # handshake, joins / leaves / pings one per write, WebSocket ping / pong
    "burst": True,  # many valid messages (and control frames) in one write
    "slow": True,  # a valid case dribbled a few bytes at a time
    "fragmented": True,  # valid messages split in fragments, control frames between them
    "handshake": False,  # mutated, truncated, pipelined or random HTTP requests
    "frames": False,  # bad opcodes, reserved bits, unmasked, lying or huge lengths
    "control": False,  # control frames over 125 bytes or fragmented, bad close frames
    "fragments": False,  # CONT without a start, interleaved or oversized fragment sequences
    "utf8": False,  # invalid UTF-8 in text messages and close reasons
    "messages": False,  # random JSON and malformed roomcast messages
    "poison": False,  # one violation, then a valid join in the same write
    "abrupt": False,  # resets and half-closes in the middle of a request or a frame
    "mutated": False,  # a valid case's bytes with random bit flips, inserts and cuts
}
VALID = [c for c, ok in CATEGORIES.items() if ok]


def parse_categories(value: str) -> list[str]:
    """`all`, `valid`, or names separated by commas (`-name` removes one)."""
    out: list[str] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if part == "all":
            out += [c for c in CATEGORIES if c not in out]
        elif part == "valid":
            out += [c for c in VALID if c not in out]
        elif part.startswith("-") and part[1:] in CATEGORIES:
            if not out:
                out = list(CATEGORIES)
            out = [c for c in out if c != part[1:]]
        elif part in CATEGORIES:
            if part not in out:
                out.append(part)
        else:
            raise ValueError(
                f"unknown category {part!r}; known: all, valid, {', '.join(CATEGORIES)}"
            )
    if not out:
        raise ValueError("no category left")
    return [c for c in CATEGORIES if c in out]  # a fixed order: replays pick the same ones


# ---- frames, built by hand -------------------------------------------------------------------


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    key: bytes | None = b"\x00\x00\x00\x00",
    fin: bool = True,
    rsv: int = 0,
    length: int | None = None,
    form: int | None = None,
) -> bytes:
    """One WebSocket frame. `key=None` sends it unmasked; `length` lies about the payload size;
    `form` forces the 7-, 16- or 64-bit length encoding (non-minimal ones too)."""
    n = len(payload) if length is None else length
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)
    mbit = 0x80 if key is not None else 0
    if form == 7:
        head = bytes([b0, mbit | (n & 0x7F)])
    elif form == 16:
        head = bytes([b0, mbit | 126]) + (n & 0xFFFF).to_bytes(2, "big")
    else:
        head = bytes([b0, mbit | 127]) + (n & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big")
    if key is None:
        return head + payload
    return head + key + apply_mask(payload, key)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


_BAD_UTF8 = [
    b"\xff",
    b"\xc0\xaf",  # overlong '/'
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # a UTF-16 surrogate
    b"\xf4\x90\x80\x80",  # over U+10FFFF
    b"\xf8\x88\x80\x80\x80",
    b"\xe2\x82",  # truncated
    b"\x80",  # a lone continuation byte
    b"\xc3",
]

_BAD_ROOMS = [
    "",
    "a.b",
    "a b",
    "*",
    ">",
    "a>",
    "x" * 129,
    "_all",
    "_reserved",
    "caf\u00e9",
    "tab\t",
    "nul\x00",
    "new\nline",
    "\u202eevil",
    "%2e",
]


@dataclass
class Case:
    """One case: a script of steps over one socket, and how it ends.

    Steps: ("send", bytes); ("drip", bytes, chunk, delay_s): sent `chunk` bytes at a time;
    ("read", seconds): read what comes; ("read101",): read until the end of the HTTP answer;
    ("shut",): shutdown(SHUT_WR); ("expect",): a valid case waits for all its answers (`expect`).
    Ends: "close" (FIN), "rst" (SO_LINGER 0), "drain" (read until the server closes, at most
    0.25 s, then FIN).
    """

    index: int
    category: str
    kind: str
    steps: list[tuple[Any, ...]]
    end: str
    rooms: set[str]
    expect: list[str] | None = None

    def describe(self, limit: int = 400) -> str:
        parts = []
        for step in self.steps:
            if step[0] in ("send", "drip"):
                data: bytes = step[1]
                shown = repr(data[:limit]) + (
                    f"...(+{len(data) - limit} bytes)" if len(data) > limit else ""
                )
                extra = (
                    f" {step[2]} bytes every {step[3] * 1000:.0f} ms" if step[0] == "drip" else ""
                )
                parts.append(f"{step[0]}{extra} {shown}")
            elif step[0] == "read":
                parts.append(f"read {step[1] * 1000:.0f} ms")
            else:
                parts.append(step[0])
        parts.append(f"end: {self.end}")
        return f"case {self.index} [{self.category}/{self.kind}]: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        steps: list[Any] = []
        for step in self.steps:
            if step[0] in ("send", "drip"):
                steps.append([step[0], step[1].hex(), *step[2:]])
            else:
                steps.append(list(step))
        return {
            "index": self.index,
            "category": self.category,
            "kind": self.kind,
            "steps": steps,
            "end": self.end,
            "expect": self.expect,
            "script": self.describe(limit=2000),
        }


class _Builder:
    """Builds one case from its own random.Random."""

    def __init__(self, rng: random.Random, rooms: list[str], port: int) -> None:
        self.r = rng
        self.rooms = rooms
        self.port = port
        self.steps: list[tuple[Any, ...]] = []
        self.end = "close"
        self.touched: set[str] = set()
        self.expect: list[str] | None = None
        self.kind = ""

    # -- pieces --

    def room(self) -> str:
        room = self.r.choice(self.rooms)
        self.touched.add(room)
        return room

    def key(self) -> bytes:
        return self.r.randbytes(4)

    def f(self, opcode: int, payload: bytes = b"", **kw: Any) -> bytes:
        kw.setdefault("key", self.key())
        return frame(opcode, payload, **kw)

    def text(self, data: bytes, **kw: Any) -> bytes:
        return self.f(1, data, **kw)

    def join(self, room: str | None = None) -> bytes:
        return self.text(_dumps({"type": "join", "room": room or self.room()}))

    def request(self, rooms: Iterable[str] = (), path: str | None = None) -> bytes:
        if path is None:
            query = "&".join(f"room={r}" for r in rooms)
            path = "/ws" + (f"?{query}" if query else "")
        key = base64.b64encode(self.r.randbytes(16)).decode()
        headers = [
            f"Host: 127.0.0.1:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.r.random() < 0.3:
            self.r.shuffle(headers)
        if self.r.random() < 0.2:
            headers.append("User-Agent: roomcast-fuzz")
        return (f"GET {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n").encode()

    def valid_messages(self, n: int) -> tuple[list[bytes], list[str]]:
        """`n` valid client messages (frames) and the answers they call for, in order."""
        out: list[bytes] = []
        answers: list[str] = []
        for _ in range(n):
            k = self.r.random()
            if k < 0.45:
                room = self.room()
                obj: dict[str, str] = {"type": "join", "room": room}
                answers.append(f"joined:{room}")
            elif k < 0.65:
                room = self.room()
                obj = {"type": "leave", "room": room}
                answers.append(f"left:{room}")
            elif k < 0.85:
                obj = {"type": "ping"}
                answers.append("pong")
            elif k < 0.93:  # a WebSocket ping: answered by a pong frame, not a message
                out.append(self.f(9, self.r.randbytes(self.r.randrange(0, 126))))
                continue
            else:  # an unsolicited pong: allowed, ignored
                out.append(self.f(10, self.r.randbytes(self.r.randrange(0, 20))))
                continue
            data = _dumps(obj) if self.r.random() < 0.8 else json.dumps(obj, indent=1).encode()
            out.append(self.text(data))
        return out, answers

    def valid_opening(self) -> tuple[bytes, list[str]]:
        rooms = [self.room() for _ in range(self.r.choice([0, 0, 1, 1, 2]))]
        return self.request(rooms), [f"joined:{r}" for r in dict.fromkeys(rooms)]

    def valid_end(self) -> None:
        k = self.r.random()
        if k < 0.3:
            self.steps.append(("send", self.f(8, (1000).to_bytes(2, "big") + b"bye")))
            self.end = "drain"
        elif k < 0.5:
            self.steps.append(("shut",))
            self.end = "drain"
        elif k < 0.75:
            self.end = "rst"
        else:
            self.end = "close"

    def invalid_end(self) -> None:
        k = self.r.random()
        if k < 0.35:
            self.steps.append(("read", self.r.choice([0.0, 0.005, 0.02])))
            self.end = "close"
        elif k < 0.65:
            self.steps.append(("read", self.r.choice([0.0, 0.005, 0.02])))
            self.end = "rst"
        elif k < 0.8:
            self.steps.append(("shut",))
            self.end = "drain"
        else:
            self.end = "drain"

    def opened(self) -> None:
        """A valid handshake, its answer read (so what follows is sent on an open connection)."""
        req, _ = self.valid_opening()
        self.steps += [("send", req), ("read101",)]

    # -- valid categories --

    def cat_valid(self) -> None:
        self.kind = "one message per write"
        req, answers = self.valid_opening()
        self.steps += [("send", req), ("read101",)]
        msgs, more = self.valid_messages(self.r.randrange(1, 7))
        for m in msgs:
            self.steps.append(("send", m))
        self.expect = answers + more
        self.steps.append(("expect",))
        self.valid_end()

    def cat_burst(self) -> None:
        self.kind = "many messages in one write"
        req, answers = self.valid_opening()
        self.steps += [("send", req), ("read101",)]
        msgs, more = self.valid_messages(self.r.randrange(8, 60))
        self.steps.append(("send", b"".join(msgs)))
        self.expect = answers + more
        self.steps.append(("expect",))
        self.valid_end()

    def cat_slow(self) -> None:
        self.kind = "dribbled"
        req, answers = self.valid_opening()
        msgs, more = self.valid_messages(self.r.randrange(1, 4))
        chunk, delay = self.r.randrange(1, 12), self.r.choice([0.0, 0.001, 0.003])
        # at most ~0.3 s of dribbling per case
        while delay and (len(req) + sum(map(len, msgs))) / chunk * delay > 0.3:
            chunk *= 2
        self.steps += [("drip", req, chunk, delay), ("read101",)]
        self.steps.append(("drip", b"".join(msgs), chunk, delay))
        self.expect = answers + more
        self.steps.append(("expect",))
        self.valid_end()

    def cat_fragmented(self) -> None:
        self.kind = "fragments, control frames between"
        req, answers = self.valid_opening()
        self.steps += [("send", req), ("read101",)]
        out: list[bytes] = []
        expect = list(answers)
        for _ in range(self.r.randrange(1, 4)):
            room = self.room()
            data = _dumps({"type": "join", "room": room})
            cuts = sorted(
                self.r.sample(range(1, len(data)), self.r.randrange(1, min(6, len(data) - 1)))
            )
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                out.append(self.f(1 if i == 0 else 0, piece, fin=last))
                if not last and self.r.random() < 0.3:
                    out.append(self.f(9, b"mid"))  # a ping between fragments is allowed
            expect.append(f"joined:{room}")
        if self.r.random() < 0.5:
            self.steps.append(("send", b"".join(out)))
        else:
            self.steps += [("send", o) for o in out]
        self.expect = expect
        self.steps.append(("expect",))
        self.valid_end()

    # -- invalid categories --

    def cat_handshake(self) -> None:
        r = self.r
        req = self.request([self.room()] if r.random() < 0.7 else [])
        variants: list[tuple[str, Callable[[], bytes]]] = [
            ("truncated", lambda: req[: r.randrange(0, len(req))]),
            ("header removed", lambda: self._drop_header(req)),
            (
                "bad key",
                lambda: req.replace(
                    b"Sec-WebSocket-Key: ",
                    b"Sec-WebSocket-Key: " + r.choice([b"x", b"!!!", b"AAAA", b"=" * 30]),
                ),
            ),
            (
                "bad version",
                lambda: req.replace(
                    b"Version: 13", b"Version: " + r.choice([b"8", b"99", b"", b"13, 8", b"-1"])
                ),
            ),
            ("method", lambda: r.choice([b"POST", b"HEAD", b"PUT", b"GET GET", b"\x00"]) + req[3:]),
            ("http/1.0", lambda: req.replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
            (
                "bad rooms",
                lambda: self.request(
                    path="/ws?"
                    + "&".join(
                        "room=" + _quote(r.choice(_BAD_ROOMS)) for _ in range(r.randrange(1, 4))
                    )
                ),
            ),
            (
                "too many rooms",
                lambda: self.request([f"fzx{i}" for i in range(r.choice([33, 40, 200]))]),
            ),
            (
                "odd path",
                lambda: self.request(
                    path=r.choice(
                        [
                            "/",
                            "/ws/",
                            "/WS",
                            "/ws?",
                            "/ws?room",
                            "/ws?room=&room=",
                            "/ws#x",
                            "//ws",
                            "/ws?room=a%2Eb",
                            "*",
                            "/ws?" + "x" * 9000,
                            "/healthz",
                            "/readyz",
                            "/nope",
                            "/metrics",
                        ]
                    )
                ),
            ),
            (
                "huge header",
                lambda: req[:-2] + b"X-Big: " + b"a" * r.choice([1000, 8200, 70000]) + b"\r\n\r\n",
            ),
            (
                "many headers",
                lambda: (
                    req[:-2]
                    + b"".join(b"X-H%d: v\r\n" % i for i in range(r.choice([100, 129, 300])))
                    + b"\r\n"
                ),
            ),
            ("no colon", lambda: req[:-2] + b"garbage line\r\n\r\n"),
            ("bare LF", lambda: req.replace(b"\r\n", b"\n")),
            ("pipelined requests", lambda: req + self.request([self.room()])),
            (
                "request and frames in one write",
                lambda: req + self.join() + self.text(_dumps({"type": "ping"})),
            ),
            ("random bytes", lambda: r.randbytes(r.randrange(1, 300))),
            (
                "TLS hello",
                lambda: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + r.randbytes(40),
            ),
            ("byte flips", lambda: _flip(r, req, r.randrange(1, 6))),
            ("nothing", lambda: b""),
        ]
        self.kind, make = r.choice(variants)
        data = make()
        if r.random() < 0.15 and data:
            self.steps.append(("drip", data, r.randrange(1, 50), 0.001))
        else:
            self.steps.append(("send", data))
        self.invalid_end()

    def _drop_header(self, req: bytes) -> bytes:
        lines = req.split(b"\r\n")
        victims = [i for i, line in enumerate(lines[1:-2], 1) if line]
        del lines[self.r.choice(victims)]
        return b"\r\n".join(lines)

    def violation(self) -> tuple[str, bytes]:
        """One frame (or frame sequence) that breaks RFC 6455 or the roomcast protocol."""
        r = self.r
        room = self.room()
        options: list[tuple[str, Callable[[], bytes]]] = [
            ("binary", lambda: self.f(2, _dumps({"type": "join", "room": room}))),
            ("not json", lambda: self.text(r.choice([b"hello", b"{", b"[1,", b"join", b"", b" "]))),
            (
                "bad utf-8",
                lambda: self.text(b'{"type":"join","room":"' + r.choice(_BAD_UTF8) + b'"}'),
            ),
            ("bad room", lambda: self.text(_dumps({"type": "join", "room": r.choice(_BAD_ROOMS)}))),
            (
                "unknown type",
                lambda: self.text(
                    _dumps(
                        {"type": r.choice(["joinn", "JOIN", "subscribe", "", "blob"]), "room": room}
                    )
                ),
            ),
            (
                "not an object",
                lambda: self.text(r.choice([b"[]", b"1", b'"join"', b"null", b"true"])),
            ),
            ("missing room", lambda: self.text(_dumps({"type": r.choice(["join", "leave"])}))),
            (
                "room not a string",
                lambda: self.text(
                    b'{"type":"join","room":' + r.choice([b"1", b"null", b"[]", b"{}"]) + b"}"
                ),
            ),
            (
                "too big",
                lambda: self.text(_dumps({"type": "join", "room": room, "pad": "x" * 5000})),
            ),
            (
                "reserved opcode",
                lambda: self.f(r.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), b"x"),
            ),
            ("reserved bits", lambda: self.f(1, _dumps({"type": "ping"}), rsv=r.randrange(1, 8))),
            ("unmasked", lambda: self.f(1, _dumps({"type": "ping"}), key=None)),
            ("cont without start", lambda: self.f(0, b'{"type":"ping"}')),
            (
                "text inside a fragmented message",
                lambda: self.f(1, b'{"type":', fin=False) + self.f(1, b'"ping"}'),
            ),
            ("fragmented ping", lambda: self.f(9, b"a", fin=False) + self.f(0, b"b")),
            ("ping over 125 bytes", lambda: self.f(9, b"p" * r.choice([126, 200, 1000]))),
            (
                "bad close code",
                lambda: self.f(
                    8, r.choice([0, 999, 1004, 1005, 1006, 1015, 2999, 5000]).to_bytes(2, "big")
                ),
            ),
            (
                "fragments over the limit",
                lambda: self.f(1, b"x" * 3000, fin=False) + self.f(0, b"y" * 3000),
            ),
        ]
        kind, make = r.choice(options)
        return kind, make()

    def cat_poison(self) -> None:
        """A violation, then valid joins, in ONE write: the gateway reads them in one go. The
        violation is a frame on an open connection, or (one case in four) an HTTP request the
        gateway answers without upgrading, the joins' frames right behind it."""
        joins = b"".join(self.join() for _ in range(self.r.randrange(1, 4)))
        if self.r.random() < 0.25:
            req = self.request([self.room()])
            kind, data = self.r.choice(
                [
                    ("GET /healthz", self.request(path="/healthz")),
                    ("404", self.request(path="/nope")),
                    ("400 bad room", self.request(path="/ws?room=a.b")),
                    ("400 bad key", req.replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: x")),
                    ("426 no upgrade", req.replace(b"Upgrade: websocket\r\n", b"")),
                ]
            )
            self.kind = f"{kind} + join"
            self.steps.append(("send", data + joins))
            self.invalid_end()
            return
        kind, bad = self.violation()
        self.kind = f"{kind} + join"
        self.opened()
        before = b"".join(self.join() for _ in range(self.r.choice([0, 0, 1])))
        self.steps.append(("send", before + bad + joins))
        self.invalid_end()

    def cat_frames(self) -> None:
        r = self.r
        self.opened()
        msg = _dumps({"type": "join", "room": self.room()})
        variants: list[tuple[str, Callable[[], bytes]]] = [
            (
                "reserved opcode",
                lambda: self.f(
                    r.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), r.randbytes(r.randrange(0, 30))
                ),
            ),
            ("reserved bits", lambda: self.f(r.choice([1, 2, 9]), msg, rsv=r.randrange(1, 8))),
            ("unmasked", lambda: self.f(1, msg, key=None)),
            ("binary", lambda: self.f(2, r.randbytes(r.randrange(0, 200)))),
            ("length too long", lambda: self.f(1, msg, length=len(msg) + r.randrange(1, 100))),
            ("length too short", lambda: self.f(1, msg, length=r.randrange(0, len(msg)))),
            ("non-minimal 16-bit length", lambda: self.f(1, msg, form=16)),
            ("non-minimal 64-bit length", lambda: self.f(1, msg, form=64)),
            ("over --max-message-bytes", lambda: self.f(1, b"x" * r.choice([4097, 5000, 70000]))),
            (
                "huge length",
                lambda: self.f(
                    r.choice([1, 2, 0, 9]),
                    b"x" * r.randrange(0, 64),
                    length=r.choice([2**63 - 1, 2**64 - 1, 2**32, 2**31, 65536 * 1024]),
                    form=64,
                ),
            ),
            ("huge 16-bit length", lambda: self.f(1, b"x" * 10, length=65535, form=16)),
            ("header only", lambda: self.f(1, msg)[: r.randrange(1, 6)]),
            ("random frame bytes", lambda: r.randbytes(r.randrange(2, 40))),
            ("text of random bytes", lambda: self.text(r.randbytes(r.randrange(0, 100)))),
        ]
        self.kind, make = r.choice(variants)
        data = make()
        if r.random() < 0.3:  # and whatever follows in the same write
            data += self.text(_dumps({"type": "ping"}))
        self.steps.append(("send", data))
        self.invalid_end()

    def cat_control(self) -> None:
        r = self.r
        self.opened()
        variants: list[tuple[str, Callable[[], bytes]]] = [
            ("ping over 125 bytes", lambda: self.f(9, b"p" * r.choice([126, 127, 1000, 65536]))),
            ("pong over 125 bytes", lambda: self.f(10, b"p" * r.choice([126, 300]))),
            ("close over 125 bytes", lambda: self.f(8, (1000).to_bytes(2, "big") + b"r" * 200)),
            ("fragmented ping", lambda: self.f(9, b"a", fin=False) + self.f(0, b"b")),
            ("fragmented close", lambda: self.f(8, (1000).to_bytes(2, "big"), fin=False)),
            ("close with 1 byte", lambda: self.f(8, b"\x03")),
            (
                "close with a bad code",
                lambda: self.f(
                    8,
                    r.choice([0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]).to_bytes(
                        2, "big"
                    ),
                ),
            ),
            (
                "close with a bad UTF-8 reason",
                lambda: self.f(8, (1000).to_bytes(2, "big") + r.choice(_BAD_UTF8)),
            ),
            ("empty close", lambda: self.f(8, b"")),
            ("100 pings in one write", lambda: b"".join(self.f(9, b"%d" % i) for i in range(100))),
            (
                "data after close",
                lambda: self.f(8, (1000).to_bytes(2, "big")) + self.join() + self.f(9, b"x"),
            ),
            ("ping with 16-bit length", lambda: self.f(9, b"a" * 10, form=16)),
        ]
        self.kind, make = r.choice(variants)
        self.steps.append(("send", make()))
        self.invalid_end()

    def cat_fragments(self) -> None:
        r = self.r
        self.opened()
        msg = _dumps({"type": "join", "room": self.room()})
        half = len(msg) // 2
        variants: list[tuple[str, Callable[[], bytes]]] = [
            ("cont without start", lambda: self.f(0, msg)),
            ("cont without start, not fin", lambda: self.f(0, msg, fin=False) + self.f(0, b"")),
            (
                "two starts",
                lambda: (
                    self.f(1, msg[:half], fin=False)
                    + self.f(1, msg[half:], fin=False)
                    + self.f(0, b"", fin=True)
                ),
            ),
            (
                "interleaved text and binary",
                lambda: (
                    self.f(1, msg[:half], fin=False)
                    + self.f(2, b"x", fin=False)
                    + self.f(0, msg[half:])
                ),
            ),
            ("binary fragments", lambda: self.f(2, msg[:half], fin=False) + self.f(0, msg[half:])),
            (
                "fragments over the limit",
                lambda: self.f(1, b"x" * 2500, fin=False) + self.f(0, b"x" * 2500),
            ),
            (
                "many tiny fragments over the limit",
                lambda: (
                    self.f(1, b"x", fin=False)
                    + b"".join(self.f(0, b"y" * 100, fin=False) for _ in range(50))
                    + self.f(0, b"z")
                ),
            ),
            ("unfinished message", lambda: self.f(1, msg[:half], fin=False)),
            (
                "unfinished, then close",
                lambda: self.f(1, msg[:half], fin=False) + self.f(8, (1000).to_bytes(2, "big")),
            ),
            (
                "UTF-8 split across fragments",
                lambda: self.f(1, b'{"type":"join","room":"\xc3', fin=False) + self.f(0, b'\xa9"}'),
            ),
            (
                "empty fragments",
                lambda: self.f(1, b"", fin=False) + self.f(0, b"", fin=False) + self.f(0, b""),
            ),
        ]
        self.kind, make = r.choice(variants)
        self.steps.append(("send", make()))
        self.invalid_end()

    def cat_utf8(self) -> None:
        r = self.r
        self.opened()
        bad = r.choice(_BAD_UTF8)
        variants: list[tuple[str, Callable[[], bytes]]] = [
            ("in a room name", lambda: self.text(b'{"type":"join","room":"a' + bad + b'"}')),
            ("in the type", lambda: self.text(b'{"type":"jo' + bad + b'"}')),
            ("alone", lambda: self.text(bad)),
            ("after valid JSON", lambda: self.text(b'{"type":"ping"}' + bad)),
            ("in a close reason", lambda: self.f(8, (1000).to_bytes(2, "big") + bad)),
            (
                "valid non-ASCII room",
                lambda: self.text(
                    _dumps(
                        {
                            "type": "join",
                            "room": r.choice(["\u00e9t\u00e9", "\u623f\u95f4", "\U0001f600"]),
                        }
                    )
                ),
            ),
        ]
        self.kind, make = r.choice(variants)
        self.steps.append(("send", make()))
        self.invalid_end()

    def cat_messages(self) -> None:
        r = self.r
        self.opened()
        room = self.room()
        variants: list[tuple[str, Callable[[], bytes]]] = [
            ("random JSON", lambda: _dumps(_random_json(r, 3))),
            (
                "random object with a type",
                lambda: _dumps(
                    {
                        "type": r.choice(["join", "leave", "ping", "blob", "pong", 1, None]),
                        **{_rand_key(r): _random_json(r, 1) for _ in range(r.randrange(0, 4))},
                    }
                ),
            ),
            (
                "bad room",
                lambda: _dumps({"type": r.choice(["join", "leave"]), "room": r.choice(_BAD_ROOMS)}),
            ),
            (
                "room not a string",
                lambda: b'{"type":"join","room":' + _dumps(_random_json(r, 1)) + b"}",
            ),
            (
                "duplicate keys",
                lambda: b'{"type":"join","room":"' + room.encode() + b'","room":"a.b"}',
            ),
            (
                "trailing garbage",
                lambda: (
                    _dumps({"type": "join", "room": room}) + r.choice([b"x", b"}", b" {}", b"\x00"])
                ),
            ),
            (
                "two objects",
                lambda: _dumps({"type": "ping"}) + _dumps({"type": "join", "room": room}),
            ),
            ("deep nesting", lambda: b"[" * 2000 + b"]" * 2000),
            ("huge number", lambda: b'{"type":"join","room":' + b"9" * 1000 + b"}"),
            ("NaN", lambda: b'{"type":"ping","x":NaN}'),
            ("empty", lambda: b""),
            ("extra fields", lambda: _dumps({"type": "join", "room": room, "since": 12, "x": [1]})),
            ("type last", lambda: _dumps({"room": room, "type": "join"})),
        ]
        self.kind, make = r.choice(variants)
        data = make()
        self.steps.append(("send", self.text(data[:4000])))
        self.invalid_end()

    def cat_abrupt(self) -> None:
        r = self.r
        req, _ = self.valid_opening()
        k = r.randrange(6)
        if k == 0:
            self.kind = "reset mid-request"
            self.steps.append(("send", req[: r.randrange(1, len(req))]))
            self.end = "rst"
        elif k == 1:
            self.kind = "half-close mid-request"
            self.steps += [("send", req[: r.randrange(1, len(req))]), ("shut",)]
            self.end = "drain"
        elif k == 2:
            self.kind = "half-close right after the request"
            self.steps += [("send", req), ("shut",)]
            self.end = "drain"
        elif k == 3:
            self.kind = "reset mid-frame"
            self.opened()
            f = self.join()
            self.steps.append(("send", f[: r.randrange(1, len(f))]))
            self.end = "rst"
        elif k == 4:
            self.kind = "half-close mid-frame"
            self.opened()
            f = self.join()
            self.steps += [("send", f[: r.randrange(1, len(f))]), ("shut",)]
            self.end = "drain"
        else:
            self.kind = "reset right after a join"
            self.opened()
            self.steps.append(("send", self.join()))
            self.end = "rst"

    def cat_mutated(self) -> None:
        r = self.r
        req, _ = self.valid_opening()
        msgs, _ = self.valid_messages(r.randrange(1, 8))
        data = req + b"".join(msgs)
        self.kind = "mutated valid bytes"
        mutated = _flip(r, data, r.randrange(1, 8))
        cut = r.randrange(0, len(mutated) + 1)
        self.steps += [("send", mutated[:cut]), ("send", mutated[cut:])]
        self.invalid_end()


def _quote(s: str) -> str:
    import urllib.parse

    return urllib.parse.quote(s, safe="")


def _rand_key(r: random.Random) -> str:
    return "".join(r.choice(string.ascii_letters) for _ in range(r.randrange(1, 8)))


def _random_json(r: random.Random, depth: int) -> Any:
    k = r.randrange(8 if depth > 0 else 5)
    if k == 0:
        return r.randrange(-(2**40), 2**40)
    if k == 1:
        return r.random()
    if k == 2:
        return "".join(r.choice(string.printable) for _ in range(r.randrange(0, 20)))
    if k == 3:
        return r.choice([True, False, None])
    if k == 4:
        return r.choice(["join", "leave", "ping", "fz0", ""])
    if k in (5, 6):
        return {_rand_key(r): _random_json(r, depth - 1) for _ in range(r.randrange(0, 4))}
    return [_random_json(r, depth - 1) for _ in range(r.randrange(0, 4))]


def _flip(r: random.Random, data: bytes, n: int) -> bytes:
    b = bytearray(data)
    for _ in range(n):
        k = r.randrange(5)
        if not b:
            b += r.randbytes(1)
        i = r.randrange(len(b))
        if k == 0:
            b[i] ^= 1 << r.randrange(8)
        elif k == 1:
            b[i] = r.randrange(256)
        elif k == 2:
            b[i:i] = r.randbytes(r.randrange(1, 8))
        elif k == 3:
            del b[i : i + r.randrange(1, 8)]
        else:
            j = r.randrange(i, min(len(b), i + 32) + 1)
            b[i:i] = b[i:j]
    return bytes(b)


class Generator:
    """Case i of a run is a function of (seed, i, categories) alone."""

    def __init__(self, seed: int, categories: list[str], rooms: list[str], port: int) -> None:
        self.seed = seed
        self.categories = categories
        self.rooms = rooms
        self.port = port

    def case(self, index: int) -> Case:
        rng = random.Random(f"roomcast-fuzz/{self.seed}/{index}")
        category = rng.choice(self.categories)
        b = _Builder(rng, self.rooms, self.port)
        getattr(b, f"cat_{category}")()
        return Case(index, category, b.kind, b.steps, b.end, b.touched, b.expect)


# ---- playing a case ----------------------------------------------------------------------------


def _server_messages(data: bytes) -> tuple[int | None, list[str]]:
    """Parse what a gateway sent: the HTTP status, then its text messages as labels."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None, []
    try:
        status = int(data[: data.find(b"\r\n")].split()[1])
    except (ValueError, IndexError):
        return -1, []
    labels: list[str] = []
    i = head_end + 4
    while i + 2 <= len(data):
        b0, b1 = data[i], data[i + 1]
        n, j = b1 & 0x7F, i + 2
        if n == 126:
            if j + 2 > len(data):
                break
            n, j = int.from_bytes(data[j : j + 2], "big"), j + 2
        elif n == 127:
            if j + 8 > len(data):
                break
            n, j = int.from_bytes(data[j : j + 8], "big"), j + 8
        if j + n > len(data):
            break
        payload, i = data[j : j + n], j + n
        if b0 & 0x0F == 1:
            try:
                msg = json.loads(payload)
                label = str(msg.get("type"))
                if "room" in msg:
                    label += f":{msg['room']}"
                elif "code" in msg:
                    label += f":{msg['code']}"
            except (ValueError, AttributeError):
                label = f"undecodable:{payload[:40]!r}"
            if not label.startswith(("blob", "count")):  # blobs and viewer counts come any time
                labels.append(label)
        elif b0 & 0x0F == 8:
            labels.append(
                f"close:{int.from_bytes(payload[:2], 'big') if len(payload) >= 2 else ''}"
            )
    return status, labels


# A "drain" end reads until the gateway closes, at most this long. After a protocol error the
# gateway sends its close frame and waits for the client's (up to its close timeout): a case that
# never answers it would otherwise hold its slot for seconds.
_DRAIN_S = 0.25


class CaseError(Exception):
    """A valid case did not get the answers the protocol promises."""


async def play(case: Case, port: int, source: str, answer_timeout: float) -> str:
    """Play one case; return how it went ("ok", "refused", "reset", ...); raise CaseError when a
    valid case is not served as docs/protocol.md says."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    got = bytearray()
    eof = False
    outcome = "ok"

    async def read_for(seconds: float, until: Callable[[], bool] | None = None) -> None:
        nonlocal eof
        deadline = loop.time() + seconds
        while not eof and not (until and until()):
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
            except TimeoutError:
                return
            if not data:
                eof = True
            got.extend(data)

    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 10)
        try:
            for step in case.steps:
                kind = step[0]
                if kind == "send":
                    if step[1]:
                        await asyncio.wait_for(loop.sock_sendall(sock, step[1]), 5)
                elif kind == "drip":
                    data, chunk, delay = step[1], step[2], step[3]
                    for i in range(0, len(data), chunk):
                        await asyncio.wait_for(loop.sock_sendall(sock, data[i : i + chunk]), 5)
                        if delay:
                            await asyncio.sleep(delay)
                elif kind == "read":
                    await read_for(step[1])
                elif kind == "read101":
                    await read_for(answer_timeout, lambda: b"\r\n\r\n" in got)
                    if case.expect is not None:
                        status, _ = _server_messages(bytes(got))
                        if status != 101:
                            raise CaseError(f"handshake answered {status} ({bytes(got[:200])!r})")
                elif kind == "expect":
                    want = case.expect or []
                    await read_for(
                        answer_timeout,
                        lambda want=want: len(_server_messages(bytes(got))[1]) >= len(want),  # type: ignore[misc]
                    )
                    _, labels = _server_messages(bytes(got))
                    if labels != want:
                        raise CaseError(f"expected {want}, got {labels}")
                elif kind == "shut":
                    sock.shutdown(socket.SHUT_WR)
        except (ConnectionError, BrokenPipeError, TimeoutError) as exc:
            if case.expect is not None:
                raise CaseError(f"{type(exc).__name__} while playing: {exc}") from None
            outcome = "server closed first"
        if case.end == "drain":
            with contextlib.suppress(OSError):
                await read_for(_DRAIN_S)
            if not eof:
                outcome = "still open after the drain"
        elif case.end == "rst":
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    except CaseError:
        raise
    except OSError as exc:
        if case.expect is not None:
            raise CaseError(f"{type(exc).__name__}: {exc}") from None
        outcome = type(exc).__name__
    finally:
        sock.close()
    return outcome


# ---- good viewers ------------------------------------------------------------------------------


class GoodViewer(asyncio.Protocol):
    """A well-behaved viewer (websockets' sans-I/O client): records every blob's offsets, per
    room, and counts the acks it gets."""

    def __init__(self, port: int, rooms: list[str]) -> None:
        self.rooms = rooms
        query = "&".join(f"room={r}" for r in rooms)
        self.proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws?{query}"), max_size=None)
        self.transport: asyncio.Transport | None = None
        self.offsets: dict[str, list[int]] = {r: [] for r in rooms}
        self.first = 0  # the first blob number it should see
        self.acks: Counter[str] = Counter()
        self.acked = asyncio.Event()
        self.lost: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proto.send_request(self.proto.connect())
        self._flush()

    def _flush(self) -> None:
        for chunk in self.proto.data_to_send():
            if chunk and self.transport is not None:
                self.transport.write(chunk)

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    self.lost = f"handshake answered {event.status_code}"
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                msg = json.loads(event.data)
                kind = msg.get("type")
                if kind == "blob":
                    self.offsets.setdefault(msg["room"], []).extend(msg["offsets"])
                else:
                    self.acks[str(kind)] += 1
                    self.acked.set()
            elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                self.lost = f"closed by the gateway: {self.proto.close_rcvd}"
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.lost or f"connection lost: {exc or 'EOF'}"
        self.acked.set()

    async def wait_acks(self, kind: str, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.acks[kind] < count and not self.lost:
            self.acked.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acked.wait(), left)
        return self.acks[kind] >= count

    def send(self, obj: dict[str, str]) -> None:
        self.proto.send_text(_dumps(obj))
        self._flush()

    async def churn(self, timeout: float) -> bool:
        """Leave and join again every room: a gateway rebuilds what it keeps per room on a
        join, so whatever a case left behind in a room is touched by the next blob."""
        left, joined = self.acks["left"], self.acks["joined"]
        for room in self.rooms:
            self.send({"type": "leave", "room": room})
            self.send({"type": "join", "room": room})
        n = len(self.rooms)
        return await self.wait_acks("left", left + n, timeout) and await self.wait_acks(
            "joined", joined + n, timeout
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class Options:
    cases: int = 100_000
    seed: int = 1
    concurrency: int = 100
    batch: int = 200
    good_viewers: int = 8
    rooms: int = 4
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    replay: list[int] | None = None
    max_failures: int = 5
    max_seconds: float = 900.0
    triage: bool = True
    handshake_timeout_s: float = 5.0
    rss_slack_mib: float = 48.0
    fd_slack: int = 16
    answer_timeout_s: float = 5.0
    gateway_args: tuple[str, ...] = ()


@dataclass
class Failure:
    batch: int
    check: str
    detail: str
    cases: list[Case]
    culprit: Case | None = None
    culprit_note: str = ""
    log_tail: str = ""
    also: list[tuple[Case, str]] = field(default_factory=list)  # broke another check alone

    def to_json(self, seed: int, categories: list[str]) -> dict[str, Any]:
        only = ",".join(categories)
        out: dict[str, Any] = {
            "batch": self.batch,
            "check": self.check,
            "detail": self.detail,
            "suspect_cases": [c.index for c in self.cases],
            "culprit": self.culprit.to_json() if self.culprit else None,
            "culprit_note": self.culprit_note,
            "also": [{"case": c.to_json(), "note": n} for c, n in self.also],
            "gateway_log_tail": self.log_tail,
        }
        target = [self.culprit.index] if self.culprit else [c.index for c in self.cases]
        out["replay"] = (
            f"roomcast bench fuzz --seed {seed} --only {only} "
            f"--replay {','.join(map(str, target[:50]))}"
            if target
            else ""
        )
        return out


class _Gateway:
    """The gateway under test (one worker), restarted on a fresh port after a failure."""

    def __init__(self, logs: Path, nats_url: str, prefix: str, extra: tuple[str, ...]) -> None:
        self.logs, self.nats_url, self.prefix, self.extra = logs, nats_url, prefix, extra
        self.server: stack.Server | None = None
        self.starts = 0
        self.log_pos = 0

    def start(self) -> None:
        self.server = stack.gateway(self.logs, self.nats_url, self.prefix, 1, extra=self.extra)
        log = self.server.procs[0].log_path
        self.log_pos = log.stat().st_size if log.exists() else 0
        self.server.start()
        self.starts += 1

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def alive(self) -> bool:
        return self.server is not None and self.server.procs[0].alive()

    def fds(self) -> int:
        assert self.server is not None
        return sum(p.num_fds() for p in self.server.processes())

    def rss(self) -> int:
        assert self.server is not None
        return self.server.rss_bytes()

    def log_tail(self, lines: int = 30) -> str:
        return self.server.procs[0].log_tail(lines) if self.server is not None else ""

    def new_errors(self) -> list[str]:
        """Error records (with their tracebacks) the gateway logged since the last call."""
        if self.server is None:
            return []
        path = self.server.procs[0].log_path
        try:
            with path.open("rb") as f:
                f.seek(self.log_pos)
                text = f.read()
        except FileNotFoundError:
            return []
        cut = text.rfind(b"\n") + 1  # whole lines only
        self.log_pos += cut
        blocks: list[str] = []
        for line in text[:cut].decode(errors="replace").splitlines():
            if _LOG_RECORD.match(line):
                if _LOG_ERROR.match(line):
                    blocks.append(line)
                elif blocks and not blocks[-1].endswith("\n..."):
                    blocks[-1] += "\n..."  # a record that is not an error ends the block
            elif blocks and not blocks[-1].endswith("\n..."):
                blocks[-1] += "\n" + line
        return [b.removesuffix("\n...") for b in blocks]


_LOG_RECORD = re.compile(r"^(\d\d:\d\d:\d\d \w+ |\{)")  # text (HH:MM:SS level ...) or JSON
_LOG_ERROR = re.compile(r'^(\d\d:\d\d:\d\d (error|critical) |\{.*"level": ?"(error|critical)")')


def _supports_handshake_timeout() -> bool:
    try:
        out = subprocess.run(
            [stack.PYTHON, "-m", "roomcast.cli", "gateway", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--handshake-timeout-s" in out


async def _healthz(port: int) -> str | None:
    """None if GET /healthz answers 200, else why not."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(4096), 5)
        finally:
            writer.close()
    except (OSError, TimeoutError) as exc:
        return f"/healthz: {type(exc).__name__} {exc}"
    if not data.startswith(b"HTTP/1.1 200"):
        return f"/healthz answered {data[:80]!r}"
    return None


class Fuzzer:
    def __init__(self, opts: Options, nats_url: str, state_dir: Path, progress: Progress) -> None:
        self.o = opts
        self.nats_url = nats_url
        self.logs = state_dir / "logs"
        self.progress = progress
        self.prefix = stack.run_id()
        self.rooms = [f"fz{i}" for i in range(opts.rooms)]
        ht = opts.handshake_timeout_s
        self.stall_check = any(not CATEGORIES[c] for c in opts.categories) and ht > 0
        self.stall_enabled = self.stall_check
        self.has_ht = self.stall_check and _supports_handshake_timeout()
        extra = tuple(opts.gateway_args)
        if self.has_ht:
            extra += ("--handshake-timeout-s", f"{ht:g}")
        self.gw = _Gateway(self.logs, nats_url, self.prefix, extra)
        self.viewers: list[GoodViewer] = []
        self.blob_no = 0
        self.failures: list[Failure] = []
        self.by_category: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.cases_run = 0
        self.blobs_checked = 0
        self.fuzz_seconds = 0.0
        self.stalls: list[tuple[socket.socket, float, str]] = []
        self.stall_results: dict[str, str] = {}
        self.fd_base = self.rss_base = 0
        self.fds_before = self.rss_before = 0
        self.fd_peak = self.rss_peak = 0
        self.source_no = 0
        self.nc: Any = None

    # -- set-up --

    async def _start(self) -> None:
        self.gw.start()
        port = self.gw.port
        loop = asyncio.get_running_loop()
        # Good viewers: one per room in turn, and the last one in every room (it also churns).
        self.viewers = []
        for i in range(self.o.good_viewers):
            rooms = (
                self.rooms if i == self.o.good_viewers - 1 else [self.rooms[i % len(self.rooms)]]
            )
            v = GoodViewer(port, rooms)
            await loop.create_connection(lambda v=v: v, "127.0.0.1", port)  # type: ignore[misc]
            self.viewers.append(v)
        for v in self.viewers:
            if not await v.wait_acks("joined", len(v.rooms), 15):
                raise RuntimeError(f"a good viewer could not join: {v.lost or 'no joined'}")
            v.first = self.blob_no + 1
        self._open_stalls(port)
        self.gen = Generator(self.o.seed, self.o.categories, self.rooms, port)

    def _open_stalls(self, port: int) -> None:
        """Handshakes that never finish: the gateway must close them (--handshake-timeout-s)."""
        for s, _, _ in self.stalls:
            s.close()
        self.stalls = []
        self.stall_results = {}
        if not self.stall_check:
            return
        req = f"GET /ws?room={self.rooms[0]} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        for what, data in [
            ("connected, nothing sent", b""),
            ("half a request line", b"GET /ws?ro"),
            ("request line only", f"GET /ws?room={self.rooms[0]} HTTP/1.1\r\n".encode()),
            ("headers without the blank line", req.encode()),
        ]:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if data:
                s.sendall(data)
            s.setblocking(False)
            self.stalls.append((s, time.monotonic(), what))

    def _check_stalls(self, final: bool) -> list[str]:
        """Problems with the stalled handshakes once their deadline has passed."""
        if not self.stalls:
            return []
        deadline = self.o.handshake_timeout_s + 2.0
        for s, opened, what in self.stalls:
            if what in self.stall_results:
                continue
            try:
                while data := s.recv(65536):
                    del data
                self.stall_results[what] = f"closed after {time.monotonic() - opened:.1f} s"
            except BlockingIOError:
                pass
            except OSError:
                self.stall_results[what] = f"reset after {time.monotonic() - opened:.1f} s"
        if len(self.stall_results) == len(self.stalls):
            return []
        oldest = min(opened for _, opened, _ in self.stalls)
        if time.monotonic() - oldest < deadline and not final:
            return []
        open_ = [what for _, _, what in self.stalls if what not in self.stall_results]
        for sock, _, what in self.stalls:  # reported once: ours are closed now
            if what not in self.stall_results:
                self.stall_results[what] = "still open: closed by the fuzzer"
                sock.close()
        note = "" if self.has_ht else " (this gateway has no --handshake-timeout-s)"
        return [
            f"handshakes left unfinished still open after {deadline:.0f} s{note}: "
            + "; ".join(open_)
        ]

    async def _stop_gateway(self) -> None:
        for v in self.viewers:
            v.close()
        for s, _, _ in self.stalls:
            s.close()
        self.stalls = []
        await asyncio.sleep(0)
        self.gw.stop()

    async def _restart(self) -> None:
        await self._stop_gateway()
        await self._start()
        await self._baseline()

    async def _baseline(self) -> None:
        """Warm the new gateway with one round of valid traffic, then take fds and RSS."""
        warm = Generator(self.o.seed ^ 0x5EED, VALID, self.rooms, self.gw.port)
        await self._run_cases([warm.case(i) for i in range(min(self.o.batch, 100))], count=False)
        await self._blob_round()
        await asyncio.sleep(0.2)
        self.fd_base, self.rss_base = self.gw.fds(), self.gw.rss()
        if not self.fds_before:
            self.fds_before, self.rss_before = self.fd_base, self.rss_base

    # -- cases --

    def _source(self) -> str:
        self.source_no += 1
        i = self.source_no
        return f"127.9.{(i // 250) % 250}.{1 + i % 250}"

    async def _run_cases(self, cases: list[Case], count: bool = True) -> list[tuple[Case, str]]:
        sem = asyncio.Semaphore(self.o.concurrency)
        port = self.gw.port
        errors: list[tuple[Case, str]] = []

        async def one(case: Case) -> None:
            async with sem:
                try:
                    outcome = await asyncio.wait_for(
                        play(case, port, self._source(), self.o.answer_timeout_s),
                        self.o.answer_timeout_s + 10,
                    )
                except CaseError as exc:
                    errors.append((case, str(exc)))
                    outcome = "valid case not served"
                except TimeoutError:
                    outcome = "case timed out"
                    if case.expect is not None:
                        errors.append((case, "case timed out"))
                if count:
                    self.outcomes[outcome] += 1

        await asyncio.gather(*(one(c) for c in cases))
        if count:
            self.cases_run += len(cases)
            for c in cases:
                self.by_category[c.category] += 1
                self.by_kind[f"{c.category}/{c.kind}"] += 1
        return errors

    # -- checks --

    async def _blob_round(self, timeout: float | None = None) -> list[str]:
        """Publish blob n to every room; every good viewer must have 1..n of its epoch, in order."""
        churner = self.viewers[-1]
        if not await churner.churn(self.o.answer_timeout_s):
            return [f"room *: the churning good viewer got no left/joined ({churner.lost})"]
        self.blob_no += 1
        n = self.blob_no
        for room in self.rooms:
            blob = encode_blob(room, 0, [n], [_dumps({"n": n})])
            await self.nc.publish(f"{self.prefix}.{room}", blob)
        await self.nc.flush()
        deadline = time.monotonic() + (timeout or self.o.answer_timeout_s)
        while time.monotonic() < deadline:
            if all(
                v.lost or all(len(v.offsets[r]) >= n - v.first + 1 for r in v.rooms)
                for v in self.viewers
            ):
                break
            await asyncio.sleep(0.002)
        problems = []
        bad_rooms: dict[str, list[str]] = {}
        for i, v in enumerate(self.viewers):
            want = list(range(v.first, n + 1))
            for room in v.rooms:
                got = v.offsets[room]
                self.blobs_checked += 1
                if got == want:
                    continue
                last = got[-1] if got else None
                what = (
                    f"viewer {i}: got {len(got)} of {len(want)} blobs, last {last}"
                    if got == want[: len(got)]
                    else f"viewer {i}: blobs out of order or repeated: {got[-10:]}"
                )
                if v.lost:
                    what += f" ({v.lost})"
                bad_rooms.setdefault(room, []).append(what)
        for room, whats in bad_rooms.items():
            problems.append(f"room {room}: blob {n} missed: " + "; ".join(whats))
        return problems

    async def _check(
        self, final: bool = False, stalls: bool = True, blob_timeout: float | None = None
    ) -> tuple[str, list[str], set[str]]:
        """(check name, problems, rooms concerned); ("", [], set()) when all is well."""
        if not self.gw.alive():
            return "gateway alive", [f"the gateway exited: {self.gw.log_tail(10)}"], set()
        problems = await self._blob_round(blob_timeout)
        if problems:
            rooms = {p.split()[1].rstrip(":") for p in problems}
            return "good viewers get every blob", problems, rooms
        why = await _healthz(self.gw.port)
        if why:
            return "/healthz", [why], set()
        errors = self.gw.new_errors()
        if errors:
            return (
                "no errors logged",
                [f"{len(errors)} error records, the first:\n" + errors[0]],
                set(),
            )
        fds, rss = self.gw.fds(), self.gw.rss()
        self.fd_peak, self.rss_peak = max(self.fd_peak, fds), max(self.rss_peak, rss)
        fd_limit = self.fd_base + (2 if final else self.o.concurrency + self.o.fd_slack)
        if fds > fd_limit:  # connections may still be closing: wait out the close timeout
            deadline = time.monotonic() + 7.0
            while time.monotonic() < deadline and (fds := self.gw.fds()) > fd_limit:  # noqa: ASYNC110 (polls another process)
                await asyncio.sleep(0.1)
            if fds > fd_limit:
                return (
                    "descriptors flat",
                    [f"{fds} open descriptors, baseline {self.fd_base}, limit {fd_limit}"],
                    set(),
                )
        if rss > self.rss_base + self.o.rss_slack_mib * 2**20:
            return (
                "memory flat",
                [
                    f"RSS {rss / 2**20:.1f} MiB, baseline {self.rss_base / 2**20:.1f} MiB, "
                    f"slack {self.o.rss_slack_mib:g} MiB"
                ],
                set(),
            )
        stalled = self._check_stalls(final) if stalls else []
        if stalled:
            return "handshake timeout", stalled, set()
        return "", [], set()

    # -- failures --

    async def _failed(
        self,
        batch_no: int,
        check: str,
        problems: list[str],
        rooms: set[str],
        cases: list[Case],
        final: bool = False,
    ) -> None:
        log_tail = self.gw.log_tail(25)
        suspects = [c for c in cases if not rooms or c.rooms & rooms] or cases
        if check == "handshake timeout":  # the stalled connections are the fuzzer's own
            suspects = []
        failure = Failure(batch_no, check, " | ".join(problems), suspects, log_tail=log_tail)
        self.failures.append(failure)
        self.progress(f"[fuzz] batch {batch_no}: {check} FAILED: {failure.detail[:160]}")
        if check == "handshake timeout":  # reported once; the gateway is otherwise fine
            self.stall_check = False
            return
        if final:
            return
        await self._restart()
        if self.o.triage and check not in ("handshake timeout", "memory flat"):
            await self._triage(failure)

    async def _replay_one(self, case: Case) -> tuple[str, list[str]]:
        errors = await self._run_cases([case], count=False)
        await asyncio.sleep(0.05)  # let the gateway see the close
        if errors:
            return "valid cases served", [e for _, e in errors]
        # One case on an idle gateway: a blob that is not there after 1.5 s is not coming (a
        # blob crosses NATS and the gateway in about a millisecond here).
        check, problems, _ = await self._check(stalls=False, blob_timeout=1.5)
        return check, problems

    async def _triage(self, failure: Failure) -> None:
        """Replay the suspects one at a time on a healthy gateway until one breaks it, and
        confirm it alone on a fresh gateway. A case that breaks a different check than the
        batch did is noted (`also`) and the search goes on, at most three times."""
        started = time.monotonic()
        for i, case in enumerate(failure.cases):
            if time.monotonic() - started > 120:
                failure.culprit_note = (
                    failure.culprit_note
                    or f"triage gave up after {i} of {len(failure.cases)} cases"
                )
                return
            self.progress(f"[fuzz] triage: replaying suspect {i + 1}/{len(failure.cases)}")
            check, _ = await self._replay_one(case)
            if not check:
                continue
            await self._restart()
            check, problems = await self._replay_one(case)
            if not check:
                note = (
                    f"fails after suspects {[c.index for c in failure.cases[:i]]} but not alone "
                    "on a fresh gateway: replay those with it"
                )
            else:
                note = f"alone on a fresh gateway it fails '{check}': " + " | ".join(problems)[:600]
                failure.log_tail = self.gw.log_tail(25) or failure.log_tail
                await self._restart()
            if check == failure.check or len(failure.also) >= 3 or i == len(failure.cases) - 1:
                failure.culprit, failure.culprit_note = case, note
                return
            failure.also.append((case, note))
        failure.culprit_note = (
            f"none of the {len(failure.cases)} suspects fails alone: the batch's interleaving "
            "matters; replay the whole batch"
        )
        if failure.also:  # the closest we have
            failure.culprit, failure.culprit_note = failure.also.pop()

    # -- main --

    async def run(self) -> dict[str, Any]:
        self.nc = await nats.connect(self.nats_url)
        t_start = time.monotonic()
        try:
            await self._start()
            await self._baseline()
            indexes = list(self.o.replay) if self.o.replay is not None else None
            total = len(indexes) if indexes is not None else self.o.cases
            size = 1 if indexes is not None else self.o.batch
            done = batch_no = 0
            deadline = t_start + self.o.max_seconds
            while done < total and time.monotonic() < deadline:
                if len(self.failures) >= self.o.max_failures:
                    break
                batch_no += 1
                ids = (
                    indexes[done : done + size] if indexes else range(done, min(done + size, total))
                )
                cases = [self.gen.case(i) for i in ids]
                t0 = time.monotonic()
                errors = await self._run_cases(cases)
                check, problems, rooms = await self._check()
                self.fuzz_seconds += time.monotonic() - t0
                done += len(cases)
                if errors:
                    await self._failed(
                        batch_no,
                        "valid cases served",
                        [f"case {c.index}: {e}" for c, e in errors[:5]],
                        set(),
                        [c for c, _ in errors],
                    )
                elif check:
                    await self._failed(batch_no, check, problems, rooms, cases)
                rate = done / max(self.fuzz_seconds, 1e-9)
                self.progress(
                    f"[fuzz] {done:,}/{total:,} cases, {rate:,.0f}/s, {len(self.failures)} failures"
                )
            # the end: stalled handshakes past their deadline, descriptors back to the baseline
            pending = [x for x in self.stalls if x[2] not in self.stall_results]
            if pending:
                wait = (
                    min(s[1] for s in pending) + self.o.handshake_timeout_s + 2.0 - time.monotonic()
                )
                if wait > 0:
                    self.progress(
                        f"[fuzz] waiting {wait:.1f} s for the stalled handshakes' deadline"
                    )
                    await asyncio.sleep(wait)
            await asyncio.sleep(0.3)
            check, problems, rooms = await self._check(final=True)
            fds_after, rss_after = self.gw.fds(), self.gw.rss()
            fd_base, rss_base = self.fd_base, self.rss_base
            if check:
                await self._failed(batch_no + 1, check, problems, rooms, [], final=True)
        finally:
            await self._stop_gateway()
            await self.nc.close()
        elapsed = time.monotonic() - t_start
        return {
            "seed": self.o.seed,
            "categories": self.o.categories,
            "cases": self.cases_run,
            "cases_per_s": round(self.cases_run / max(self.fuzz_seconds, 1e-9), 1),
            "elapsed_s": round(elapsed, 1),
            "concurrency": self.o.concurrency,
            "batch": self.o.batch,
            "good_viewers": self.o.good_viewers,
            "rooms": self.o.rooms,
            "by_category": dict(self.by_category),
            "by_kind": dict(sorted(self.by_kind.items())),
            "outcomes": dict(self.outcomes),
            "blobs_published": self.blob_no * len(self.rooms),
            "blobs_checked": self.blobs_checked,
            "failures": len(self.failures),
            "failure_list": [f.to_json(self.o.seed, self.o.categories) for f in self.failures],
            "gateway_starts": self.gw.starts,
            "handshake_timeout_s": self.o.handshake_timeout_s if self.stall_enabled else None,
            "gateway_has_handshake_timeout": self.has_ht,
            "stalled_handshakes": self.stall_results,
            "fds_before": self.fds_before,
            "fds_after": fds_after,
            "fds_baseline_last": fd_base,
            "fds_peak": self.fd_peak,
            "rss_mib_before": round(self.rss_before / 2**20, 1),
            "rss_mib_after": round(rss_after / 2**20, 1),
            "rss_mib_baseline_last": round(rss_base / 2**20, 1),
            "rss_mib_peak": round(self.rss_peak / 2**20, 1),
        }


def run(opts: Options, nats_url: str, state_dir: Path, progress: Progress) -> dict[str, Any]:
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    fuzzer = Fuzzer(opts, nats_url, state_dir, progress)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(fuzzer.run())
