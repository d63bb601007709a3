"""The explain stage: sites, holders and native lines, bought from the budget. Stdlib-only.

Nothing here runs until the process shows growth that outlives warm-up
(:meth:`Explain.escalation`):

1. the cheap suspicion (a trend in RSS or heap blocks after each task) must
   hold, and **keep holding** until the process has run half as many tasks
   again as it had when it first looked suspect (at least ``PERSIST_TASKS``
   more): the memory must have grown further, and over the second half of
   that span at no less than half the pace of the first, so a cache still
   filling (ever slower), a pool growing to its size, arenas settling or
   a deque filling to its ``maxlen`` stops before it is explained;
2. when the Python heap grows, some type must have grown in each of the last
   counts (a census or the stage's own recount): a leak adds objects steadily;
   Before that count, when no full garbage collection ran since the process
   first looked suspect, the stage runs one (``gc.collect()``, paid from the
   budget; never in a process that turned the collector off): garbage that
   waits for a full collection (a retried task's tracebacks, a dropped
   minidom tree) climbs like a leak until one runs, which CPython delays
   while the heap is big. When it takes back over half the growth, the
   suspicion starts over and nothing is opened; the collection's floor is
   what the analysis judges garbage by (``analysis/garbage.py``);
3. when only RSS grows (the heap is flat), it must have grown by a whole
   ``MIN_GROWTH`` more, and glibc's in-use bytes (where ``mallinfo2``
   reads them) by at least half as much: RSS that rises while they stay
   flat is pages of freed memory, not a native leak.

The reason is stored with every run of the stage. Then, each within the
process's :class:`~bilge.agent.budget.Budget`:

- **allocation window** (:mod:`bilge.samplers.sampled_allocations`): one
  traced task per episode, on the tasks that leave memory behind, with
  as many frames and episodes as the slowed-time budget buys; each episode's
  real cost (the traced task's time beyond its usual, the snapshots) is
  charged;
- **holder searches** after the window and as the task count grows by half,
  each only when the CPU budget holds its expected cost;
- **native window** when the window's surviving bytes explain under half of
  the RSS growth per task; stopped as soon as it slows tasks by more than
  the budget left.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bilge.agent.budget import Budget, Ledger, Meter
from bilge.agent.census_stage import CensusStage, Counts
from bilge.agent.container_stage import STEADY_SCANS
from bilge.agent.outbox import Outbox
from bilge.agent.watch import TaskReading, Watch
from bilge.model import (
    STAGE_ALLOCATION_EPISODE,
    STAGE_ALLOCATION_WINDOW,
    STAGE_FULL_COLLECTION,
    STAGE_HOLDER_SEARCH,
    STAGE_NATIVE_WINDOW,
    STAGE_RECOUNT,
    AllocationWindow,
    StageRun,
)
from bilge.samplers import holders as holder_sampler
from bilge.samplers import process as proc_sampler
from bilge.samplers import wallclock
from bilge.samplers.allocations import prepare_window
from bilge.samplers.native_sites import NativeWindow
from bilge.samplers.sampled_allocations import AT_TASK_END, ON, Episode, SampledAllocations
from bilge.samplers.suspicion import MIN_GROWTH, MIN_HEAP_GROWTH

# Episode states in which a task hook may do the episode's work.
_AT_HOOKS = frozenset(ON) | frozenset(AT_TASK_END)

# Growth must go on for this many tasks (or half as many as the process
# had run then, if more) after the process first looked suspect, by a
# quarter of what made it suspect (all of it when only RSS grows), before
# anything is explained.
PERSIST_TASKS = 100
PERSIST_SHARE = 0.25
# ...and over the second half of that span at no less than this share of
# the pace of the first half: warm-up slows down, a leak keeps its pace.
KEEPS_PACE = 0.5
# Levels kept while suspect, to find the one halfway through the span.
LEVELS_KEPT = 256
# Allocation windows per process: at most this many, at least this far apart.
MAX_WINDOWS = 3
WINDOW_REOPEN_AFTER = 1800.0
# Episodes granted per agent tick (each holds two small snapshots, of one
# task's survivors, until compared): a whole window's worth, so that a
# fast worker finishes its window within a tick or two.
GRANT = 16
# Frames tried, deepest first, until the budget buys PREFERRED_EPISODES.
FRAME_CHOICES = (6, 4, 3, 2)
PREFERRED_EPISODES = 8
# Episodes of a window opened on RSS growth with the heap flat (before its native window).
NATIVE_FIRST_EPISODES = 4
# tracemalloc's slowdown of an allocation-heavy task by traceback depth,
# measured on the overhead benchmark's JSON task (7.6x at 1 frame, 20x at
# 6); corrected by what the episodes measure.
SLOWDOWN_BASE, SLOWDOWN_PER_FRAME = 6.0, 2.4
# When surviving traced bytes explain less than this share of the RSS
# growth per task, memory grows outside Python's allocators.
NATIVE_TRACED_SHARE = 0.5
# RSS-only growth is explained only when glibc's in-use bytes (where they
# can be read) rose by at least this share of it.
NATIVE_IN_USE_SHARE = 0.5
NATIVE_SLOWDOWN = 4.0
MAX_HOLDER_SEARCHES = 4
# Full collections the stage may run in one process, and the tasks between
# two: each holds the interpreter for its length (~120 ns per tracked object).
MAX_COLLECTIONS = 4
COLLECT_EVERY_TASKS = 500
# A collection that leaves less than this share of the growth since the
# process first looked suspect says the growth was garbage.
GARBAGE_LEFT = 0.5
# Unreachable objects a collection must find for the growth it took back to
# be garbage: a full collection also empties the interpreter's free lists
# (thousands of blocks) while it finds next to nothing in a process whose
# growth is kept (native_malloc: 26-32 objects; garbage: thousands).
GARBAGE_MIN_OBJECTS = 1000
HOLDER_SECONDS = 0.5
HOLDER_INDEX_BYTES = 24 << 20
# Recounts asking "is a type growing steadily?" wait this long at first,
# twice as long after each that finds none, at most RECOUNT_MAX_WAIT: a
# heap that grows with no steady type (arenas, a cache) is asked less and less.
RECOUNT_EVERY = 1.0
RECOUNT_MAX_WAIT = 120.0
# ...and never so often that recounts take more than this share of the
# time between them: a count of a million-object heap costs ~0.2 s, and at
# the waits above a benign 50-second child of one spent 0.9 s recounting.
RECOUNT_SHARE = 0.01
MAX_NAMES = 64


@dataclass
class _NameStats:
    """What the stage knows of one task name: its usual duration, untraced."""

    seconds: float


def _keeps_pace(first: float, middle: float, last: float) -> bool:
    """Growth over the second half at least ``KEEPS_PACE`` of the first half's, and some growth at all."""
    return last - middle > 0 and last - middle >= KEEPS_PACE * (middle - first)


