"""Room names and the NATS subjects they map to.

A room name becomes one token of a NATS subject, so it must never contain `.`, `*`, `>`,
whitespace or control characters. roomcast takes the safe road and allows only
`A-Z a-z 0-9 _ - : @ = + ~`, 1 to 128 characters. Names starting with `_` are reserved for
the system: `_all` is the push-to-all room every gateway worker always holds.
"""

from __future__ import annotations

import re

MAX_ROOM_LEN = 128
ALL_ROOM = "_all"
"""Push-to-all: a blob for this room reaches every viewer of every gateway worker."""

SUBJECT_PREFIX = "roomcast.room"
"""Room `lobby`'s blobs reach gateways on subject `roomcast.room.lobby`."""

HISTORY_PREFIX = "roomcast.history"
"""Ingest publishes room `lobby`'s blobs on its history subject `roomcast.history.lobby`; the
JetStream stream stores them and republishes each one it stored on `roomcast.room.lobby`."""

_ALLOWED = re.compile(r"[A-Za-z0-9_\-:@=+~]{1,128}")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9_\-:@=+~]")


def room_error(name: str) -> str | None:
    """Why `name` is not a valid room name, or None when it is."""
    if _ALLOWED.fullmatch(name):
        return None
    if not name:
        return "room name is empty"
    if len(name) > MAX_ROOM_LEN:
        return f"room name is {len(name)} characters long; the limit is {MAX_ROOM_LEN}"
    bad = _BAD_CHAR.search(name)
    assert bad is not None
    return (
        f"room name {name[:40]!r} has the character {bad.group()!r}; room names may use only "
        "letters, digits and _ - : @ = + ~"
    )


def check_room(name: str, *, allow_reserved: bool = False) -> str:
    """Return `name` if it is a valid room name, else raise RoomNameError saying why.

    Viewers may not join reserved names (those starting with `_`); producers may publish to
    `_all` (push-to-all) with `allow_reserved=True`.
    """
    from roomcast.core.errors import RoomNameError

    why = room_error(name)
    if why is not None:
        raise RoomNameError(why)
    if name.startswith("_") and not (allow_reserved and name == ALL_ROOM):
        if name == ALL_ROOM:
            raise RoomNameError("every viewer is always in the push-to-all room _all")
        raise RoomNameError(f"room names starting with '_' are reserved (got {name!r})")
    return name


def room_subject(room: str, prefix: str = SUBJECT_PREFIX) -> str:
    """The NATS subject a room's blobs are published on."""
    return f"{prefix}.{room}"


def subject_room(subject: str, prefix: str = SUBJECT_PREFIX) -> str:
    """The room a subject belongs to (inverse of room_subject)."""
    return subject[len(prefix) + 1 :]


def all_subjects(prefix: str = SUBJECT_PREFIX) -> str:
    """The wildcard over every room subject of `prefix` (`roomcast.history.>` is what the
    JetStream stream captures, `roomcast.room.>` what it republishes to)."""
    return f"{prefix}.>"


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both NATS subject patterns (`*`: one token, `>`: one or more
    tokens at the end)."""
    ta, tb = a.split("."), b.split(".")
    for x, y in zip(ta, tb, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
    return len(ta) == len(tb)
