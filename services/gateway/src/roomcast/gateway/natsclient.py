"""nats-py's client, with a short way in for a gateway's room messages.

A gateway worker's Python per blob was mostly nats-py's, not its own: every message was matched by
a regular expression, cut out of the read buffer on its own (`del buf[:n]`, a copy of the rest),
built into a `Msg`, put on its subscription's queue, and handed to the callback by that
subscription's task, as a coroutine. A blob goes to only its room's viewers (50 per worker in the
fan-out bench's 100 rooms), so that cost is paid per few dozen frames.

Here, a subscription made with `subscribe_direct` (a plain function of `(data, headers)`; its
callback carries it as a `direct` attribute) gets its messages straight from the parser, in the
order they arrived:

- `Parser` reads complete `MSG` and `HMSG` lines at the head of the buffer itself and cuts the
  buffer once per read; anything else (`PING`, `INFO`, `-ERR`, a message not all here yet, a line
  it does not expect) is left to nats-py's parser, which also reports protocol errors.
- `Client._process_msg` (what nats-py's parser calls) takes the same short way for such
  subscriptions, so a message that arrives in pieces is handed over the same way.

Everything else (requests, history reads, counts) takes nats-py's own path. The callback itself
delivers the same message through nats-py's queue, so if a release of nats-py stopped calling these
methods the blobs would still arrive, more slowly: tests/gateway/test_natsclient.py checks that the
short way is taken, and that it parses what nats-py's parser does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol import parser as nats_parser

Direct = Callable[[bytes, "dict[str, str] | None"], None]
"""A room's messages: (payload, headers parsed as nats-py does, or None)."""

_MSG = b"MSG "
_HMSG = b"HMSG "
_CRLF = b"\r\n"


def _direct(sub: Any) -> Direct | None:
    return getattr(sub._cb, "direct", None) if sub is not None else None


class Client(NatsClient):
    """A nats-py client whose `direct` subscriptions skip the queue and the task (see above)."""

    def __init__(self) -> None:
        super().__init__()
        self._ps = Parser(self)
        self.direct_msgs = 0
        """Messages handed over the short way (the tests check that it is taken)."""

    async def subscribe_direct(self, subject: str, direct: Direct, **kw: Any) -> Subscription:
        """Subscribe `subject` with every message handed to `direct` as it is parsed."""

        async def cb(msg: Msg) -> None:  # nats-py's own path, should it stop calling ours
            direct(msg.data, msg.headers)

        cb.direct = direct  # type: ignore[attr-defined]  # the mark the short way looks for
        return await self.subscribe(subject, cb=cb, **kw)

    def _hand(self, sub: Any, direct: Direct, data: bytes, hdr: dict[str, str] | None) -> None:
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        self.direct_msgs += 1
        sub._received += 1
        direct(data, hdr)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        sub = self._subs.get(sid)
        direct = _direct(sub)
        if direct is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]  # (its parser passes None too)
            return
        hdr = await self._process_headers(headers) if headers else None
        try:
            self._hand(sub, direct, data, hdr)
        except Exception as exc:  # as nats-py treats a failing callback: reported, not fatal
            await self._error_cb(exc)


class Parser(nats_parser.Parser):
    """nats-py's protocol parser, reading complete MSG and HMSG itself (see above)."""

    nc: Client

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        nc = self.nc
        pos = 0
        end = len(buf)
        try:
            while self.state == nats_parser.AWAITING_CONTROL_LINE:
                if buf.startswith(_MSG, pos):
                    hmsg = False
                elif buf.startswith(_HMSG, pos):
                    hmsg = True
                else:
                    break
                eol = buf.find(_CRLF, pos, pos + nats_parser.MAX_CONTROL_LINE_SIZE)
                if eol < 0:
                    if end - pos < nats_parser.MAX_CONTROL_LINE_SIZE:
                        return  # the rest of the line is still on its way
                    break
                # MSG <subject> <sid> [reply-to] <#bytes>
                # HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
                args = buf[pos + (5 if hmsg else 4) : eol].split()
                n = len(args) - hmsg
                if n != 3 and n != 4:
                    break
                if not (args[1].isdigit() and args[-1].isdigit()):
                    break
                sid = int(args[1])
                size = int(args[-1])
                hsize = 0
                if hmsg:
                    if not args[-2].isdigit():
                        break
                    hsize = int(args[-2])
                if not 0 <= hsize <= size:
                    break
                start = eol + 2
                if end < start + size + 2:
                    return  # the payload is still on its way: read again from this line
                pos = start + size + 2
                headers = bytes(buf[start : start + hsize]) if hmsg else None
                payload = bytes(buf[start + hsize : start + size])
                sub = nc._subs.get(sid)
                direct = _direct(sub)
                if direct is None:
                    reply = bytes(args[2]) if n == 4 else b""
                    await nc._process_msg(sid, bytes(args[0]), reply, payload, headers)
                else:
                    hdr = await nc._process_headers(headers) if headers else None
                    try:
                        nc._hand(sub, direct, payload, hdr)
                    except Exception as exc:  # as nats-py treats a failing callback
                        await nc._error_cb(exc)
                if self.buf is not buf:  # reset meanwhile (a reconnect): what is left is stale
                    return
        finally:
            if pos:
                del buf[:pos]
        # Not a message this parser reads (PING, INFO, -ERR, ...) or not one it expects: nats-py's
        # parser takes it from here, to the end of what has arrived.
        if buf:
            await super().parse()
