"""Every `roomcast bench` scenario at tiny scale, as a person runs it, so the bench never rots.

These check that each scenario runs on the real brokers, stops by itself, and writes the
documented JSON fields with sane values. They do not judge speed (docs/benchmarks.md does).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOMCAST

COMMON = ["started_at", "scenario", "viewers", "duration_s"]


def bench(tmp_path: Path, nats_url: str, kafka: str | None, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    env = {**os.environ, "ROOMCAST_NATS": nats_url}
    if kafka:
        env["ROOMCAST_KAFKA"] = kafka
    proc = subprocess.run(
        [*ROOMCAST, "bench", *args, "--json", str(out), "--state-dir", str(tmp_path / "state")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"roomcast bench {args[0]}" in proc.stdout  # the summary table
    doc: dict[str, Any] = json.loads(out.read_text())
    for field in COMMON:
        assert field in doc, field
    assert doc["scenario"] == args[0]
    return doc


def positive(*values: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values)


def test_fanout_measures_gateway_floor_and_stock(tmp_path: Path, nats_url: str) -> None:
    doc = bench(
        tmp_path,
        nats_url,
        None,
        "fanout",
        "--viewers",
        "200",
        "--rooms",
        "4",
        "--duration",
        "1",
        "--workers",
        "1",
        "--rate",
        "50",  # enough frames that each server's CPU time spans many clock ticks
        "--rounds",
        "2",
    )
    assert doc["viewers"] == 200 and doc["rounds"] == 2
    assert positive(
        doc["gateway_cpu_us_per_frame"],
        doc["floor_cpu_us_per_frame"],
        doc["stock_cpu_us_per_frame"],
        doc["ratio_vs_floor"],
        doc["speedup_vs_stock"],
        doc["frames_per_s"],
        doc["memory_kib_per_viewer"],
    )
    # 200 viewers x 50 frames/s for 1 s: the gateway delivered them all.
    assert doc["frames_per_s"] > 200 * 50 * 0.5
    assert doc["dropped"] == 0
    # Two interleaved rounds: the figures are one round's, the ratio the median of the rounds'.
    rounds = doc["rounds_cpu_us_per_frame"]
    assert len(rounds) == 2 and all(positive(*r.values()) for r in rounds)
    assert doc["gateway_cpu_us_per_frame"] in [r["gateway"] for r in rounds]
    assert math.isclose(doc["ratio_vs_floor"], sum(r["gateway"] / r["floor"] for r in rounds) / 2)
    assert math.isclose(doc["speedup_vs_stock"], sum(r["stock"] / r["gateway"] for r in rounds) / 2)


def test_fanout_with_deflate_sends_compressed_chat_blobs(tmp_path: Path, nats_url: str) -> None:
    doc = bench(
        tmp_path, nats_url, None, "fanout", "--viewers", "100", "--rooms", "4", "--duration", "1",
        "--workers", "1", "--rate", "20", "--no-compare", "--compress", "on", "--blob-kind", "chat",
    )  # fmt: skip
    assert doc["compress"] is True and doc["blob_kind"] == "chat"
    assert doc["dropped"] == 0 and positive(doc["gateway_cpu_us_per_frame"])
    assert doc["gateway_bytes_per_frame"] * 3 < doc["blob_bytes"]  # compressed (once) on the wire


def test_connect_measures_handshakes_memory_and_storm(tmp_path: Path, nats_url: str) -> None:
    doc = bench(tmp_path, nats_url, None, "connect", "--viewers", "300", "--workers", "2")
    assert doc["viewers"] == 300
    assert positive(doc["handshakes_per_s"], doc["memory_kib_per_viewer"], doc["storm_recovery_s"])
    assert doc["storm_recovery_s"] < 30


def test_ingest_measures_pipeline_against_ceiling(
    tmp_path: Path, nats_url: str, kafka_bootstrap: str
) -> None:
    doc = bench(
        tmp_path,
        nats_url,
        kafka_bootstrap,
        "ingest",
        "--events",
        "20000",
        "--rooms",
        "50",
        "--window-ms",
        "200",
    )
    assert positive(doc["events_per_s"], doc["ceiling_events_per_s"], doc["ratio_vs_ceiling"])
    assert doc["events_per_blob"] > 1  # merging happened


@pytest.mark.parametrize("compress", ["off", "on"])
def test_e2e_checks_every_event_and_times_it(
    tmp_path: Path, nats_url: str, kafka_bootstrap: str, compress: str
) -> None:
    plot = tmp_path / "latency.png"
    doc = bench(
        tmp_path,
        nats_url,
        kafka_bootstrap,
        "e2e",
        "--viewers",
        "40",
        "--rooms",
        "5",
        "--rate",
        "200",
        "--duration",
        "3",
        "--window-ms",
        "200",
        "--workers",
        "2",
        "--plot",
        str(plot),
        "--compress",
        compress,
    )
    assert doc["compress"] is (compress == "on")
    assert doc["lost"] == 0 and doc["duplicated"] == 0 and doc["dropped"] == 0
    assert doc["delivered_events"] == doc["expected_events"] > 0
    lat = doc["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] < 10_000
    assert positive(doc["events_per_s"], doc["frames_per_s"])
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "latency_samples" not in doc  # the raw sample feeds the plot, not the JSON


def test_e2e_with_churn_viewers_resume_and_lose_nothing(
    tmp_path: Path, nats_url: str, kafka_bootstrap: str
) -> None:
    """Every viewer (the Python SDK) drops its connection about every second and resumes with
    `since`: still every event exactly once."""
    viewers = 20
    doc = bench(
        tmp_path, nats_url, kafka_bootstrap, "e2e", "--viewers", str(viewers), "--rooms", "3",
        "--rate", "100", "--duration", "4", "--window-ms", "200", "--workers", "2",
        "--churn", "1",
    )  # fmt: skip
    assert doc["churn_s"] == 1
    assert doc["lost"] == 0 and doc["duplicated"] == 0
    assert doc["delivered_events"] == doc["expected_events"] > 0
    # ~4 drops per viewer; each is answered `joined` recovered true, bar one still in flight.
    assert doc["churned"] >= 2 * viewers
    assert doc["recovered_false"] == 0 and doc["resets"] == 0
    assert doc["churned"] - viewers <= doc["resumed"] <= doc["churned"]
