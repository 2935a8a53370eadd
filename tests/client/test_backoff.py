"""Reconnect delays: exponential growth, full jitter, a cap, and a reset."""

from __future__ import annotations

import random

import pytest

from roomcast.client.backoff import Backoff


def test_each_delay_is_uniform_below_a_ceiling_that_doubles_up_to_the_cap() -> None:
    b = Backoff(0.25, 4.0, random.Random(1))
    ceilings = []
    for _ in range(8):
        ceilings.append(b.ceiling())
        assert 0 <= b.next_delay() <= ceilings[-1]
    assert ceilings == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_full_jitter_spreads_delays_over_the_whole_window() -> None:
    """Not "base * 2**n plus a little": a thousand viewers coming back at attempt 3 land all
    over [0, 2 s], so a restarted gateway sees a trickle, not a wave."""
    rng = random.Random(7)
    delays = []
    for _ in range(1000):
        b = Backoff(0.25, 15.0, rng)
        b.attempts = 3
        delays.append(b.next_delay())
    assert 0 <= min(delays) < 0.1 and 1.9 < max(delays) <= 2.0
    quarters = [sum(q * 0.5 <= d < (q + 1) * 0.5 for d in delays) for q in range(4)]
    assert all(200 < n < 300 for n in quarters), quarters


def test_reset_starts_over_and_huge_attempt_counts_stay_at_the_cap() -> None:
    b = Backoff(0.5, 10.0, random.Random(3))
    b.attempts = 10_000
    assert b.ceiling() == 10.0 and b.next_delay() <= 10.0
    b.reset()
    assert b.attempts == 0 and b.ceiling() == 0.5


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_nonsense_bounds_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, cap)
