"""What bilge may spend in a process, and what it did spend. Stdlib-only.

Every stage beyond the always-on watch (allocation windows, native windows,
holder searches, recounts, fd scans) asks the process's :class:`Budget`
before it runs and pays what it cost afterwards. Two limits hold at once:

- **CPU**: at most ``cpu_share`` of the process's time over any
  ``cpu_period`` (default 1 % over any 10 minutes);
- **slowed tasks**: at most ``slowed_per_hour`` seconds of wall time added
  to the host's tasks (tracing makes a task slower) over any hour.

Each limit is a token bucket holding half of it, refilled at half its rate:
whatever the timing, spend over any period of that length is at most
``capacity + rate * period`` = the limit. A stage that cannot afford its
expected cost waits (or asks for less); it never runs into debt knowingly,
and a stage that overran its estimate pays the debt before anything else
runs.

:class:`Ledger` keeps what every stage cost, always-on ones included, per
stage, for the reports and the metrics (``bilge_agent_cpu_seconds_total``).
Memory is bounded: totals per stage, and at most ``MAX_RUNS`` budgeted runs
waiting for the next flush.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bilge.model import BudgetState, StageCost, StageRun
from bilge.samplers import wallclock

MAX_RUNS = 200


class _Bucket:
    """Tokens in seconds; capacity half the limit, refill half the limit per period."""

    def __init__(self, limit: float, period: float, now: float) -> None:
        self.limit = max(0.0, limit)
        self.period = period
        self.capacity = self.limit / 2
        self.rate = self.capacity / period if period > 0 else 0.0
        self.tokens = self.capacity
        self._last = now

    def refill(self, now: float) -> float:
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        return self.tokens


class Budget:
    """The per-process budget of the agent's deeper stages.

    Args:
        cpu_share: share of the process's time the stages may use...
        cpu_period: ...over any period of this many seconds.
        slowed_per_hour: seconds of slowed task wall time allowed over any hour.
        clock: monotonic seconds (injected in tests).
    """

    def __init__(self, cpu_share: float = 0.01, cpu_period: float = 600.0, slowed_per_hour: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        self._cpu = _Bucket(cpu_share * cpu_period, cpu_period, now)
        self._slowed = _Bucket(slowed_per_hour, 3600.0, now)
        # Task threads charge tracing, the agent thread everything else.
        self._lock = threading.Lock()

    def affords(self, cpu: float, slowed: float = 0.0) -> bool:
        """True when work expected to cost ``cpu`` CPU seconds and ``slowed`` seconds of slowed tasks fits now."""
        with self._lock:
            now = self._clock()
            # A bucket in debt refuses only work that would spend from it.
            cpu_ok = cpu <= 0 or self._cpu.refill(now) >= cpu
            return cpu_ok and (slowed <= 0 or self._slowed.refill(now) >= slowed)

    def slowed_left(self) -> float:
        """Seconds of slowed task time that could be spent now."""
        with self._lock:
            return max(0.0, self._slowed.refill(self._clock()))

    def charge(self, cpu: float, slowed: float = 0.0) -> None:
        """Pay what work actually cost (tokens may go negative: a debt paid by waiting).

        A negative amount gives back what a reservation took beyond the real cost.
        """
        with self._lock:
            now = self._clock()
            self._cpu.refill(now)
            self._slowed.refill(now)
            self._cpu.tokens = min(self._cpu.capacity, self._cpu.tokens - cpu)
            self._slowed.tokens = min(self._slowed.capacity, self._slowed.tokens - slowed)

    def state(self, t: float) -> BudgetState:
        """What is left now, with the limits, for the store (``t`` is the wall-clock time)."""
        with self._lock:
            now = self._clock()
            return BudgetState(t=t, cpu_left=self._cpu.refill(now), cpu_limit=self._cpu.limit,
                               cpu_period=self._cpu.period, slowed_left=self._slowed.refill(now),
                               slowed_limit=self._slowed.limit, slowed_period=self._slowed.period)


class Ledger:
    """What each stage cost this process: cumulative totals and the budgeted runs not yet stored."""

    def __init__(self) -> None:
        self._totals: dict[str, list[float]] = {}
        self._runs: list[StageRun] = []
        self.dropped_runs = 0
        self._lock = threading.Lock()

    def add(self, stage: str, cpu: float, slowed: float = 0.0, runs: int = 1) -> None:
        """Add to a stage's totals."""
        with self._lock:
            total = self._totals.setdefault(stage, [0.0, 0.0, 0])
            total[0] += max(0.0, cpu)
            total[1] += max(0.0, slowed)
            total[2] += runs

    def record(self, run: StageRun) -> None:
        """Add a budgeted run: to its stage's totals and to the runs the next flush stores."""
        self.add(run.stage, run.cpu_seconds, run.slowed_seconds)
        with self._lock:
            if len(self._runs) < MAX_RUNS:
                self._runs.append(run)
            else:
                self.dropped_runs += 1

    def totals(self) -> tuple[StageCost, ...]:
        """Every stage's cost so far."""
        with self._lock:
            return tuple(StageCost(stage=s, cpu_seconds=v[0], slowed_seconds=v[1], runs=int(v[2]))
                         for s, v in sorted(self._totals.items()))

    def drain_runs(self) -> list[StageRun]:
        """The runs recorded since the last call."""
        with self._lock:
            runs, self._runs = self._runs, []
            return runs


class Meter:
    """Measures the agent thread's own CPU for one piece of work: ``with Meter() as m: ...; m.cpu``."""

    def __init__(self, cpu_clock: Callable[[], float] = time.thread_time,
                 wall_clock: Callable[[], float] = wallclock.now) -> None:
        self._cpu_clock = cpu_clock
        self._wall_clock = wall_clock
        self.cpu = 0.0
        self.started = 0.0
        self.ended = 0.0

    def __enter__(self) -> Meter:
        self.started = self._wall_clock()
        self._cpu0 = self._cpu_clock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = max(0.0, self._cpu_clock() - self._cpu0)
        self.ended = self._wall_clock()
