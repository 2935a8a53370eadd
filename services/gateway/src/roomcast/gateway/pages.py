"""The pages a browser opens on the viewer port: the demo room (`/`), the stats page (`/stats`)
and the figures behind it (`/stats.json`). Plain files shipped in the package (`static/`), no
build step, nothing fetched from elsewhere; the demo page watches its room with `/client.js`.

`/stats.json` is the figures of the worker that answered (a gateway runs several worker processes
on one port, and each HTTP request lands on one of them): viewers and rooms now, frames/s and
bytes/s over the last second, drops and resumes since it started, and the last minute of frames/s.
The stats page polls it every second, keeps each worker's latest answer and shows the sum over the
workers it has heard from recently, with one row per worker. Figures are this worker's own
counters (the ones `/metrics` exports), sampled once a second: nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import time
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING

from prometheus_client import Counter

from roomcast.gateway import metrics

if TYPE_CHECKING:
    from roomcast.gateway.engine import Gateway

HISTORY_S = 60  # seconds of frames/s kept for the sparkline
CHAT_URL_MARK = "{{CHAT_URL}}"

_HTML = "text/html; charset=utf-8"
_JSON = "application/json"


def _static(name: str) -> str:
    return (resources.files("roomcast.gateway") / "static" / name).read_text(encoding="utf-8")


def _counter(counter: Counter) -> float:
    """One of this worker's counters, summed over its labels (0 if it has no samples). Only that
    counter is collected: the sampler runs every second, and the whole registry is not cheap."""
    metrics.TALLY.publish()
    return sum(s.value for f in counter.collect() for s in f.samples if s.name.endswith("_total"))


def _gauge(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


class Pages:
    """The routes of one worker, and its once-a-second sampler of the counters."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        chat = gw.cfg.demo_chat_url
        self.index = _static("index.html").replace(CHAT_URL_MARK, html.escape(chat)).encode()
        self.stats_page = _static("stats.html").encode()
        self.history: deque[tuple[int, float, float]] = deque(maxlen=HISTORY_S)
        self._last = (time.monotonic(), _counter(metrics.FRAMES_SENT),
                      _counter(metrics.BYTES_SENT))  # fmt: skip
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(1.0, self._sample)

    def install(self) -> None:
        routes = self.gw.routes
        routes["/"] = self.page
        routes["/demo"] = self.page
        routes["/stats"] = self.page
        routes["/stats.json"] = self.stats

    def close(self) -> None:
        self._timer.cancel()

    def _sample(self) -> None:
        """Once a second: frames/s and bytes/s since the previous sample."""
        now = time.monotonic()
        frames = _counter(metrics.FRAMES_SENT)
        nbytes = _counter(metrics.BYTES_SENT)
        at, frames0, bytes0 = self._last
        dt = max(now - at, 1e-3)
        self.history.append((int(time.time()), (frames - frames0) / dt, (nbytes - bytes0) / dt))
        self._last = (now, frames, nbytes)
        self._timer = self._loop.call_later(1.0, self._sample)

    def page(self, path: str, query: str) -> tuple[int, bytes, str]:
        return 200, self.stats_page if path == "/stats" else self.index, _HTML

    def figures(self) -> dict[str, object]:
        cfg = self.gw.cfg
        last = self.history[-1] if self.history else (int(time.time()), 0.0, 0.0)
        return {
            "worker": self.gw.worker_id,
            "workers": cfg.workers,
            "pid": os.getpid(),
            "at": time.time(),
            "viewers": int(_gauge("roomcast_gateway_viewers")),
            "rooms": int(_gauge("roomcast_gateway_rooms")),
            "frames_per_s": round(last[1], 1),
            "bytes_per_s": round(last[2], 1),
            "frames_sent": int(_counter(metrics.FRAMES_SENT)),
            "drops": int(_counter(metrics.FRAMES_DROPPED)),
            "resumes": int(_counter(metrics.RESUMES)),
            "history": [[t, round(f, 1)] for t, f, _ in self.history],
        }

    def stats(self, path: str, query: str) -> tuple[int, bytes, str]:
        return 200, json.dumps(self.figures(), separators=(",", ":")).encode(), _JSON


def install(gw: Gateway) -> Pages:
    pages = Pages(gw)
    pages.install()
    return pages
