"""The blob: one merged message per room per window, as ingest publishes it and viewers get it.

A blob is a JSON object, sent to viewers byte for byte as ingest built it:

    {"type":"blob","room":"lobby","partition":3,"offsets":[10,11,14],"events":[{...},{...},{...}]}

`events` holds the producers' original JSON values, in Kafka order, embedded as their bytes
(never decoded and re-encoded). `offsets[i]` is the Kafka offset of `events[i]` in `partition`:
with the room, it is each event's position, which makes duplicate dropping exact at event
granularity even when a replay merges events into different blobs (see `positions.Deduper`).
"""

from __future__ import annotations

import msgspec

from roomcast.core.errors import EventError

MAX_EVENT_BYTES = 64 * 1024
"""Default limit on one event's JSON value; bigger ones go to the dead-letter topic."""
PRODUCED_HEADER = "Roomcast-Produced-Ms"
"""NATS header ingest sets on each blob: the Kafka timestamp (ms) of its first (oldest) event."""

validate_json = msgspec.json.Decoder(msgspec.Raw).decode
"""Raise msgspec.DecodeError unless the bytes are one JSON value; builds no Python objects.

It does not check the UTF-8 inside strings (a skipped string is not decoded): `check_event` does."""
_encode_ints = msgspec.json.Encoder().encode


def check_event(value: bytes | None, max_bytes: int = MAX_EVENT_BYTES) -> bytes:
    """Return `value` if it is one UTF-8 JSON value of at most `max_bytes`, else raise
    EventError (reason `no_value`, `too_big`, `not_json` or `not_utf8`).

    Validates the JSON without building Python objects (msgspec skips it as `Raw`), then the
    UTF-8: every WebSocket client fails the connection on a text frame that is not UTF-8, so one
    such event would disconnect every viewer of its room. `isascii()` is a fast scan; only
    values with other bytes pay a decode.
    """
    if value is None:
        raise EventError("no_value", "record has no value; an event is one JSON value")
    if len(value) > max_bytes:
        raise EventError(
            "too_big", f"event is {len(value)} bytes; the limit is {max_bytes} (--max-event-bytes)"
        )
    try:
        validate_json(value)
    except msgspec.DecodeError as exc:
        raise EventError("not_json", f"event is not valid JSON: {exc}") from None
    if not value.isascii():
        try:
            value.decode()
        except UnicodeDecodeError as exc:
            raise EventError(
                "not_utf8", f"event is not valid UTF-8 at byte {exc.start}: {exc.reason}"
            ) from None
    return value


def encode_blob(room: str, partition: int, offsets: list[int], events: list[bytes]) -> bytes:
    """Join already-validated JSON events into one blob. `room` must be a valid room name
    (its characters need no JSON escaping)."""
    return b"".join(
        (
            b'{"type":"blob","room":"',
            room.encode(),
            b'","partition":',
            str(partition).encode(),
            b',"offsets":',
            _encode_ints(offsets),  # b"[10,11,14]", in C
            b',"events":[',
            b",".join(events),
            b"]}",
        )
    )


_BLOB_HEAD = b'{"type":"blob",'


def sequenced(data: bytes, epoch: int, seq: int, prev: int) -> bytes:
    """The blob as viewers get it: its history position in front (`epoch`, `seq`, `prev`; see
    docs/protocol.md). Gateways do this once per blob. A blob that does not start the way
    `encode_blob` starts one (not roomcast's) is returned as it is."""
    if not data.startswith(_BLOB_HEAD):
        return data
    return b'%s"epoch":%d,"seq":%d,"prev":%d,%s' % (_BLOB_HEAD, epoch, seq, prev, data[15:])


def relinked(data: bytes, epoch: int, seq: int, prev: int, new_prev: int) -> bytes:
    """A `sequenced` blob with another `prev` (its predecessor became known later)."""
    head = sequenced(_BLOB_HEAD, epoch, seq, prev)  # the position `sequenced` put in front
    if not data.startswith(head):
        return data
    return sequenced(_BLOB_HEAD + data[len(head) :], epoch, seq, new_prev)


def blob_msg_id(room: str, partition: int, offsets: list[int]) -> str:
    """The JetStream Msg-Id of a blob: the same blob published twice is stored once."""
    return f"{room}/{partition}/{offsets[0]}-{offsets[-1]}/{len(offsets)}"


class Blob(msgspec.Struct, frozen=True):
    """A decoded blob (clients and tests; the hot path never decodes blobs)."""

    room: str
    partition: int
    offsets: list[int]
    events: list[msgspec.Raw]
    type: str = "blob"
    # The history position (docs/protocol.md); 0 in a blob that did not come from the history.
    epoch: int = 0
    seq: int = 0
    prev: int = 0

    @property
    def position(self) -> str:
        """EPOCH:SEQ, what a viewer hands back as `since` ("" if the blob has none)."""
        return f"{self.epoch}:{self.seq}" if self.seq else ""

    def decoded_events(self) -> list[object]:
        return [msgspec.json.decode(e) for e in self.events]


_blob_decoder = msgspec.json.Decoder(Blob)


def decode_blob(data: bytes | str) -> Blob:
    """Decode a blob; raises msgspec.ValidationError / DecodeError if it is not one."""
    blob = _blob_decoder.decode(data)
    if len(blob.offsets) != len(blob.events):
        raise msgspec.ValidationError(
            f"blob has {len(blob.offsets)} offsets for {len(blob.events)} events"
        )
    return blob
