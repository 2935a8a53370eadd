"""`roomcast bench fuzz` at small scale: a live gateway under raw-socket fuzzing.

The valid-only run shows the fuzzer's checks pass on traffic any correct gateway must serve (so a
failure of the full run is the gateway's, not the fuzzer's). The full run must find nothing: every
good viewer gets every blob, the worker lives, its descriptors and memory stay flat, unfinished
handshakes are closed. On a failure its message names the case that breaks the gateway, with its
bytes and the command that replays it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from roomcast.bench.fuzz import CATEGORIES, VALID, Generator, parse_categories
from tests.support import ROOMCAST


def fuzz(tmp_path: Path, nats_url: str, *args: str) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [*ROOMCAST, "bench", "fuzz", *args, "--json", str(out), "--state-dir", str(tmp_path / "s")],
        env={**os.environ, "ROOMCAST_NATS": nats_url},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.exists(), proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text()), proc.stdout


def failures(doc: dict[str, Any]) -> str:
    lines = []
    for f in doc["failure_list"]:
        lines.append(f"after batch {f['batch']}: {f['check']}: {f['detail'][:600]}")
        if f["culprit"]:
            lines.append(f"  culprit ({f['culprit_note'][:300]}): {f['culprit']['script'][:800]}")
        if f["replay"]:
            lines.append(f"  replay: {f['replay']}")
    return "\n".join(lines)


def test_cases_are_reproducible_from_seed_and_index() -> None:
    gen = Generator(7, list(CATEGORIES), ["fz0", "fz1"], 1234)
    again = Generator(7, list(CATEGORIES), ["fz0", "fz1"], 1234)
    cases = [gen.case(i) for i in range(2000)]
    assert [c.to_json() for c in cases[:200]] == [again.case(i).to_json() for i in range(200)]
    assert {c.category for c in cases} == set(CATEGORIES)
    assert all((c.expect is not None) == CATEGORIES[c.category] for c in cases)
    assert parse_categories("valid") == VALID
    assert "poison" not in parse_categories("all,-poison")


def test_valid_traffic_passes_every_check(tmp_path: Path, nats_url: str) -> None:
    code, doc, stdout = fuzz(tmp_path, nats_url, "--cases", "2000", "--only", "valid")
    assert doc["failures"] == 0, failures(doc)
    assert code == 0 and "roomcast bench fuzz" in stdout
    assert doc["cases"] == 2000 and set(doc["by_category"]) == set(VALID)
    assert doc["blobs_checked"] >= 10 * 8 and doc["cases_per_s"] > 0
    assert doc["fds_after"] <= doc["fds_baseline_last"] + 2


def test_no_traffic_breaks_the_gateway(tmp_path: Path, nats_url: str) -> None:
    """Every category, protocol violations included. Fails on a gateway that keeps a connection
    failed by a violation in its room when a join follows in the same read (the room's fan-out
    then raises for every blob), or that never times out an unfinished handshake."""
    code, doc, _ = fuzz(
        tmp_path,
        nats_url,
        "--cases",
        "3000",
        "--max-failures",
        "1",
        "--handshake-timeout-s",
        "2",
    )
    assert doc["failures"] == 0, "the fuzzer broke the gateway:\n" + failures(doc)
    assert code == 0
    assert doc["cases"] == 3000 and set(doc["by_category"]) == set(CATEGORIES)
    assert doc["stalled_handshakes"] and all(
        v.startswith(("closed", "reset")) for v in doc["stalled_handshakes"].values()
    )
