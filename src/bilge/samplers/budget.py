"""A CPU-time token bucket: how the agent keeps its periodic work cheap.

Tokens (seconds of CPU) accrue at ``share`` seconds per second of wall
time, up to ``burst``; work may start only when the bucket holds its
expected cost, and then pays what it actually cost. Over any long stretch
the work therefore uses at most ``share`` of one core, however big the heap
grows, while a fresh process can spend its initial burst at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CpuBudget:
    """Token bucket in CPU seconds.

    Args:
        share: CPU seconds allowed per second of ``clock`` (wall time: 0.01 = 1% of a core).
        burst: the most tokens that can accrue (and the initial allowance).
        clock: what the tokens accrue with: a monotonic wall clock, or the
            process's CPU time (injectable for tests).
        pace: the part of ``share`` that accrues now (1.0: all of it), asked
            at each refill: a stage that only watches for a change may
            accrue less while nothing suggests one.
    """

    def __init__(self, share: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 pace: Callable[[], float] = lambda: 1.0) -> None:
        self.share = share
        self.burst = burst
        self._clock = clock
        self._pace = pace
        self._tokens = burst
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.share * self._pace())
        self._last = now

    def can_spend(self, expected: float) -> bool:
        """True when work expected to cost ``expected`` CPU seconds fits now.

        Work dearer than the burst (a census of a million-object heap) waits
        for a full bucket and leaves it in debt: asking for all of it would
        never be answered, as the bucket holds at most the burst.
        """
        self._refill()
        return self._tokens >= min(expected, self.burst)

    def spend(self, cost: float) -> None:
        """Pay what the work actually cost (may go negative: a debt)."""
        self._refill()
        self._tokens -= cost
