"""The ingest worker's HTTP endpoint on --metrics-port: /metrics and /healthz.

/healthz answers 503 once the consume loop has not turned for --stall-timeout-s: a blocked event
loop, or a loop stuck on an await that never returns. The loop turns at least every 50 ms while it
runs (paused or not, NATS up or down), so a liveness probe on /healthz restarts only a worker that
is really stuck. Before the loop starts (connecting to NATS and Kafka, which is retried and logged)
/healthz answers 200.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


def serve(
    port: int, host: str, last_turn: Callable[[], float | None], stall_timeout_s: float
) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz from a daemon thread (it answers even if the loop is stuck)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                turned = last_turn()
                age = 0.0 if turned is None else time.monotonic() - turned
                if age > stall_timeout_s:
                    self._answer(503, f"stuck: the loop last turned {age:.0f}s ago\n".encode())
                else:
                    self._answer(200, b"ok\n" if turned is not None else b"ok: starting\n")
            else:
                self._answer(404, b"not found: /metrics, /healthz\n")

        def _answer(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ingest-http", daemon=True).start()
    return server
