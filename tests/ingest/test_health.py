"""The ingest worker's /healthz fails once its consume loop stops turning (for liveness)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from roomcast.ingest import health
from tests.support import free_port


def status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_healthz_turns_503_when_the_loop_stalls_and_metrics_stay_up() -> None:
    turned: list[float | None] = [None]
    port = free_port()
    server = health.serve(port, "127.0.0.1", lambda: turned[0], stall_timeout_s=5)
    try:
        base = f"http://127.0.0.1:{port}"
        assert status(base + "/healthz") == (200, "ok: starting\n")
        turned[0] = time.monotonic()
        assert status(base + "/healthz") == (200, "ok\n")
        turned[0] = time.monotonic() - 60
        code, body = status(base + "/healthz")
        assert code == 503 and "stuck" in body, body
        code, body = status(base + "/metrics")
        assert code == 200 and "roomcast_ingest_events_in_total" in body
        assert status(base + "/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
