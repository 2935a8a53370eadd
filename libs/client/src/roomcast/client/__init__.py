"""roomcast.client: the Python viewer SDK.

    from roomcast.client import subscribe

    async with subscribe("ws://127.0.0.1:8080/ws", ["lobby"]) as sub:
        async for blob in sub:
            for event in blob.decoded_events():
                ...

`subscribe()` reconnects with jittered exponential backoff when the connection drops or the
gateway closes it with a resumable code (slow viewer, drain), resumes each room from its last
position (`since`), drops blobs and events it has already seen, and says when a room lost
continuity (`recovered: false`, `reset`) so the app can reload it. See
`roomcast.client.subscription` for the whole API; `Viewer` is the older API on top of it.
"""

from roomcast.client.errors import TokenRejected, ViewerClosed
from roomcast.client.subscription import Status, Subscription, subscribe
from roomcast.client.viewer import ConnectionStatus, ReceivedBlob, Viewer

__all__ = [
    "ConnectionStatus",
    "ReceivedBlob",
    "Status",
    "Subscription",
    "TokenRejected",
    "Viewer",
    "ViewerClosed",
    "subscribe",
]
