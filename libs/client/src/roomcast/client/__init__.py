"""roomcast.client: the Python viewer SDK.

    async with Viewer("ws://127.0.0.1:8080/ws", ["lobby"]) as viewer:
        async for blob in viewer:
            for offset, event in blob.fresh:
                ...

The viewer reconnects with jittered exponential backoff when the connection drops or the gateway
closes it with a resumable code (slow viewer, drain), joins its rooms again, and drops events it
has already seen (roomcast.core.positions.Deduper), so a replay never shows an event twice.
"""

from roomcast.client.viewer import ConnectionStatus, ReceivedBlob, Viewer, ViewerClosed

__all__ = ["ConnectionStatus", "ReceivedBlob", "Viewer", "ViewerClosed"]
