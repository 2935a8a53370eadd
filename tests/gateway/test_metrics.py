"""The group's metrics and probes: one endpoint whatever --workers is, adding up to a known load."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import Gateway
from tests.gateway.test_engine import metric, wait_until


def per_worker(gw: Gateway, name: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{gw.metrics_url}/metrics", timeout=5).read().decode()
    return {
        s.labels["worker"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def status(url: str) -> int:
    try:
        return int(urllib.request.urlopen(url, timeout=5).status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_two_workers_add_up_on_one_endpoint_and_ready_is_for_the_group(
    gateway: Callable[..., Gateway],
) -> None:
    gw = gateway("--workers", "2")
    assert wait_until(lambda: status(f"{gw.metrics_url}/readyz") == 200, timeout=15)
    viewers = [gw.viewer("load") for _ in range(24)]
    by_worker = {ws.response.headers["X-Roomcast-Worker"] for ws in viewers}
    gw.publish("load", *(gw.blob("load", i) for i in range(5)))
    for ws in viewers:
        assert [json.loads(ws.recv(timeout=5))["offsets"][0] for _ in range(5)] == list(range(5))
    counts = per_worker(gw, "roomcast_gateway_viewers")
    assert sum(counts.values()) == 24 and set(counts) == {"0", "1"}
    assert {w for w, n in counts.items() if n} == by_worker
    assert metric(gw, "roomcast_gateway_frames_sent_total") == 24 * 5
    assert metric(gw, "roomcast_gateway_nats_messages_total") == 5 * len(by_worker)
    assert status(f"{gw.http}/metrics") == 404  # never on the viewer port

    supervisor = psutil.Process(gw.service.proc.pid)
    victim = next(c for c in supervisor.children() if "spawn" in " ".join(c.cmdline()))
    victim.kill()
    assert wait_until(lambda: status(f"{gw.metrics_url}/readyz") == 503, timeout=5)
    assert status(f"{gw.metrics_url}/healthz") == 200  # the other worker still answers
    assert wait_until(lambda: status(f"{gw.metrics_url}/readyz") == 200, timeout=15)  # restarted
    assert sum(per_worker(gw, "roomcast_gateway_ready").values()) == 2


def test_delivery_latency_is_measured_from_the_produce_time_ingest_stamps(
    gateway: Callable[..., Gateway],
) -> None:
    import asyncio
    import time

    import nats

    gw = gateway()
    ws = gw.viewer("lat")

    async def publish() -> None:
        nc = await nats.connect(gw.nats_url)
        produced_ms = int((time.time() - 0.8) * 1000)  # its oldest event: 0.8 s ago
        headers = {"Roomcast-Produced-Ms": str(produced_ms)}
        await nc.publish(f"{gw.prefix}.lat", gw.blob("lat", 1), headers=headers)
        await nc.publish(f"{gw.prefix}.lat", gw.blob("lat", 2))  # no stamp: not counted
        await nc.flush()
        await nc.close()

    asyncio.run(publish())
    assert [json.loads(ws.recv(timeout=5))["offsets"] for _ in range(2)] == [[1], [2]]
    count = metric(gw, "roomcast_gateway_delivery_latency_seconds_count")
    total = metric(gw, "roomcast_gateway_delivery_latency_seconds_sum")
    assert count == 1 and 0.8 <= total < 3.0
    assert metric(gw, 'roomcast_gateway_delivery_latency_seconds_bucket{le="0.75"}') == 0
    assert metric(gw, 'roomcast_gateway_delivery_latency_seconds_bucket{le="3.0"}') == 1
