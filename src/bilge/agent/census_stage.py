"""Object counts by type: the scheduled census and what the explain stage learns from counts. Stdlib-only.

The scheduled census is part of the always-on watch, kept to
``census_budget`` of the process's own CPU time by its own token bucket (an
exact count costs ~0.1 s per million objects). Counts are remembered by :class:`Counts`, which
the explain stage reads: a baseline taken right after warm-up starts, and
the latest two counts, from which "types still growing" is computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bilge.agent.outbox import Outbox
from bilge.model import GENERIC_TYPES
from bilge.samplers import census as census_sampler
from bilge.samplers.budget import CpuBudget

# Census counts from after this many tasks are the baseline that growing
# types are measured against.
BASELINE_AFTER_TASKS = 20
MIN_TYPE_GROWTH = 20
MAX_GROWING_TYPES = 5
# The census's tokens accrue with the process's own CPU time, plus this
# share of wall time so that a mostly idle process is still counted now and
# then. Against wall time alone, a child that gets a quarter of a core (a
# busy machine, a CPU limit, a worker waiting for work) paid four times the
# census's share of its own work.
WALL_FLOOR = 0.02


class Counts:
    """The census counts the explain stage reasons about (names and numbers only)."""

    def __init__(self) -> None:
        self.baseline: dict[str, int] | None = None
        self.latest: dict[str, int] = {}
        self.previous: dict[str, int] = {}
        # How many counts in a row each type grew in (since the baseline).
        self.rising: dict[str, int] = {}
        self._latest_tasks = -1

    def add(self, counts: dict[str, int], tasks_done: int) -> None:
        """Remember one census's counts, taken after ``tasks_done`` tasks."""
        if self.baseline is None and tasks_done >= BASELINE_AFTER_TASKS:
            self.baseline = counts
        if tasks_done == self._latest_tasks:
            # No task ran since the latest count: it is refreshed, but "still
            # growing" compares counts with tasks between them.
            self.latest = counts
            return
        if self.baseline is not None and self.latest:
            self.rising = {name: self.rising.get(name, 0) + 1 for name, count in counts.items()
                           if count > self.latest.get(name, 0)}
        self.previous, self.latest = self.latest, counts
        self._latest_tasks = tasks_done

    def growth_since_baseline(self) -> list[tuple[int, str]]:
        """(objects added, type) of the latest counts against the baseline, at least MIN_TYPE_GROWTH, most first."""
        baseline = self.baseline or {}
        return sorted(((count - baseline.get(name, 0), name) for name, count in self.latest.items()
                       if count - baseline.get(name, 0) >= MIN_TYPE_GROWTH), reverse=True)

    def growing_types(self) -> list[str]:
        """Types that grew since the baseline and are still growing, specific types first."""
        if self.baseline is None:
            return []
        baseline, previous = self.baseline, self.previous
        # Still growing now, not just since the baseline: warm-up growth
        # (lazy imports, caches filling) has stopped by the time a process
        # turns suspect; a leak has not.
        growth = [(added, name) for added, name in self.growth_since_baseline()
                  if self.latest[name] > previous.get(name, 0) >= baseline.get(name, 0)]
        # Specific types first (a class that piles up names the leak), then
        # the builtin containers, each by growth.
        growth.sort(key=lambda item: (item[1] in GENERIC_TYPES, -item[0]))
        return [name for _, name in growth[:MAX_GROWING_TYPES]]

    def steadily_growing(self, counts_in_a_row: int = 2) -> list[str]:
        """Growing types that rose in each of the last ``counts_in_a_row`` counts: evidence that outlives warm-up."""
        return [name for name in self.growing_types() if self.rising.get(name, 0) >= counts_in_a_row]


class CensusStage:
    """The scheduled census: counts (and one time in ``sizing_every`` sizes) every interval, within its budget.

    Args:
        outbox: where census rows go.
        counts: what the explain stage reads.
        tasks_done: the process's finished tasks so far.
        share: the share of the process's CPU time the census may use.
        min_interval: seconds; the census never runs more often.
        sizing_every: at most one census in this many also sizes objects.
        pace: the part of ``share`` the census may use now (1.0: all of it;
            less while the process shows no sign of growth).
        clock: monotonic seconds.
        cpu_clock: the process's CPU seconds (all threads).
    """

    def __init__(self, outbox: Outbox, counts: Counts, tasks_done: Callable[[], int], share: float = 0.005,
                 min_interval: float = 1.0, sizing_every: int = 10,
                 pace: Callable[[], float] = lambda: 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self._outbox = outbox
        self._counts = counts
        self._tasks_done = tasks_done
        self._min_interval = min_interval
        self._sizing_every = sizing_every
        self._clock = clock
        self._born = clock()
        self._census = census_sampler.Census()
        # A small burst lets a fresh process take its first sizing census at
        # once (a 60k-object Celery child takes ~40 ms) without paying much
        # more than its share even over a run of a few seconds.
        self._budget = CpuBudget(share, burst=0.08, clock=lambda: cpu_clock() + WALL_FLOOR * clock(), pace=pace)
        self._cost = {True: 0.0, False: 0.0}
        self._since_sized = sizing_every  # the first census sizes
        self._next = clock() + min_interval
        # What counting alone cost last time: the explain stage's recounts
        # ask the budget for this much.
        self.last_count_seconds = 0.05

    def due(self) -> bool:
        """True when the schedule says count now."""
        return self._clock() >= self._next

    def run(self) -> None:
        """Take the scheduled census if its budget allows."""
        age = self._clock() - self._born
        # The interval stretches with age (~age/60): censuses grow with log(age).
        # Not faster: each census's list of every object can leave a step of
        # a few hundred KiB in RSS (glibc keeps the pages), which the verdict sees.
        self._next = self._clock() + min(max(self._min_interval, age / 60.0), 600.0)
        want_sized = self._since_sized >= self._sizing_every - 1
        if want_sized and self._budget.can_spend(self._cost[True]):
            sized = True
        elif self._budget.can_spend(self._cost[False]):
            sized = False
        else:
            return
        result = self._census.take(sized)
        self.remember(result)
        self._budget.spend(result.duration)
        # Remember the last cost of each flavour: heaps change slowly.
        self._cost[sized] = result.duration
        if not sized:
            self.last_count_seconds = result.duration
        self._since_sized = 0 if sized else self._since_sized + 1

    def count_now(self) -> census_sampler.CensusResult:
        """Count objects now, whatever the schedule (the explain stage's own counts; its budget, not ours)."""
        result = self._census.take(sized=False)
        self.remember(result)
        self.last_count_seconds = result.duration
        return result

    def remember(self, result: census_sampler.CensusResult) -> None:
        """Keep a census's counts for the explain stage and its row for the store.

        Stored like a scheduled census: a fast worker may finish its whole
        run between two scheduled ones, and the explain stage's counts are
        then the only counts the analysis has to name the growing type.
        """
        tasks_done = self._tasks_done()
        self._outbox.censuses.append((result.t, tasks_done, result.objects, result.duration, result.types))
        self._counts.add({name: count for name, count, _ in result.types}, tasks_done)
