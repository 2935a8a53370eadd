"""The operator's endpoint of a gateway process group, on `--metrics-port` (off the viewer port).

One per group, whatever `--workers` is: `/metrics` merges every worker's series (each with its
`worker` label), `/readyz` answers for the group (200 only while every worker answers and takes
viewers), `/healthz` says whether any worker's event loop answers. Workers hand over their
series on a private Unix socket each (`w<N>.sock` in the group's control directory); a worker
whose loop is stuck does not answer, so the probes see it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from roomcast.gateway import metrics

log = logging.getLogger("roomcast.gateway")


def socket_path(control_dir: str, worker: int) -> str:
    return str(Path(control_dir) / f"w{worker}.sock")


class GroupEndpoint:
    """`/metrics`, `/healthz` and `/readyz` for `workers` workers, served from a thread."""

    def __init__(self, host: str, port: int, control_dir: str, workers: int) -> None:
        self.control_dir = control_dir
        self.workers = workers
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, ctype = endpoint.answer(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes and probes are not events

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise SystemExit(
                f"cannot serve metrics on {host}:{port}: {exc.strerror}; pick another"
                " --metrics-port (0 turns the endpoint off)"
            ) from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> GroupEndpoint:
        self._thread.start()
        log.info("metrics and probes", extra={"url": f"http://{self.host}:{self.port}/metrics"})
        return self

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.shutdown()
            self.server.server_close()

    def _sources(self) -> list[tuple[str, str | None]]:
        return [
            (str(i), metrics.fetch(socket_path(self.control_dir, i))) for i in range(self.workers)
        ]

    def answer(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            live = [(w, text) for w, text in self._sources() if text is not None]
            return 200, metrics.group_text(live), "text/plain; version=0.0.4"
        if path == "/healthz":
            answering = sum(text is not None for _, text in self._sources())
            status = 200 if answering else 503
            return status, f"{answering} of {self.workers} workers answer\n".encode(), "text/plain"
        if path == "/readyz":
            not_ready = [
                w for w, text in self._sources() if text is None or not metrics.ready_value(text)
            ]
            if not not_ready:
                return 200, b"ready\n", "text/plain"
            why = f"not ready: worker {', '.join(not_ready)} (NATS down, draining or gone)\n"
            return 503, why.encode(), "text/plain"
        return 404, b"not found: /metrics, /healthz, /readyz\n", "text/plain"
