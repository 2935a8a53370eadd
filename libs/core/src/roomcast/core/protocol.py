"""The viewer protocol: what travels on `/ws` besides blobs, and the close codes.

Client -> server (JSON text messages):
    {"type": "join", "room": "lobby"}
    {"type": "join", "room": "lobby", "since": "EPOCH:SEQ"}  (resume after that position)
    {"type": "leave", "room": "lobby"}
    {"type": "ping"}                      (an app-level ping; WebSocket pings work too)
    {"type": "auth", "token": "<JWT>"}    (first message, when the token is not in the URL)
    {"type": "refresh", "token": "<JWT>"} (a new token before the current one expires)

Server -> client: blobs exactly as ingest built them (`{"type":"blob",...}`, see `blob`), and
    {"type": "joined", "room": "lobby"}
    {"type": "joined", "room": "lobby", "recovered": true}   (a join with `since`)
    {"type": "joined", "room": "lobby", "recovered": false, "oldest": "EPOCH:SEQ" | null}
    {"type": "reset", "room": "lobby", "oldest": "EPOCH:SEQ" | null}
    {"type": "count", "room": "lobby", "viewers": 1234}
    {"type": "left", "room": "lobby"}
    {"type": "pong"}
    {"type": "authorized", "exp": 1767225600}
    {"type": "error", "code": "bad_room", "message": "..."}
"""

from __future__ import annotations

import enum
from typing import Literal, NamedTuple

import msgspec

from roomcast.core.errors import ProtocolError, RoomNameError
from roomcast.core.rooms import check_room


class CloseCode(enum.IntEnum):
    """Close codes roomcast sends, and whether a client should reconnect and resume."""

    NORMAL = 1000
    GOING_AWAY = 1001
    INVALID_UTF8 = 1007  # a text message that is not UTF-8
    BAD_MESSAGE = 1008  # a client message that breaks the protocol
    TOO_BIG = 1009  # a client message over the size limit
    INTERNAL = 1011
    DRAINING = 1012  # the gateway is restarting: reconnect (elsewhere) and resume
    UNAUTHORIZED = 4001  # no valid token (in time): get a token, then reconnect
    TOKEN_EXPIRED = 4002  # the token expired unrefreshed: reconnect with a fresh token, resume
    TOO_MANY_ROOMS = 4003
    SLOW_VIEWER = 4008  # fell behind the fan-out: reconnect and resume from the last position
    GATEWAY_FULL = 4013  # worker at its viewer limit: try again later, with backoff

    @property
    def resumable(self) -> bool:
        """True if the client should reconnect (with backoff) and resume where it was."""
        return self in _RESUMABLE


_RESUMABLE = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL,
        CloseCode.DRAINING,
        CloseCode.SLOW_VIEWER,
        CloseCode.GATEWAY_FULL,
    }
)


class Position(NamedTuple):
    """A room position: the `seq` of the last blob a viewer has, in history `epoch`."""

    epoch: int
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.seq}"


def parse_position(text: str) -> Position:
    """`EPOCH:SEQ` (two non-negative integers) -> Position; ProtocolError if it is not one."""
    epoch, sep, seq = text.partition(":")
    if not sep or not (epoch.isdigit() and seq.isdigit() and epoch.isascii() and seq.isascii()):
        raise ProtocolError("bad_message", f"since must be EPOCH:SEQ, got {text[:40]!r}")
    if len(epoch) > 19 or len(seq) > 19:
        raise ProtocolError("bad_message", "since: number too large")
    return Position(int(epoch), int(seq))