class Explain:
    """Explains a suspect process within its budget.

    Args:
        outbox: where windows, holder paths and counts go.
        watch: the process's readings and suspicion.
        census: takes the stage's own counts.
        counts: the counts it reasons on.
        budget: what the stage may spend.
        ledger: where it accounts what it spent.
        show_values: holder searches render a few held items.
        growing_containers: module-level containers that grew at every recent
            scan (the container stage's ``steadily_growing``).
        clock: wall clock; monotonic: for intervals.
    """

    def __init__(self, outbox: Outbox, watch: Watch, census: CensusStage, counts: Counts, budget: Budget,
                 ledger: Ledger, show_values: bool = False,
                 growing_containers: Callable[[], list[str]] = lambda: [],
                 clock: Callable[[], float] = wallclock.now, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._outbox, self._watch, self._census, self._counts = outbox, watch, census, counts
        self.growing_containers = growing_containers
        self._budget, self._ledger = budget, ledger
        self._show_values = show_values
        self._clock, self._monotonic = clock, monotonic
        self.window = SampledAllocations(clock=clock)
        self.native = NativeWindow(watch.malloc.in_use)
        self._working = 0
        self.windows_opened = 0
        self._last_window = -WINDOW_REOPEN_AFTER
        self.holder_searches = 0
        self._next_holder_search = 0
        self._holder_cpu = 0.1
        # C-held registry sizes at the previous holder search; before the
        # first, at this process's start (a prefork child: after the fork,
        # the app's imports done).
        self._registries: dict[str, int] | None = holder_sampler.registry_counts()
        self._next_recount = 0.0
        self._recount_wait = RECOUNT_EVERY
        self._first_suspect: tuple[int, float, float, int | None] | None = None
        self._full_at_suspect = 0  # full collections seen when the process first looked suspect
        self.collections = 0
        self._next_collection = 0
        self._levels: deque[tuple[int, float, float]] = deque(maxlen=LEVELS_KEPT)
        self.reason: str | None = None
        self._names: dict[str, _NameStats] = {}
        self._correction = 1.0
        self._reserved: deque[float] = deque(maxlen=64)
        self._native_slowed = 0.0
        self._native_started = 0.0
        # The window opened on RSS growth with the heap flat: a native window
        # is the likely answer, so episodes leave its share of the allowance.
        self._native_first = False
        # RSS growth per task when a window opened on RSS with the heap flat.
        self._opened_rss_per_task = 0.0
        self.last_sites: list[tuple[str, int, int]] = []
        self.last_paths: list[tuple[str, str]] = []

    def busy(self) -> bool:
        """True while the stage's own work leaves a step in the process's memory (readings re-base across it).

        Not an episode: it only adds a snapshot in flight to one reading (block
        medians shrug that off), and re-basing across it would take the
        measured, leaky task's growth out of the trend.
        """
        return bool(self._working) or self.native.active

    def at_hooks(self) -> bool:
        """True while the stage works in the task hooks (an episode's snapshots, the native window's boundaries):
        work it charges to its own stages, so the hooks' sampled timing leaves those calls out."""
        return self.window.state in _AT_HOOKS or self.native.active

    # ----------------------------------------------------------- task thread --
    def task_started(self, key: object, name: str) -> None:
        """At a task's start: an armed episode may start tracing."""
        window = self.window
        # Checked here, not only inside: a call fewer on almost every task, in cold caches.
        if window.state in ON:
            window.on_task_started(key, name)

    def task_finished(self, key: object, reading: TaskReading | None) -> None:
        """At a task's end: the episode's first snapshot, the native window's boundary, the names' statistics."""
        window = self.window
        state = window.state
        if reading is not None and reading.rss is None and state not in AT_TASK_END and not self.native.active:
            # An unread task with no window moving: nothing to do (most tasks of an old process).
            return
        traced = state in ON
        window.on_task_finished(key)
        if self.native.active:
            self.native.on_task_finished()
            if reading is not None:
                self._charge_native_task(reading)
        if reading is None or traced or reading.rss is None:
            # Names' mean durations from the read tasks only: a sample is
            # enough, and most tasks of an old process cost no more.
            return
        stats = self._names.get(reading.name)
        if stats is None:
            if len(self._names) >= MAX_NAMES:
                return
            stats = self._names[reading.name] = _NameStats(reading.seconds)
        stats.seconds += 0.05 * (reading.seconds - stats.seconds)

    def _charge_native_task(self, reading: TaskReading) -> None:
        stats = self._names.get(reading.name)
        slowed = max(0.0, reading.seconds - (stats.seconds if stats else 0.0))
        self._native_slowed += slowed
        self._budget.charge(slowed, slowed)
        if self._budget.slowed_left() <= 0:
            # Never overspend: the native window stops at the boundary.
            self.native.abort()

    # ---------------------------------------------------------- agent thread --
    def tend(self) -> None:
        """One agent tick: collect finished work, then escalate if the evidence and the budget allow."""
        self._tend_native()
        if self.window.active:
            self._tend_window()
            return
        tasks = self._watch.tasks_done
        if 0 < self.holder_searches < MAX_HOLDER_SEARCHES and tasks >= self._next_holder_search:
            # Already escalated: the search repeats while types keep growing
            # (a container holding more the second time is the growing one).
            self.find_holders("again, %d tasks on" % tasks)
        if self.windows_opened >= MAX_WINDOWS or self._monotonic() - self._last_window < WINDOW_REOPEN_AFTER:
            return
        reason = self.escalation()
        if reason is None:
            return
        if tasks:
            self._open_window(reason)
        elif not self.holder_searches:
            # A process that runs no tasks (a pool's parent, a daemon loop)
            # has no task to trace: its holders still help.
            self.find_holders(reason)

    def finish(self) -> None:
        """The agent stops: keep what a window already has, stop tracing."""
        if self.window.active:
            result = self._close_window_now()
            if result is not None:
                self._outbox.windows.append(result)
        if self.native.active:
            self.native.abort()

    def escalation(self) -> str | None:
        """Why the process deserves explaining now, or None (see the module docstring)."""
        watch = self._watch
        reason = self._ring_escalation()
        if reason is None and watch.tasks_done:
            # A slow leak of untracked objects (a key per call kept in a
            # set) stays under the rings' thresholds; the container it
            # fills grows at every scan, at a pace a warm-up cache cannot keep.
            growing = self.growing_containers()
            if growing:
                self._native_first = False
                return "%s grew at each of the latest %d scans, keeping its pace" % (
                    ", ".join(growing[:3]), STEADY_SCANS)
        return reason

    def _ring_escalation(self) -> str | None:
        """Why the suspicion rings say the process deserves explaining now, or None."""
        watch = self._watch
        rss_suspect, heap_suspect = watch.rss_suspicion.suspect(), watch.heap_suspicion.suspect()
        if not (rss_suspect or heap_suspect):
            self._first_suspect = None
            self._levels.clear()
            return None
        rss, heap = watch.rss_suspicion.level() or 0.0, watch.heap_suspicion.level() or 0.0
        tasks = watch.tasks_done
        self._levels.append((tasks, rss, heap))
        if self._first_suspect is None:
            self._first_suspect = (tasks, rss, heap, watch.malloc.in_use())
            self._full_at_suspect = proc_sampler.FULL_GC[0][0]
            return None
        t0, rss0, heap0, malloc0 = self._first_suspect
        if tasks < t0 + max(PERSIST_TASKS, t0 // 2):
            return None
        # Still rising, by a material amount, and not slowing down: a cache
        # or pool filling up, or glibc's arenas settling, grow ever slower;
        # a leak keeps its pace.
        _, rss_mid, heap_mid = self._level_near((t0 + tasks) // 2)
        rss_up = rss_suspect and rss - rss0 >= PERSIST_SHARE * MIN_GROWTH and _keeps_pace(rss0, rss_mid, rss)
        heap_up = heap_suspect and heap - heap0 >= PERSIST_SHARE * MIN_HEAP_GROWTH and (
            _keeps_pace(heap0, heap_mid, heap))
        if not (rss_up or heap_up):
            return None
        if not heap_up:
            if rss - rss0 < MIN_GROWTH:
                # RSS alone (the heap flat) creeps for a long time in healthy
                # workers (glibc arenas settling): it must add as much again
                # as made the process suspect.
                return None
            malloc = watch.malloc.in_use()
            if malloc0 is not None and malloc is not None and malloc - malloc0 < NATIVE_IN_USE_SHARE * (rss - rss0):
                # Native memory that leaks is memory glibc hands out and
                # never gets back: its in-use bytes rise with RSS. RSS rising
                # while they stay flat is pages of freed memory (arenas,
                # fragmentation), which neither tracemalloc nor the native
                # window can name.
                return None
            self._native_first = True
            self._opened_rss_per_task = (rss - rss0) / max(1, tasks - t0)
            return ("RSS kept growing for %d tasks after the process first looked suspect (%+.0f KiB) while the "
                    "Python heap stayed flat" % (tasks - t0, (rss - rss0) / 1024))
        if self._collected_garbage(tasks, t0, heap0, heap):
            return None
        steady = self._steady_types()
        if not steady:
            return None
        self._native_first = False
        return ("the Python heap kept growing for %d tasks after the process first looked suspect (%+.0f blocks) "
                "and %s grew in every count since" % (tasks - t0, heap - heap0, ", ".join(steady[:3])))

    def _collected_garbage(self, tasks: int, t0: int, heap0: float, heap: float) -> bool:
        """Whether one full collection takes back most of the heap's growth since the process first looked
        suspect (see the module docstring); then the suspicion starts over."""
        if (self.collections >= MAX_COLLECTIONS or tasks < self._next_collection or not gc.isenabled()
                or proc_sampler.FULL_GC[0][0] != self._full_at_suspect or heap <= heap0):
            return False
        # A full collection visits every tracked object, as a count does.
        expected = max(2 * self._census.last_count_seconds, proc_sampler.FULL_GC_SECONDS[0])
        if not self._budget.affords(expected, expected):
            return False
        self.collections += 1
        self._next_collection = tasks + COLLECT_EVERY_TASKS
        meter = Meter(wall_clock=self._clock)
        with meter:
            before = sys.getallocatedblocks()
            freed = gc.collect()
            after = sys.getallocatedblocks()
        wall = meter.ended - meter.started
        # It holds the interpreter: the running task waits as long.
        self._budget.charge(meter.cpu, wall)
        # Its floor, stored at once (the worker may stop before the next
        # task); the next task end reads it again without the running
        # task's temporaries.
        self._watch.floor = (proc_sampler.FULL_GC[0][0], after, self._watch.tasks_done)
        self._watch.floor_between = True
        self._watch.sample()
        garbage = after - heap0 < GARBAGE_LEFT * (heap - heap0) and freed >= GARBAGE_MIN_OBJECTS
        outcome = "%s: %d objects freed, heap blocks %d -> %d (%+d since the process looked suspect)" % (
            "garbage" if garbage else "not garbage", freed, before, after, after - heap0)
        self._ledger.record(StageRun(STAGE_FULL_COLLECTION, "the Python heap grew %+.0f blocks in %d tasks with no "
                                     "full collection" % (heap - heap0, tasks - t0), meter.started, meter.ended,
                                     meter.cpu, wall, outcome))
        if garbage:
            self._first_suspect = None
            self._levels.clear()
        return garbage

    def _level_near(self, tasks: int) -> tuple[int, float, float]:
        """The kept (tasks, rss, heap) level whose task count is nearest ``tasks``."""
        return min(self._levels, key=lambda level: abs(level[0] - tasks))

    def _steady_types(self) -> list[str]:
        steady = self._counts.steadily_growing()
        if steady or self._monotonic() < self._next_recount or self._counts.baseline is None:
            return steady
        self._next_recount = self._monotonic() + max(self._recount_wait,
                                                     self._census.last_count_seconds / RECOUNT_SHARE)
        self.recount("is a type growing steadily?")
        steady = self._counts.steadily_growing()
        self._recount_wait = RECOUNT_EVERY if steady else min(2 * self._recount_wait, RECOUNT_MAX_WAIT)
        return steady

    def recount(self, reason: str) -> None:
        """Count objects now, if the budget holds a count's cost."""
        if not self._budget.affords(self._census.last_count_seconds):
            return
        with self._run(STAGE_RECOUNT, reason):
            self._census.count_now()

    def open_on_request(self) -> str:
        """Open an allocation window now because a user asked (``bilge snapshot --window``); what happened.

        Within the budget, like any window: a request that the budget cannot
        buy is refused, never paid for by overspending.
        """
        if self.window.active or self.native.active:
            return "already open"
        if not self._watch.tasks_done:
            return "refused: this process has run no task to trace"
        opened = self.windows_opened
        self._open_window("requested through the control channel")
        if self.windows_opened == opened:
            return "refused: the cost budget cannot buy a window now (see the cost in `bilge report`)"
        return "opened" if self.window.active else "not opened: this process already traces memory itself"

    # ------------------------------------------------------ allocation window --
    def _open_window(self, reason: str) -> None:
        if not self._budget.affords(self._census.last_count_seconds + 0.01, self._episode_cost(FRAME_CHOICES[-1])):
            return
        self.windows_opened += 1
        self._last_window = self._monotonic()
        self.reason = reason
        began = self._clock()
        with self._run(STAGE_ALLOCATION_WINDOW, "opened: " + reason):
            # What naming sites creates for good (the installed-distributions
            # table, ctypes) is created now, before the fresh counts: else it
            # would look like growth to the holder search after the window.
            prepare_window()
            # Fresh counts: the types still growing now are the ones joined to lines.
            self._census.count_now()
            opened = self.window.open(self._counts.growing_types(), began)
        if not opened:
            # The host traces memory itself: no window, but holders still help.
            self.find_holders(reason)

    def _tend_window(self) -> None:
        with self._window_work():
            episodes, result = self.window.poll()
        self._charge_episodes(episodes)
        if episodes:
            # tracemalloc's tables are freed when an episode stops: hand
            # glibc's share back now, so no step stays in the worker's RSS.
            with self._window_work():
                self._watch.malloc.trim()
        if result is not None:
            self._window_closed(result)
            return
        self._grant()

    def _grant(self) -> None:
        """Arm as many episodes as the slowed-time budget buys now, as deep as it allows."""
        wanted = self.window.wanted
        if not wanted or self.window.state != "idle":
            return
        if self._native_first:
            # Opened on RSS growth with the heap flat: a few episodes tell
            # whether Python code allocates what grows; the native window is
            # the likely answer, and sixteen episodes left it no allowance.
            if self.window.done >= NATIVE_FIRST_EPISODES:
                result = self._close_window_now()
                if result is not None:
                    self._window_closed(result)
                return
            wanted = min(wanted, NATIVE_FIRST_EPISODES - self.window.done)
            # Episodes bought as deep as the allowance lets spent all of it
            # and left nothing for the native window that follows them.
            left = self._budget.slowed_left() - self._native_cost()
        else:
            left = self._budget.slowed_left()
        # The deepest tracebacks that still buy enough episodes; else as many
        # episodes as the shallowest buy.
        enough = min(wanted, PREFERRED_EPISODES)
        for frames in FRAME_CHOICES:
            cost = self._episode_cost(frames)
            count = min(wanted, GRANT, int(left // cost) if cost > 0 else GRANT)
            if count >= 1 and self._budget.affords(cost, cost) and (count >= enough or frames == FRAME_CHOICES[-1]):
                self.window.arm(count, frames, admit=functools.partial(self._reserve, cost))
                return
        if self.window.done >= self.window.min_episodes or (self._native_first and not self.window.done):
            # The budget buys no more for now: explain with what the window
            # has rather than wait (holders and a native window come after).
            # Opened on RSS growth with the heap flat, a window whose native
            # share leaves no episode affordable (slow tasks: each traced one
            # costs seconds) goes to holders and the native window at once;
            # waiting for the budget to refill left it open for hours, with
            # no holder search and no native window meanwhile.
            result = self._close_window_now()
            if result is not None:
                self._window_closed(result)

    def _close_window_now(self) -> AllocationWindow | None:
        """Close the window with the episodes it has, paying what they cost."""
        episodes, result = self.window.close_now()
        self._charge_episodes(episodes)
        return result

    def _reserve(self, cost: float) -> bool:
        """In the task's thread, right before an episode: take its expected cost from the budget, or refuse.

        Episodes run back to back between two agent ticks; reserving keeps
        the budget from being spent twice (the real cost is settled later).
        """
        if not self._budget.affords(cost, cost):
            return False
        self._budget.charge(cost, cost)
        self._reserved.append(cost)
        return True

    def _episode_cost(self, frames: int) -> float:
        """Expected slowed seconds of one episode at ``frames`` deep: the usual task time times the extra factor."""
        usual = max((s.seconds for s in self._names.values()), default=0.005)
        slowdown = self._correction * (SLOWDOWN_BASE + SLOWDOWN_PER_FRAME * frames)
        # A warm-up, the measured and a cool-down task are traced.
        return 3 * usual * max(0.0, slowdown - 1.0) + 0.002

    def _usual(self, name: str) -> float:
        stats = self._names.get(name)
        return stats.seconds if stats else 0.0

    def _charge_episodes(self, episodes: list[Episode]) -> None:
        for e in episodes:
            stats = self._names.get(e.name)
            usual = stats.seconds if stats else 0.0
            slowed = max(0.0, e.traced_seconds - usual) + e.hook_seconds + sum(
                max(0.0, seconds - self._usual(name)) for name, seconds in e.warmups)
            if stats and usual > 0 and e.outcome == "done":
                measured = e.traced_seconds / usual
                model = SLOWDOWN_BASE + SLOWDOWN_PER_FRAME * e.frames
                self._correction += 0.3 * (min(10.0, max(0.1, measured / model)) - self._correction)
            reserved = self._reserved.popleft() if self._reserved else 0.0
            self._budget.charge(slowed - reserved, slowed - reserved)
            reason = "episode: one %s task measured (%d traced), %d frames" % (e.name, 1 + len(e.warmups), e.frames)
            self._ledger.record(StageRun(STAGE_ALLOCATION_EPISODE, reason, e.started, e.ended, slowed, slowed,
                                         e.outcome))

    def _window_closed(self, result: AllocationWindow) -> None:
        self._outbox.windows.append(result)
        self.last_sites = [(s.file, s.line, s.size) for s in result.sites[:5]]
        with self._busy():
            # tracemalloc's tables are freed: give glibc's share back so the
            # worker does not keep the window's peak.
            self._watch.malloc.trim()
        self.find_holders("after the allocation window")
        self._follow_with_native(result)

    # ---------------------------------------------------------- native window --
    def _follow_with_native(self, result: AllocationWindow) -> None:
        """Open a native window when what the window traced explains too little of the RSS growth.

        A window with no episode at all (see ``_grant``) traced nothing: when
        it opened on RSS growth with the heap flat, the native window follows.
        """
        if not self._watch.tasks_done:
            return
        if result.status == "done" and result.tasks:
            rss_per_task = self._watch.rss_suspicion.growth_per_reading()
            if self._native_first:
                # The growth the window opened on: the rings re-base across
                # the window's own work and may not hold enough readings
                # after it to say (the zoo's native leak got no native window).
                rss_per_task = max(rss_per_task, self._opened_rss_per_task)
            traced_per_task = sum(s.size for s in result.sites) / result.tasks
            if rss_per_task <= 0 or traced_per_task >= NATIVE_TRACED_SHARE * rss_per_task:
                return
        elif result.tasks or not self._native_first:
            return
        expected = self._native_cost()
        if self._budget.affords(expected, expected) and self.native.open():
            self._native_slowed = 0.0
            self._native_started = self._clock()

    def _native_cost(self) -> float:
        """The slowed time a native window is expected to add (its tasks run ~NATIVE_SLOWDOWN times slower)."""
        usual = max((s.seconds for s in self._names.values()), default=0.005)
        return self.native.window_tasks * usual * (NATIVE_SLOWDOWN - 1)

    def _tend_native(self) -> None:
        if not self.native.active:
            return
        try:
            result = self.native.poll()
        except BaseException:
            self.native.abort()
            raise
        if result is not None:
            self._outbox.windows.append(result)
            self._ledger.record(StageRun(STAGE_NATIVE_WINDOW, "traced bytes explain under half of the RSS growth",
                                         self._native_started, self._clock(), self._native_slowed,
                                         self._native_slowed, result.status))

    # --------------------------------------------------------- holder search --
    def find_holders(self, reason: str) -> None:
        """Name who keeps the types that grew since the baseline alive, if the budget holds a search."""
        if self._counts.baseline is None or not self._budget.affords(self._holder_cpu):
            return
        self.holder_searches += 1
        # The next search comes after half as many tasks again: a container
        # seen holding more the second time is the growing one. (Sooner, at
        # a quarter, was tried: it confirmed more holders in the zoo's short
        # runs, but each search leaves a step of several MiB in RSS, and the
        # extra one inside the trend window turned children's kind to
        # `native` in 1 run of 3, the demo's included.)
        self._next_holder_search = max(self._watch.tasks_done, 20) * 3 // 2
        with self._run(STAGE_HOLDER_SEARCH, reason) as meter:
            self._census.count_now()
            wanted = self._counts.growing_types()
            if wanted:
                self._search(wanted, meter.started)
        self._holder_cpu = max(0.02, meter.cpu)

    def _search(self, wanted: list[str], started: float) -> None:
        # Bounded well below the search's own defaults: it runs in the user's
        # worker, whose RSS keeps part of whatever peak the search reaches.
        search = holder_sampler.find_holders(wanted, max_seconds=HOLDER_SECONDS, max_index_bytes=HOLDER_INDEX_BYTES,
                                             show_values=self._show_values, registries_before=self._registries,
                                             first=self.growing_containers())
        # A C-held registry (atexit's callbacks) that grew between two
        # searches names what holds objects no Python container refers to.
        self._registries = holder_sampler.registry_counts()
        # The search's bookkeeping is freed now; hand glibc's share back.
        self._watch.malloc.trim()
        if not search.complete:
            self._outbox.add_error(self._clock(), "holders", "RuntimeError: %s" % (search.reason or "incomplete"))
        t = self._clock()
        self.last_paths = [(h.type_name, h.path) for h in search.paths[:10]]
        self._outbox.add_holders(t, started, search.paths)

    # ---------------------------------------------------------------- helpers --
    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        self._working += 1
        try:
            yield
        finally:
            self._working -= 1

    @contextlib.contextmanager
    def _window_work(self) -> Iterator[None]:
        """The window's own bookkeeping in the agent thread: metered, paid, added to its stage (not a run)."""
        with Meter() as meter:
            yield
        self._budget.charge(meter.cpu)
        self._ledger.add(STAGE_ALLOCATION_WINDOW, meter.cpu, runs=0)

    @contextlib.contextmanager
    def _run(self, stage: str, reason: str) -> Iterator[Meter]:
        """Run a piece of the stage's own work: marked busy, metered, paid from the budget, recorded as a run."""
        meter = Meter(wall_clock=self._clock)
        outcome = "done"
        with self._busy():
            try:
                with meter:
                    yield meter
            except BaseException as exc:
                outcome = "failed: %s" % type(exc).__name__
                raise
            finally:
                self._budget.charge(meter.cpu)
                self._ledger.record(StageRun(stage, reason, meter.started, meter.ended or self._clock(), meter.cpu,
                                             0.0, outcome))
