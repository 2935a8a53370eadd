"""The io_uring harness at tiny scale: it runs, every variant delivers everything, the table and
the JSON hold sane figures (not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from roomcast.bench.uringbench import VARIANTS
from roomcast.uring import available


@pytest.mark.skipif(available() is not None, reason=f"io_uring unavailable: {available()}")
def test_uringbench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "uring.json"
    run = subprocess.run(
        [sys.executable, "-m", "roomcast.bench.uringbench", "--sockets", "64", "--rounds", "2"]
        + ["--frames", "3", "--max-seconds", "60", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert set(result["summary"]) == set(VARIANTS)
    assert result["summary"]["c-write"]["ratio_median"] == 1.0
    for name, s in result["summary"].items():
        assert s["failed"] == 0, name
        assert 0 < s["us_per_frame_min"] <= s["us_per_frame_median"] <= s["us_per_frame_max"]
        # ksoftirqd's share is part of the figure, never more than it
        assert 0 <= s["softirqd_us_per_frame_median"] <= s["us_per_frame_max"]
        assert f"| {name} |" in run.stdout
    assert len(result["rounds_detail"]) == 2
    assert result["softirqd_threads"] >= 1  # counted: visible on this machine
    for rd in result["rounds_detail"]:
        for m in rd.values():
            assert m["us_per_frame"] == pytest.approx(
                m["own_us_per_frame"] + m["softirqd_us_per_frame"]
            )


def test_softirqd_threads_are_found_and_counted() -> None:
    """The kernel's ksoftirqd threads are visible here (one per CPU) and their time only grows."""
    from roomcast.bench.stack import softirq_ns, softirq_threads

    threads = softirq_threads()
    assert 1 <= len(threads) <= (os.cpu_count() or 1)
    first = softirq_ns(threads)
    assert first > 0
    assert softirq_ns(threads) >= first
