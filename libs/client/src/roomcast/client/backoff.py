"""Reconnect delays: exponential backoff with full jitter.

Attempt n (counted from 0 since the last healthy connection) waits a uniform random time in
[0, min(cap, base * 2**n)]. The randomness is the point: when a gateway restarts, all of its
viewers lose their connection at the same instant, and "full jitter" spreads their returns over
the whole window instead of bringing them back in waves.
"""

from __future__ import annotations

import math
import random


class Backoff:
    """The delay before each reconnect attempt; `reset()` once a connection proved healthy."""

    __slots__ = ("_rng", "attempts", "base_s", "cap_s")

    def __init__(
        self, base_s: float = 0.25, cap_s: float = 15.0, rng: random.Random | None = None
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"backoff needs 0 < base ({base_s}) <= cap ({cap_s})")
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempts = 0  # failed attempts (or lost connections) since the last reset
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The longest the next delay can be: min(cap, base * 2**attempts)."""
        # 2**64 * base is past any cap; stop the exponent there so it never overflows.
        return min(self.cap_s, math.ldexp(self.base_s, min(self.attempts, 64)))

    def next_delay(self) -> float:
        """The delay before the next attempt, uniform in [0, ceiling()]; counts the attempt."""
        delay = self._rng.uniform(0, self.ceiling())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
