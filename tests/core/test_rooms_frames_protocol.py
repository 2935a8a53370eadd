"""Room names, subjects, frames and the client protocol."""

from __future__ import annotations

import re

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from roomcast.core import frames
from roomcast.core.blob import check_event
from roomcast.core.errors import EventError, ProtocolError, RoomNameError
from roomcast.core.protocol import (
    CloseCode,
    Join,
    Joined,
    Leave,
    Ping,
    encode_server_message,
    message_type,
    parse_client_message,
)
from roomcast.core.protocol import Error as ErrorMsg
from roomcast.core.rooms import (
    ALL_ROOM,
    HISTORY_PREFIX,
    all_subjects,
    check_room,
    room_subject,
    subject_room,
    subjects_overlap,
)


@pytest.mark.parametrize("name", ["lobby", "a", "room-1", "user:42", "x_y=z+w~v@q", "a" * 128])
def test_valid_room_names(name: str) -> None:
    assert check_room(name) == name


@pytest.mark.parametrize(
    "name,why",
    [
        ("", "empty"),
        ("a.b", "'.'"),
        ("a*", "'*'"),
        ("a>", "'>'"),
        ("a b", "' '"),
        ("tab\there", "'\\t'"),
        ("nul\x00", "'\\x00'"),
        ("é", "'é'"),
        ("a" * 129, "129 characters"),
        ("_secret", "reserved"),
        (ALL_ROOM, "push-to-all"),
    ],
)
def test_invalid_room_names_say_why(name: str, why: str) -> None:
    with pytest.raises(RoomNameError, match=re.escape(why)):
        check_room(name)


def test_producers_may_publish_to_all() -> None:
    assert check_room(ALL_ROOM, allow_reserved=True) == ALL_ROOM
    with pytest.raises(RoomNameError):
        check_room("_other", allow_reserved=True)


def test_subjects_round_trip() -> None:
    assert room_subject("lobby") == "roomcast.room.lobby"
    assert subject_room(room_subject("lobby", "t1.room"), "t1.room") == "lobby"
    assert room_subject("lobby", HISTORY_PREFIX) == "roomcast.history.lobby"


def test_subjects_overlap_as_nats_matches_them() -> None:
    history, rooms = all_subjects(HISTORY_PREFIX), all_subjects()
    assert not subjects_overlap(history, rooms)  # the stream may republish one to the other
    assert subjects_overlap(rooms, rooms) and subjects_overlap(rooms, "roomcast.room.lobby")
    assert subjects_overlap("roomcast.*.lobby", rooms) and subjects_overlap("roomcast.>", history)
    assert subjects_overlap("*.room.x", "roomcast.*.x")
    assert not subjects_overlap("roomcast.room", rooms)  # `>` needs one more token
    assert not subjects_overlap("roomcast.room.a", "roomcast.room.a.b")
    assert not subjects_overlap("live.room.>", rooms)


