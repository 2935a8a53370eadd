"""permessage-deflate (RFC 7692) for shared frames: compressed once per blob, sent to everyone.

The gateway always answers with `server_no_context_takeover`, so a message's compressed bytes never
depend on the connection: `roomcast.core.frames.Deflater` compresses each blob once per worker and
the same frame goes to every viewer that negotiated the extension. Nothing is compressed per
connection (websockets' own encoder would cost ~50 KiB per connection): protocol replies go
uncompressed (RSV1 clear), which the RFC allows. Client messages are inflated with a bounded output
(a bomb closes with 1009), by a decoder made only when a compressed message arrives, so an idle
viewer holds no zlib state.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from websockets.exceptions import NegotiationError, PayloadTooBig, ProtocolError
from websockets.extensions.base import Extension, ServerExtensionFactory
from websockets.frames import CONT, CTRL_OPCODES, Frame
from websockets.typing import ExtensionName, ExtensionParameter

from roomcast.core.frames import DEFLATE_WINDOW_BITS

NAME = ExtensionName("permessage-deflate")
_TAIL = b"\x00\x00\xff\xff"


class SharedDeflate(Extension):
    """One connection's side of the extension: decode only, a zlib decoder only while needed."""

    name = NAME
    __slots__ = ("decoder", "in_message", "reset_per_message")

    def __init__(self, reset_per_message: bool) -> None:
        self.reset_per_message = reset_per_message  # the client agreed to no context takeover
        self.decoder: zlib._Decompress | None = None
        self.in_message = False  # inside a fragmented compressed message

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.opcode in CTRL_OPCODES:
            return frame
        if frame.opcode is CONT:
            if not self.in_message:
                return frame
            if frame.rsv1:
                raise ProtocolError("RSV1 bit set in continuation frame")
        else:
            if not frame.rsv1:
                return frame
            if self.reset_per_message or self.decoder is None:
                self.decoder = zlib.decompressobj(wbits=-15)  # any window the client used
        self.in_message = not frame.fin
        decoder = self.decoder
        assert decoder is not None
        data = bytes(frame.data) + _TAIL if frame.fin else frame.data
        try:
            out = decoder.decompress(data, 0 if max_size is None else max_size)
            if decoder.unconsumed_tail:
                raise PayloadTooBig(None, max_size)  # a bomb: 1009, nothing more inflated
        except zlib.error as exc:
            raise ProtocolError("decompression failed") from exc
        if frame.fin and self.reset_per_message:
            self.decoder = None
        return Frame(frame.opcode, out, frame.fin, False, frame.rsv2, frame.rsv3)

    def encode(self, frame: Frame) -> Frame:
        return frame  # replies go uncompressed; blobs are compressed once, elsewhere


class SharedDeflateFactory(ServerExtensionFactory):
    """Accepts an offer the shared frames can serve; declines one that needs a smaller window."""

    name = NAME

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], Extension]:
        if any(ext.name == NAME for ext in accepted_extensions):
            raise NegotiationError("skipped duplicate permessage-deflate")
        seen: set[str] = set()
        client_nct = False
        response: list[ExtensionParameter] = [("server_no_context_takeover", None)]
        for name, value in params:
            if name in seen:
                raise NegotiationError(f"duplicate parameter {name}")
            seen.add(name)
            if name == "server_no_context_takeover" and value is None:
                continue
            if name == "client_no_context_takeover" and value is None:
                client_nct = True
                response.append((name, None))
            elif name == "server_max_window_bits" and _bits(value) is not None:
                if _bits(value) < DEFLATE_WINDOW_BITS:  # type: ignore[operator]
                    raise NegotiationError(f"server window {value} < {DEFLATE_WINDOW_BITS} bits")
                response.append((name, value))
            elif name == "client_max_window_bits" and (value is None or _bits(value)):
                if value is not None:
                    response.append((name, value))  # the client limits its own window
            else:
                raise NegotiationError(f"unsupported parameter {name}={value}")
        return response, SharedDeflate(reset_per_message=client_nct)


def _bits(value: str | None) -> int | None:
    if value is not None and value.isdigit() and 8 <= int(value) <= 15 and value[0] != "0":
        return int(value)
    return None
