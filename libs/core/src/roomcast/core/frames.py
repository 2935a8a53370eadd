"""WebSocket frames built once per blob, written as the same bytes to every viewer.

Server-to-client frames are never masked, so a text frame is a 2-, 4- or 10-byte header followed
by the payload (RFC 6455 section 5.2). With permessage-deflate (RFC 7692) negotiated with
`server_no_context_takeover`, a compressed message does not depend on the connection: `Deflater`
compresses a blob once and the same frame (RSV1 set) goes to every viewer that negotiated it.
"""

from __future__ import annotations

import struct
import zlib

OP_TEXT = 0x1
OP_BINARY = 0x2
_FIN = 0x80
_RSV1 = 0x40  # permessage-deflate: this message is compressed
_FLUSH_TAIL = b"\x00\x00\xff\xff"  # the empty stored block that ends every flush

DEFLATE_WINDOW_BITS = 12
"""Window of the shared compressor (4 KiB). A client that asks for a smaller server window gets
plain frames. 12 bits compress merged chat blobs as well as 15 do, and it is what Python
websockets clients ask for by default."""


def frame(payload: bytes, opcode: int = OP_TEXT, rsv1: bool = False) -> bytes:
    """One complete, unmasked, final WebSocket frame carrying `payload`."""
    n = len(payload)
    first = _FIN | opcode | (_RSV1 if rsv1 else 0)
    if n < 126:
        header = bytes((first, n))
    elif n < 65536:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def text_frame(payload: bytes) -> bytes:
    """A text frame; `payload` must already be UTF-8 (blobs are JSON)."""
    return frame(payload, OP_TEXT)


class Deflater:
    """Compresses messages one by one for permessage-deflate without context takeover.

    One zlib stream is reused (making one costs ~100 us, more than compressing a 5 KB blob at
    level 1): `Z_FULL_FLUSH` after each message resets its history, so each output stands alone
    and decodes the same on every connection. Not thread-safe (one per worker, as everything
    else there).
    """

    __slots__ = ("_compressor", "level", "min_bytes")

    def __init__(self, level: int = 1, min_bytes: int = 256) -> None:
        self.level = level
        self.min_bytes = min_bytes
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -DEFLATE_WINDOW_BITS)

    def frame(self, payload: bytes) -> bytes | None:
        """The compressed text frame, or None when it would not be smaller (or is too short)."""
        if len(payload) < self.min_bytes:
            return None
        c = self._compressor
        data = c.compress(payload) + c.flush(zlib.Z_FULL_FLUSH)
        if data[-4:] != _FLUSH_TAIL:  # pragma: no cover (zlib always ends a flush so)
            raise AssertionError("deflate flush without its empty stored block")
        data = data[:-4]
        if len(data) >= len(payload):
            return None
        return frame(data, OP_TEXT, rsv1=True)
