"""WebSocket frames built once per blob, written as the same bytes to every viewer.

Server-to-client frames are never masked and roomcast negotiates no extensions, so a text
frame is a 2-, 4- or 10-byte header followed by the payload (RFC 6455 section 5.2).
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
_FIN = 0x80


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One complete, unmasked, final WebSocket frame carrying `payload`."""
    n = len(payload)
    first = _FIN | opcode
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
