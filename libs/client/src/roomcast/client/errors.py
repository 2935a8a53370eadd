"""How a viewer's connection can end for good, and failed attempts in a few words."""

from __future__ import annotations

import socket

from websockets.exceptions import InvalidStatus

from roomcast.core.errors import RoomcastError
from roomcast.core.protocol import CloseCode

# RFC 6455 codes that mean the client broke the protocol: coming back would break it again.
_CLIENT_FAULTS = frozenset({1002, 1003, 1007, 1008, 1009, 1010})


class ViewerClosed(RoomcastError):
    """The gateway closed the connection with a code that says not to come back as it is."""

    def __init__(self, code: int | None, reason: str, advice: str = "") -> None:
        text = f"gateway closed the connection: code {code} {reason!r}"
        super().__init__(f"{text}; {advice}" if advice else text)
        self.code = code
        self.reason = reason


class TokenRejected(ViewerClosed):
    """4001 (no valid token) or 4002 (the token expired): come back with a fresh token.

    Resume where the viewer was by passing the old subscription's `positions` as `since`."""


def resumable(code: int | None) -> bool:
    """True if a connection that ended with `code` should be reconnected and resumed.

    None (the connection was lost without a close frame) is resumable; roomcast's own codes
    follow `CloseCode.resumable`; other codes are, unless they say the client is at fault."""
    if code is None:
        return True
    try:
        return CloseCode(code).resumable
    except ValueError:
        return 1000 < code < 4000 and code not in _CLIENT_FAULTS


def closed_for_good(code: int | None, reason: str) -> ViewerClosed:
    """The exception that ends a subscription closed with a code that is not `resumable`."""
    if code in (CloseCode.UNAUTHORIZED, CloseCode.TOKEN_EXPIRED):
        return TokenRejected(
            code, reason, "subscribe again with a fresh token and since=<the old positions>"
        )
    return ViewerClosed(code, reason, "not resumable: fix the client before reconnecting")


def describe_connect_error(exc: BaseException) -> str:
    """A failed connection attempt in a few words: "connection refused", "HTTP 503", ..."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, InvalidStatus):
        return f"gateway answered HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__