def parse_since_param(value: str) -> tuple[str, Position]:
    """A URL `since` parameter, `ROOM:EPOCH:SEQ` -> (room, position); ProtocolError if bad.

    Room names may hold `:` but the last two fields are numbers, so it splits from the right."""
    room, sep, _ = value.rpartition(":")
    room, sep2, _ = room.rpartition(":")
    if not sep or not sep2 or not room:
        raise ProtocolError("bad_message", f"since must be ROOM:EPOCH:SEQ, got {value[:80]!r}")
    try:
        check_room(room)
    except RoomNameError as exc:
        raise ProtocolError("bad_room", str(exc)) from None
    return room, parse_position(value[len(room) + 1 :])


class Join(msgspec.Struct, tag="join", tag_field="type", frozen=True):
    room: str
    since: str | None = None  # EPOCH:SEQ: resume after that position

    @property
    def position(self) -> Position | None:
        return None if self.since is None else parse_position(self.since)


class Leave(msgspec.Struct, tag="leave", tag_field="type", frozen=True):
    room: str


class Ping(msgspec.Struct, tag="ping", tag_field="type", frozen=True):
    pass


class Auth(msgspec.Struct, tag="auth", tag_field="type", frozen=True):
    token: str


class Refresh(msgspec.Struct, tag="refresh", tag_field="type", frozen=True):
    token: str


ClientMessage = Join | Leave | Ping | Auth | Refresh
_client_decoder: msgspec.json.Decoder[ClientMessage] = msgspec.json.Decoder(ClientMessage)


def parse_client_message(data: bytes | str) -> ClientMessage:
    """Decode one client message, checking room names; raise ProtocolError if it is bad."""
    try:
        msg: ClientMessage = _client_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError("bad_message", f"not a roomcast message: {exc}") from None
    if isinstance(msg, Join | Leave):
        try:
            check_room(msg.room)
        except RoomNameError as exc:
            raise ProtocolError("bad_room", str(exc)) from None
        if isinstance(msg, Join) and msg.since is not None:
            parse_position(msg.since)
    return msg


class _Ack(msgspec.Struct, tag_field="type", frozen=True):
    room: str


class Joined(_Ack, tag="joined", frozen=True, omit_defaults=True):
    """`recovered` is only there for a join with `since`; `oldest` only when it is false.
    `position`: the room's newest position when a plain join was confirmed (SEQ 0: no blob
    yet), to resume from if the connection drops before the first blob."""

    recovered: bool | None = None
    oldest: str | msgspec.UnsetType | None = msgspec.UNSET  # EPOCH:SEQ or null
    position: str | None = None


class Reset(_Ack, tag="reset", frozen=True):
    """Some blobs of the room could not be delivered: reload the room's state."""

    oldest: str | None = None


class Count(_Ack, tag="count", frozen=True):
    """The room's viewers, cluster-wide."""

    viewers: int


class Left(_Ack, tag="left", frozen=True):
    pass


class Pong(msgspec.Struct, tag="pong", tag_field="type", frozen=True):
    pass


class Authorized(msgspec.Struct, tag="authorized", tag_field="type", frozen=True):
    exp: int  # the token's expiry (unix seconds): send a `refresh` before it


class Error(msgspec.Struct, tag="error", tag_field="type", frozen=True):
    code: str
    message: str


ServerMessage = Joined | Left | Reset | Count | Pong | Authorized | Error
_encoder = msgspec.json.Encoder()
_server_decoder: msgspec.json.Decoder[ServerMessage] = msgspec.json.Decoder(ServerMessage)


def decode_server_message(data: bytes | str) -> ServerMessage:
    """Decode any server message but a blob (clients; see `blob.decode_blob` for blobs)."""
    return _server_decoder.decode(data)


def encode_server_message(msg: ServerMessage) -> bytes:
    return _encoder.encode(msg)


ServerKind = Literal["blob", "joined", "left", "reset", "count", "pong", "authorized", "error"]


class _Kind(msgspec.Struct):
    type: str


_kind_decoder = msgspec.json.Decoder(_Kind)


def message_type(data: bytes | str) -> str:
    """The `type` of any server message (clients dispatch on it)."""
    return _kind_decoder.decode(data).type
