"""The always-on watch: process readings, memory after every task, suspicion. Stdlib-only.

Cheap by construction: a sample every interval (RSS, heap blocks, gc
counters, fds, glibc's arena, USS one time in ``USS_EVERY``) and, at every
task end, one RSS read and one ``sys.getallocatedblocks()`` (~12 µs in all;
past a process's first 3000 tasks, the heap is read on one task in N when
that read costs more than 0.25 % of a task, see ``note_blocks_cost``).
The two suspicion rings (RSS and heap blocks after each task) are the
agent's early, in-process signal; the real verdict is the analysis's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bilge.agent.outbox import Outbox
from bilge.samplers import process as proc_sampler
from bilge.samplers.suspicion import MIN_HEAP_GROWTH, Suspicion

# smaps_rollup makes the kernel walk every mapping (1 ms at 50 MB, 15 ms at
# 800 MB): read it on one sample in USS_EVERY only.
USS_EVERY = 10
# Tasks started but never finished (a hard time limit, a thread pool task
# abandoned) are forgotten beyond this many, oldest first.
MAX_RUNNING = 10000
# Long-lived processes: past FULL_TASKS tasks only one burst of TASK_BURST
# consecutive tasks in every TASK_BURST * TASK_DUTY is stored (consecutive,
# so the attribution's windows stay whole).
FULL_TASKS = 50_000
TASK_BURST = 2_000
TASK_DUTY = 10
# sys.getallocatedblocks() is read on every task during a process's first
# FULL_BLOCKS_TASKS tasks; after, while it costs at most BLOCKS_SHARE of the
# mean task's time, else on one task in N, N chosen so the average per task
# stays at that share (a sampled task reads twice), at most MAX_BLOCKS_EVERY.
BLOCKS_SHARE = 0.0025
MAX_BLOCKS_EVERY = 16
FULL_BLOCKS_TASKS = 3000
# One task hook in this many is timed (CPU of the task's thread: waiting for
# the GIL is not the hook's cost), to account the hooks' own cost without
# paying for a clock read on every task.
HOOK_TIMING_EVERY = 64


@dataclass(frozen=True)
class TaskReading:
    """One finished task as the other stages see it (no reference to the task itself)."""

    name: str
    seconds: float
    rss: int | None
    blocks: int | None
    blocks_delta: int | None


class Watch:
    """Samples the process every tick and reads its memory after every task.

    Args:
        outbox: where rows go.
        paused: True while the agent's own deeper work runs in the process
            (its readings then say nothing about the process's trend).
        clock: wall clock.
    """

    def __init__(self, outbox: Outbox, paused: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.time) -> None:
        self._outbox = outbox
        self._paused = paused
        self._clock = clock
        self._rss = proc_sampler.RssReader()
        self.malloc = proc_sampler.MallocStats()
        self.rss_suspicion = Suspicion()
        # Opens windows only: recycling and fleet state judge memory (RSS).
        self.heap_suspicion = Suspicion(MIN_HEAP_GROWTH)
        self._running: dict[Any, tuple[str, float, int | None, int, int | None]] = {}
        self.tasks_done = 0
        self.last_rss: int | None = None
        self.last_blocks: int | None = None
        self.last_fds: int | None = None
        self.last_heap_blocks: int | None = None
        self.sampled_rss: int | None = None
        self._samples_taken = 0
        self.hook_seconds = 0.0
        # Heap blocks are read on one task in blocks_every (see note_blocks_cost).
        self.blocks_every = 1
        self._blocks_cost = 0.0
        # Mean task duration (moving), what the heap reads' cost is weighed against.
        self.task_seconds = 0.0

    # ----------------------------------------------------------- task thread --
    def task_started(self, key: Any, name: str) -> None:
        """Remember the task's start (its "before" is the previous task's "after")."""
        if len(self._running) >= MAX_RUNNING:
            self._running.pop(next(iter(self._running)))
        # Memory is read once per task, at its end: what happens between
        # tasks is Celery's own bookkeeping, the same for every task name.
        every = self.blocks_every
        if every == 1:
            blocks0 = self.last_blocks
        elif not (self.tasks_done + 1) % every:
            # A sampled task reads the heap at both ends: its own delta is exact.
            blocks0 = proc_sampler.heap_blocks()
        else:
            blocks0 = None
        self._running[key] = (name, self._clock(), self.last_rss, proc_sampler.GC_RUNS[0], blocks0)

    def task_finished(self, key: Any, failed: bool = False) -> TaskReading | None:
        """Read memory after the task, keep its row and feed the suspicion rings."""
        started = self._running.pop(key, None)
        if started is None:
            return None
        # Not the first task: its one-off costs (first reads, lazy set-up)
        # would be counted HOOK_TIMING_EVERY times over.
        timed = self.tasks_done % HOOK_TIMING_EVERY == HOOK_TIMING_EVERY - 1
        t_hook = time.thread_time() if timed else 0.0
        name, t0, rss0, gc0, blocks0 = started
        self.tasks_done += 1
        sampled = self.blocks_every == 1 or blocks0 is not None
        blocks1 = proc_sampler.heap_blocks() if sampled else None
        rss1 = self._rss.read()
        now = self._clock()
        self.last_blocks, self.last_rss = blocks1, rss1
        if self.tasks_done <= FULL_TASKS or not (self.tasks_done // TASK_BURST) % TASK_DUTY:
            self._outbox.add_task((self.tasks_done, name, t0, now, rss0, rss1, blocks0, blocks1, int(failed),
                                   proc_sampler.GC_RUNS[0] - gc0))
        if self._paused():
            self.rss_suspicion.gap()
            self.heap_suspicion.gap()
        else:
            self.rss_suspicion.add(rss1)
            if blocks1 is not None:
                self.heap_suspicion.add(blocks1)
        if timed:
            # Estimated from one timed end hook in HOOK_TIMING_EVERY (the
            # start hook reads nothing: its cost is noise beside this one).
            self.hook_seconds += (time.thread_time() - t_hook) * HOOK_TIMING_EVERY
        seconds = max(0.0, now - t0)
        self.task_seconds += (seconds - self.task_seconds) * (0.01 if self.task_seconds else 1.0)
        return TaskReading(name, seconds, rss1, blocks1,
                           None if blocks0 is None or blocks1 is None else blocks1 - blocks0)

    # ---------------------------------------------------------- agent thread --
    def sample(self) -> None:
        """One process sample."""
        uss = pss = None
        if self._samples_taken % USS_EVERY == 0:
            uss, pss = proc_sampler.read_uss_pss()
        self._samples_taken += 1
        g0, g1, g2, collections, collected = proc_sampler.gc_reading()
        malloc_used, malloc_free = self.malloc.read()
        rss = self._rss.read()
        self.last_fds = proc_sampler.count_fds()
        # CPU time of this thread: on a busy machine the wall clock would
        # count the time the OS ran something else as the read's cost.
        t = time.thread_time()
        self.last_heap_blocks = proc_sampler.heap_blocks()
        self.note_blocks_cost(time.thread_time() - t)
        self._outbox.add_sample(
            (self._clock(), rss, uss, pss, self.last_heap_blocks, g0, g1, g2, collections, collected,
             self.last_fds, proc_sampler.thread_count(), self.tasks_done, malloc_used, malloc_free)
            + proc_sampler.gc_state())
        if self.tasks_done == 0:
            # A process that runs no tasks is judged on time.
            self.rss_suspicion.add(rss)
        self.sampled_rss = rss

    def note_blocks_cost(self, cost: float) -> None:
        """Read heap blocks on every task while that is cheap; on one task in N when the heap is big.

        ``sys.getallocatedblocks()`` visits every pymalloc pool: ~3 µs per
        100,000 blocks (~10-15 µs for a usual Celery child, 120 µs for one
        holding a million objects), the largest per-task cost bilge has
        (and it evicts the task's cache lines). Sampled tasks read the heap
        at both ends, so their
        own deltas stay exact for the attribution. Past the first
        FULL_BLOCKS_TASKS tasks the cost is weighed against the mean
        task's duration: at most ``BLOCKS_SHARE`` of it.
        """
        self._blocks_cost += 0.2 * (cost - self._blocks_cost)
        if self.task_seconds <= 0:
            return  # no task has run yet: nothing to weigh the cost against
        if self.tasks_done < FULL_BLOCKS_TASKS:
            # A young process reads the heap on every task: its first
            # thousands of tasks are where a leak is confirmed and
            # attributed, per call (sampled reads there cost the zoo's
            # benign cases false alarms and its leaks their task).
            self.blocks_every = 1
            return
        allowed = BLOCKS_SHARE * self.task_seconds
        if self._blocks_cost <= allowed:
            self.blocks_every = 1
        else:
            self.blocks_every = min(MAX_BLOCKS_EVERY, max(2, math.ceil(2 * self._blocks_cost / allowed)))

    def close(self) -> None:
        """Release the /proc handle."""
        self._rss.close()


# What open descriptors point to is read again once their number moved by
# this many (or a tenth), at most once per census interval.
FD_SCAN_STEP = 4


class FdScan:
    """Names what the open descriptors point to, whenever their number has moved (a budgeted stage).

    Args:
        outbox: where the scans go.
        watch: the latest descriptor count and tasks done.
        min_interval: seconds between two scans at least.
        clock: wall clock; monotonic: for intervals.
    """

    def __init__(self, outbox: Outbox, watch: Watch, min_interval: float = 1.0,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._outbox, self._watch = outbox, watch
        self._min_interval = min_interval
        self._clock, self._monotonic = clock, monotonic
        self._born = monotonic()
        self._count: int | None = None
        self._next = 0.0
        self.last_seconds = 0.001

    def due(self) -> bool:
        """True when the descriptor count moved enough since the last scan and the interval has passed."""
        fds = self._watch.last_fds
        if fds is None or self._monotonic() < self._next:
            return False
        last = self._count
        return last is None or abs(fds - last) >= max(FD_SCAN_STEP, last // 10)

    def run(self) -> None:
        """Scan the descriptors now."""
        self._count = self._watch.last_fds
        age = self._monotonic() - self._born
        self._next = self._monotonic() + min(max(self._min_interval, age / 60.0), 600.0)
        self._outbox.fd_targets.append((self._clock(), self._watch.tasks_done, proc_sampler.fd_targets()))
