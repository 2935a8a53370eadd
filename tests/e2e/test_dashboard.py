"""The Grafana dashboard the chart ships queries only metrics the services really export.

Every PromQL expression of every panel is taken apart for its metric names; a real gateway and a
real ingest worker run a little traffic, and both /metrics endpoints are scraped. A name counts as
exported when a family declares it (with a counter's `_total` and a histogram's `_bucket`, `_sum`
and `_count` series), whether or not a labelled series has a sample yet.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from roomcast.core.protocol import message_type
from tests.e2e.test_pipeline import join
from tests.support import Service, free_port, scrape, start_pipeline, unique

DASHBOARD = Path(__file__).parents[2] / "helm" / "roomcast" / "dashboards" / "roomcast.json"

# PromQL words that are not metric names: functions are followed by "(", and these.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset"}  # fmt: skip


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)  # collapsed rows hold their panels


def metric_names(expr: str) -> set[str]:
    """The metric names in one PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word, rest = m.group(), expr[m.end() :].lstrip()
        if rest.startswith("(") or word in _KEYWORDS or expr[m.start() - 1 : m.start()] == "$":
            continue
        names.add(word)
    return names


def exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(a_bucket{job="x", le=~"1|2"}[$__rate_interval])))'
        " / sum without (worker) (b_total) + on (pod) group_left c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_every_metric_the_dashboard_queries_is_exported(
    kafka_bootstrap: str, nats_url: str, services: Callable[[str, list[str]], Service]
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    wanted: dict[str, list[str]] = {}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']!r}"
            for name in names:
                wanted.setdefault(name, []).append(panel["title"])
    # Each of the dashboard's subjects has a panel.
    for needed in ("roomcast_gateway_viewers", "roomcast_gateway_rooms",
                   "roomcast_gateway_frames_sent_total", "roomcast_gateway_bytes_sent_total",
                   "roomcast_gateway_frames_deflated_total",
                   "roomcast_gateway_frames_dropped_total",
                   "roomcast_gateway_delivery_latency_seconds_bucket",
                   "roomcast_ingest_consumer_lag", "roomcast_ingest_events_in_total",
                   "roomcast_ingest_blobs_out_total", "roomcast_ingest_publish_failures_total",
                   "roomcast_ingest_dead_letters_total",
                   "roomcast_gateway_connections_rejected_total",
                   "roomcast_gateway_fanout_errors_total"):  # fmt: skip
        assert needed in wanted, f"no panel shows {needed}"

    gw_metrics, ingest_metrics = free_port(), free_port()
    topic, port = start_pipeline(
        services, kafka_bootstrap, nats_url, name="dash", partitions=2, window_ms=100,
        gateway_metrics_port=gw_metrics, ingest_metrics_port=ingest_metrics,
    )  # fmt: skip
    room = unique("dash")

    async def traffic() -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
            await join(ws, room)
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(topic, b'{"n":1}', key=room.encode())
                await producer.send_and_wait(topic, b"not json", key=room.encode())
            finally:
                await producer.stop()
            while message_type(await asyncio.wait_for(ws.recv(), 30)) != "blob":
                pass

    asyncio.run(traffic())
    ingest_url = f"http://127.0.0.1:{ingest_metrics}"
    deadline = time.monotonic() + 20  # the dead letter is written by a task of its own
    while scrape(ingest_url, "roomcast_ingest_dead_letters_total") < 1:
        assert time.monotonic() < deadline, "the dead letter was not counted"
        time.sleep(0.2)
    have = set()
    for url in (f"http://127.0.0.1:{gw_metrics}", ingest_url):
        have |= exported(urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode())
    missing = {name: titles for name, titles in wanted.items() if name not in have}
    assert not missing, f"the dashboard queries metrics nobody exports: {missing}"
