"""The chaos checker: what a viewer got of a room against what was produced (pure)."""

from __future__ import annotations

import pickle

from roomcast.bench.checker import Latencies, RoomLog, latency_bucket, percentile, summarize


def got(log: RoomLog, ns: list[int], t0: float = 100.0, step: float = 1.0) -> None:
    for i, n in enumerate(ns):
        log.event(n, t0 + i * step)


def test_every_event_once_in_order_is_clean() -> None:
    log = RoomLog()
    got(log, list(range(5, 20)))
    r = log.result(produced=20, base=8)
    assert (r.expected, r.delivered, r.lost, r.duplicated, r.out_of_order) == (15, 15, 0, 0, 0)


def test_a_silent_gap_is_lost() -> None:
    log = RoomLog()
    got(log, [0, 1, 2, 6, 7])
    r = log.result(produced=8, base=0)
    assert (r.delivered, r.lost) == (5, 3)


def test_a_gap_announced_by_recovered_false_is_not_lost() -> None:
    log = RoomLog()
    got(log, [0, 1, 2])
    log.told_recovered_false()
    got(log, [6, 7])
    r = log.result(produced=8, base=0)
    assert (r.lost, r.announced, r.recovered_false) == (0, 3, 1)


def test_a_reset_announces_the_hole_already_open() -> None:
    log = RoomLog()
    got(log, [0, 1, 4, 5])  # 2 and 3 skipped, then the gateway says so
    log.told_reset()
    got(log, [6])
    r = log.result(produced=7, base=0)
    assert (r.lost, r.announced, r.resets) == (0, 2, 1)


def test_the_announcement_covers_one_gap_only() -> None:
    log = RoomLog()
    got(log, [0])
    log.told_recovered_false()
    got(log, [3, 4, 7])  # 1-2 announced, 5-6 not
    r = log.result(produced=8, base=0)
    assert (r.announced, r.lost) == (2, 2)


def test_a_repeat_is_a_duplicate() -> None:
    log = RoomLog()
    got(log, [0, 1, 2, 2, 1, 3])
    r = log.result(produced=4, base=0)
    assert (r.delivered, r.duplicated, r.lost) == (4, 2, 0)


def test_a_late_fill_is_delivered_but_out_of_order() -> None:
    log = RoomLog()
    got(log, [0, 2, 1, 3])
    r = log.result(produced=4, base=0)
    assert (r.delivered, r.lost, r.duplicated, r.out_of_order) == (4, 0, 0, 1)


def test_the_tail_never_received_is_lost_unless_announced() -> None:
    log = RoomLog()
    got(log, [0, 1])
    assert log.result(produced=5, base=0).lost == 3
    log.told_recovered_false()
    r = log.result(produced=5, base=0)
    assert (r.lost, r.announced) == (0, 3)


def test_events_after_base_are_expected_even_if_the_first_came_later() -> None:
    """The viewer had joined when `base` events were produced: base.. are all due to it."""
    log = RoomLog()
    got(log, [12, 13, 14])
    r = log.result(produced=15, base=10)
    assert (r.expected, r.lost) == (5, 2)


def test_a_viewer_that_got_nothing_lost_everything_after_base() -> None:
    r = RoomLog().result(produced=30, base=10)
    assert (r.expected, r.delivered, r.lost) == (20, 0, 20)


def test_max_gap_is_the_longest_silence_between_arrivals() -> None:
    log = RoomLog()
    for n, t in [(0, 10.0), (1, 11.0), (2, 15.5), (3, 16.0)]:
        log.event(n, t)
    assert log.result(produced=4, base=0).max_gap_s == 4.5
    # Data still flowing long after the last arrival counts too.
    assert log.result(produced=4, base=0, flowing_until=25.0).max_gap_s == 9.0


def test_latency_buckets_and_percentiles() -> None:
    assert [latency_bucket(x) for x in (-3, 0.4, 999.9, 1234.5, 12_345)] == [0, 0, 999, 1230, 12300]
    lat = Latencies()
    for i in range(100):
        lat.add(1000.0, 1000.0 + (i + 1.5) / 1000)  # 1.5..100.5 ms, produced in second 1000
    lat.add(1005.2, 1007.2)  # 2 s, produced in second 1005
    calm = lat.select(lambda s: s < 1005)
    assert percentile(calm, 0.99) == 99.0  # the 99th of 100, as its bucket's lower bound
    assert percentile(lat.select(lambda s: s >= 1005), 0.99) == 2000.0
    assert percentile(lat.select(lambda s: False), 0.99) is None


def test_latencies_merge_and_survive_pickling() -> None:
    a, b = Latencies(), Latencies()
    a.add(1.0, 1.5)
    b.add(1.2, 1.7)
    b.add(3.0, 3.1)
    a.merge(pickle.loads(pickle.dumps(b)))
    assert sum(a.select(lambda s: True).values()) == 3
    assert a.select(lambda s: s == 1)[500] == 2


def test_summarize_adds_up_viewers_and_names_the_worst() -> None:
    clean, lossy, dup = RoomLog(), RoomLog(), RoomLog()
    got(clean, [0, 1, 2, 3])
    got(lossy, [0, 3])
    got(dup, [0, 1, 1, 2, 3])
    logs = pickle.loads(pickle.dumps([("v1", "a", clean), ("v2", "a", lossy), ("v3", "b", dup)]))
    s = summarize(logs, produced={"a": 4, "b": 4}, base={"a": 0, "b": 0})
    assert (s.viewer_rooms, s.expected, s.delivered, s.lost, s.duplicated) == (3, 12, 10, 2, 1)
    assert [w[0] for w in s.worst] == ["v2", "v3"]
    assert s.silent == 0