def parse_frame(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    gen = Frame.parse(reader.read_exact, mask=False)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        result: Frame = stop.value
        return result


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_frames_parse_as_websocket_frames(size: int) -> None:
    payload = b"x" * size
    f = parse_frame(frames.text_frame(payload))
    assert f.opcode is Opcode.TEXT and f.fin and f.data == payload


def test_binary_frame() -> None:
    assert parse_frame(frames.frame(b"\x00\x01", frames.OP_BINARY)).opcode is Opcode.BINARY


def test_client_messages_parse() -> None:
    assert parse_client_message(b'{"type":"join","room":"a"}') == Join("a")
    assert parse_client_message('{"type":"leave","room":"a"}') == Leave("a")
    assert parse_client_message(b'{"type":"ping"}') == Ping()


@pytest.mark.parametrize(
    "data,code",
    [
        (b"not json", "bad_message"),
        (b'{"type":"dance"}', "bad_message"),
        (b'{"type":"join"}', "bad_message"),
        (b'{"type":"join","room":7}', "bad_message"),
        (b'{"type":"join","room":"a.b"}', "bad_room"),
        (b'{"type":"join","room":"_all"}', "bad_room"),
    ],
)
def test_bad_client_messages(data: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(data)
    assert info.value.code == code


def test_server_messages_encode() -> None:
    assert encode_server_message(Joined("a")) == b'{"type":"joined","room":"a"}'
    err = encode_server_message(ErrorMsg("bad_room", "no"))
    assert message_type(err) == "error"


def test_close_codes_say_whether_to_resume() -> None:
    assert CloseCode.SLOW_VIEWER.resumable and CloseCode.DRAINING.resumable
    assert not CloseCode.BAD_MESSAGE.resumable and not CloseCode.TOO_BIG.resumable
    assert CloseCode.DRAINING == 1012 and CloseCode.BAD_MESSAGE == 1008
    assert all(4000 <= c < 5000 for c in CloseCode if c.name in {"SLOW_VIEWER", "TOO_MANY_ROOMS"})


@pytest.mark.parametrize(
    "value,reason",
    [(None, "no_value"), (b"{oops", "not_json"), (b"{} {}", "not_json"), (b"", "not_json")],
)
def test_check_event_rejects(value: bytes | None, reason: str) -> None:
    with pytest.raises(EventError) as info:
        check_event(value)
    assert info.value.reason == reason


def test_check_event_size_limit() -> None:
    assert check_event(b'"ok"', max_bytes=4) == b'"ok"'
    with pytest.raises(EventError) as info:
        check_event(b'"big"', max_bytes=4)
    assert info.value.reason == "too_big"


# ---- positions and resume (docs/protocol.md "Resume") ----------------------------------------


def test_join_with_since_parses_and_bad_since_is_a_protocol_error() -> None:
    from roomcast.core.protocol import Position

    msg = parse_client_message(b'{"type":"join","room":"a","since":"1764117000123456:42"}')
    assert isinstance(msg, Join) and msg.position == Position(1764117000123456, 42)
    assert str(msg.position) == "1764117000123456:42"
    for bad in ("42", "1:x", ":1", "1:", "-1:2", "1:2:3", "\u0661:2", "1" * 20 + ":1"):
        with pytest.raises(ProtocolError) as err:
            parse_client_message(b'{"type":"join","room":"a","since":"%s"}' % bad.encode())
        assert err.value.code == "bad_message"


def test_since_url_parameter_splits_from_the_right() -> None:
    from roomcast.core.protocol import Position, parse_since_param

    assert parse_since_param("lobby:12:34") == ("lobby", Position(12, 34))
    assert parse_since_param("a:b:12:34") == ("a:b", Position(12, 34))  # rooms may hold ':'
    for bad, code in (("lobby", "bad_message"), ("12:34", "bad_message"), ("a.b:1:2", "bad_room")):
        with pytest.raises(ProtocolError) as err:
            parse_since_param(bad)
        assert err.value.code == code


def test_joined_says_recovered_only_for_a_resume() -> None:
    from roomcast.core.protocol import Count, Reset, decode_server_message

    assert (
        encode_server_message(Joined("a", True)) == b'{"type":"joined","room":"a","recovered":true}'
    )
    gone = Joined("a", False, None)
    assert encode_server_message(gone) == (
        b'{"type":"joined","room":"a","recovered":false,"oldest":null}'
    )
    for msg in (gone, Joined("a", False, "1:2"), Reset("a", "1:2"), Count("a", 7)):
        assert decode_server_message(encode_server_message(msg)) == msg


def test_sequenced_blob_puts_the_position_first_and_decodes() -> None:
    from roomcast.core.blob import decode_blob, encode_blob, sequenced

    data = encode_blob("lobby", 3, [10, 11], [b'{"t":"hi"}', b"1"])
    out = sequenced(data, 1764117000123456, 1234, 1201)
    assert out.startswith(b'{"type":"blob","epoch":1764117000123456,"seq":1234,"prev":1201,"room"')
    blob = decode_blob(out)
    assert (blob.seq, blob.prev, blob.position) == (1234, 1201, "1764117000123456:1234")
    assert blob.offsets == [10, 11] and blob.decoded_events() == [{"t": "hi"}, 1]
    assert decode_blob(data).position == ""  # not from the history: no position
    assert sequenced(b'{"other":1}', 1, 2, 3) == b'{"other":1}'


def test_nats_urls_of_a_cluster_are_split_for_the_client() -> None:
    from roomcast.core.natsauth import nats_servers

    assert nats_servers("nats://a:4222") == ["nats://a:4222"]
    assert nats_servers("nats://a:4222, nats://b:4222,nats://c:4222") == [
        "nats://a:4222", "nats://b:4222", "nats://c:4222"
    ]  # fmt: skip
    with pytest.raises(ValueError):
        nats_servers(" , ")
