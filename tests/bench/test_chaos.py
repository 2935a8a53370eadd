"""`roomcast bench chaos --short`: the whole cluster on loopback under every fault, checked.

One short run (module fixture, shared by the tests) starts Kafka, a NATS cluster of 3 with the
stream at 3 replicas, 2 ingest processes and 2 gateways of 2 workers, and plays every scenario
under steady load. Each scenario must end with every event each viewer was due either delivered
once, in order, or announced as missing (`recovered:false` / `reset`): lost 0, duplicated 0.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from roomcast.bench.chaos import scenario_names
from tests.support import ROOMCAST

FIELDS = {
    "name",
    "produced",
    "delivered",
    "lost",
    "duplicated",
    "recovered_false",
    "max_gap_s",
    "p99_ms_calm",
    "p99_ms_fault",
}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("chaos")
    out = tmp / "chaos.json"
    proc = subprocess.run(
        [*ROOMCAST, "bench", "chaos", "--short", "--json", str(out), "--state-dir", str(tmp / "s")],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.exists(), proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["stdout"] = proc.stdout
    doc["returncode"] = proc.returncode
    doc["logs"] = str(tmp / "s" / "logs")
    return doc


def test_every_scenario_ran_with_every_field(short_run: dict[str, Any]) -> None:
    by_name = {s["name"]: s for s in short_run["scenarios"]}
    assert list(by_name) == scenario_names()
    for s in short_run["scenarios"]:
        assert "error" not in s, s
        assert set(s) >= FIELDS, (s["name"], FIELDS - set(s))
        assert s["produced"] > 0 and s["delivered"] > 0, s
    # The cluster was what the scenarios claim: 3 NATS nodes, the stream on all of them.
    cluster = short_run["cluster"]
    assert cluster["nats_nodes"] == 3 and cluster["stream_replicas"] == 3, cluster
    assert cluster["ingest_processes"] == 2 and cluster["gateways"] == 2, cluster
    for name in scenario_names():
        assert f"| {name} |" in short_run["stdout"]


@pytest.mark.parametrize("name", scenario_names())
def test_scenario_loses_and_duplicates_nothing(short_run: dict[str, Any], name: str) -> None:
    s = next(s for s in short_run["scenarios"] if s["name"] == name)
    keys = ("worst", "viewer_errors", "fault_error", "error", "node", "log_excerpt")
    detail = {k: s.get(k) for k in keys}
    where = f"{name}: {detail}; logs under {short_run['logs']}"
    assert "error" not in s and "fault_error" not in s, where
    assert s["silent_viewer_rooms"] == 0, where
    assert s["lost"] == 0, where
    assert s["duplicated"] == 0, where
    assert s["out_of_order"] == 0, where
    assert s["delivered"] + s["announced"] == s["expected"], where


def test_a_slow_viewer_does_not_slow_the_others(short_run: dict[str, Any]) -> None:
    s = next(s for s in short_run["scenarios"] if s["name"] == "slow-viewer")
    assert s["others_p99_within_10pct"], s


def test_the_storm_comes_back(short_run: dict[str, Any]) -> None:
    s = next(s for s in short_run["scenarios"] if s["name"] == "reconnect-storm")
    assert s["recovery_s"] is not None and s["recovery_s"] < 60, s


def test_a_lost_history_is_announced_not_lost(short_run: dict[str, Any]) -> None:
    """The stream deleted and created again: what it held is gone, and every viewer is told."""
    s = next(s for s in short_run["scenarios"] if s["name"] == "history-reset")
    assert s["recovered_false"] > 0 and s["lost"] == 0, s
