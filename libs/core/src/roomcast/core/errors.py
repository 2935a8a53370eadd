"""The one error hierarchy of roomcast. Messages say what is wrong and what to do next."""


class RoomcastError(Exception):
    """Base of every error roomcast raises on purpose."""


class RoomNameError(RoomcastError, ValueError):
    """A room name that cannot be a NATS subject token (or is reserved)."""


class EventError(RoomcastError, ValueError):
    """An event that cannot go into a blob: not JSON, too big, no room."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # a short machine-readable word, e.g. "not_json"


class ProtocolError(RoomcastError, ValueError):
    """A client message that breaks the client protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
