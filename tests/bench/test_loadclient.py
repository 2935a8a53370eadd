"""The load client's content checks (the e2e scenario's lost / duplicated / latency), no network."""

from __future__ import annotations

import random
import statistics
import time

import pytest

from roomcast.bench import loadclient
from roomcast.core.blob import encode_blob


def blob(offsets: list[int], seqs: list[int], ts: float = 0.0, room: str = "r") -> bytes:
    events = [b'{"seq":%d,"ts":%r,"text":"hi"}' % (s, ts or time.time()) for s in seqs]
    return encode_blob(room, 0, offsets, events)


def viewer() -> tuple[loadclient._Client, loadclient._Viewer]:
    client = loadclient._Client()
    return client, loadclient._Viewer(client, "/ws?room=r")


def test_a_replay_merged_differently_counts_each_event_once() -> None:
    c, v = viewer()
    v._inspect(blob([10, 11, 12], [0, 1, 2]))
    v._inspect(blob([11, 12, 13, 14], [1, 2, 3, 4]))  # a replay overlapping the first blob
    v._inspect(blob([12], [2]))  # nothing new at all
    assert (c.events, c.replayed, c.duplicated, c.gaps) == (5, 3, 0, 0)


def test_a_repeated_sequence_number_is_a_duplicate_and_a_missing_one_a_gap() -> None:
    c, v = viewer()
    v._inspect(blob([1, 2], [0, 1]))
    v._inspect(blob([3, 4, 5], [1, 2, 5]))  # seq 1 again (new offset), then 3 and 4 missing
    assert (c.events, c.duplicated, c.gaps) == (4, 1, 2)


def test_bad_blobs_are_counted_not_raised() -> None:
    c, v = viewer()
    v._inspect(b"not json")
    v._inspect(encode_blob("r", 0, [1], [b'{"no_seq":1}']))
    assert c.bad_frames == 2 and c.events == 0


def test_latency_sample_is_uniform_over_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadclient, "_MAX_LATENCY_SAMPLES", 500)
    random.seed(3)
    c, _ = viewer()
    now, seq = 1_000_000.0, 0
    population: list[float] = []
    while seq < 50_000:  # blobs of 1-400 events; event i is i/10 ms old
        n = random.randint(1, 400)
        events = [loadclient._Event(seq=s, ts=now - s / 10_000) for s in range(seq, seq + n)]
        population += [s / 10 for s in range(seq, seq + n)]
        c.sample(events, now)
        seq += n
    assert c.events == len(population) and len(c.latencies) == 500
    # A uniform sample of 500 from 0..5000 ms: mean 2500 +- 65 (one standard error).
    assert abs(statistics.mean(c.latencies) - statistics.mean(population)) < 300
    # Every part of the run is represented, the end as much as the start.
    assert sum(lat < 1000 for lat in c.latencies) > 50
    assert sum(lat > 4000 for lat in c.latencies) > 50
