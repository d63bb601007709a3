"""The always-on watch: process readings, memory at task ends, suspicion. Stdlib-only.

Cheap by construction: a sample every interval (RSS, heap blocks, gc
counters, fds, glibc's arena, USS one time in ``USS_EVERY``) and, at a read
task's end, one RSS read and one ``sys.getallocatedblocks()`` (~25-50 µs in
all in a real worker, where the caches are cold after the task). Every task
is read while that costs at most a small share of the task (1 % while a
process is young, 0.1 % after); else one task in N, at both ends, and the
other tasks cost a dictionary entry and a row.
The two suspicion rings (RSS and heap blocks after each read task) are the
agent's early, in-process signal; the real verdict is the analysis's.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from random import Random
from typing import Any, NamedTuple

from bilge.agent.outbox import Outbox
from bilge.samplers import containers as container_sampler
from bilge.samplers import process as proc_sampler
from bilge.samplers import wallclock
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
# Memory (RSS and heap blocks) is read after every task while a read costs
# at most a share of a task: YOUNG_READ_SHARE during a process's first
# FULL_READ_TASKS tasks (where a leak is confirmed and attributed per call),
# READ_SHARE after. Past it, one task in about N is read, at both ends (its
# own delta stays exact), N chosen so the average per task stays at that
# share, at most MAX_READ_EVERY (MAX_YOUNG_READ_EVERY while young). The gaps
# between read tasks are random, so a repeating task order cannot lock the
# reads onto one name. A task's share is weighed against the larger of its
# own duration and the process's CPU time per task (Celery's own work per
# message included): what the reads take from throughput and from CPU.
YOUNG_READ_SHARE = 0.01
READ_SHARE = 0.001
MAX_YOUNG_READ_EVERY = 8
MAX_READ_EVERY = 64
FULL_READ_TASKS = 3000
# One read in this many is timed where it happens (the task's thread, caches
# cold after the task: two to three times what the same read costs in the
# agent's own thread).
READ_TIMING_EVERY = 16


class TaskReading(NamedTuple):
    """One finished task as the other stages see it (no reference to the task itself).

    A named tuple, not a dataclass: one is built on every task end, in the
    host's task thread, and a tuple costs a fraction of a frozen dataclass.
    ``rss`` and ``blocks`` are None for the tasks whose memory was not read.
    """

    name: str
    seconds: float
    rss: int | None
    blocks: int | None
    blocks_delta: int | None


_new_tuple = tuple.__new__


class Watch:
    """Samples the process every tick and reads its memory after every task.

    Args:
        outbox: where rows go.
        paused: True while the agent's own deeper work runs in the process
            (its readings then say nothing about the process's trend).
        clock: wall clock.
    """

    def __init__(self, outbox: Outbox, paused: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = wallclock.now,
                 cpu_clock: Callable[[], float] = time.process_time,
                 thread_clock: Callable[[], float] = time.thread_time) -> None:
        self._outbox = outbox
        self._add_row = outbox.add_task
        self._paused = paused
        # Bumped by the agent after each of its own counting stages (see
        # own_work); the rings re-base across a change.
        self._own_work = 0
        self._own_work_seen = 0
        # The task rows' buffers grow to their high-water mark in the first
        # flush intervals: ~1 MiB of RSS in a process of very short tasks.
        outbox.tasks.on_grow = self.own_work
        self._clock = clock
        # Task times in the task hooks: the C clock plus the anchor's offset
        # when the clock is the run's wall clock (a Python clock is one more
        # call at each task end, where cold caches make every call count).
        self._task_clock, self._task_offset = ((time.monotonic, wallclock.offset()) if clock is wallclock.now
                                               else (clock, 0.0))
        self._cpu_clock = cpu_clock
        self._thread_clock = thread_clock
        self._rss = proc_sampler.RssReader()
        self.malloc = proc_sampler.MallocStats()
        self.rss_suspicion = Suspicion()
        # Opens windows only: recycling and fleet state judge memory (RSS).
        self.heap_suspicion = Suspicion(MIN_HEAP_GROWTH)
        self._running: dict[Any, tuple[str, float, int | None, int, int | None, bool,
                                       tuple[tuple[str, ...], ...], int | None]] = {}
        # Module-level containers seen growing (set by the container stage):
        # their items are counted around each read task.
        self.counted: tuple[tuple[str, ...], ...] = ()
        self.tasks_done = 0
        # (full collections seen, heap blocks at the first task end after the
        # latest, that task's number): the floor the analysis judges garbage
        # by (analysis/garbage.py).
        self.floor: tuple[int, int | None, int | None] = (proc_sampler.FULL_GC[0][0], None, None)
        # A floor read between tasks (after the explain stage's own
        # collection), replaced at the next task end.
        self.floor_between = False
        self.last_rss: int | None = None
        self.last_blocks: int | None = None
        self.last_fds: int | None = None
        self.last_heap_blocks: int | None = None
        self.sampled_rss: int | None = None
        self.sampled_uss: int | None = None
        self._samples_taken = 0
        # Memory is read on one task in about read_every (see note_read_cost);
        # the next read task is the one numbered _next_read.
        self.read_every = 1
        self._next_read = 0
        # The latest timings of a read: their median is the cost (a thread
        # switch in the middle of one would count the switch as the read's).
        self._read_costs: deque[float] = deque(maxlen=5)
        self._random = Random(0x6B11)
        # Mean task duration (moving) and the process's CPU time per task
        # (moving, from the samples): what the reads' cost is weighed against.
        self.task_seconds = 0.0
        self.cpu_per_task = 0.0
        self._cpu_at: tuple[float, int] | None = None
        self._reads = 0
        # Tasks done when memory was last read at a task's end (0: the first
        # task has no reading before it, as in a fresh process).
        self._read_end_at = 0

    # ----------------------------------------------------------- task thread --
    def task_started(self, key: Any, name: str) -> None:
        """Remember the task's start; a read task whose previous task was not read reads memory now too."""
        running = self._running
        if len(running) >= MAX_RUNNING:
            running.pop(next(iter(running)))
        counted = self.counted
        t0 = self._task_clock() + self._task_offset
        if self.read_every == 1 and self._read_end_at == self.tasks_done:
            # Memory is read once per task, at its end: what happens between
            # tasks is Celery's own bookkeeping, the same for every task name.
            running[key] = (name, t0, self.last_rss, proc_sampler.GC_RUNS[0], self.last_blocks, True,
                            counted, container_sampler.count(counted) if counted else None)
        elif self.read_every == 1 or self.tasks_done + 1 >= self._next_read:
            # A sampled read task (the one numbered _next_read), or the first
            # read after sparse reads: the last reading is some tasks old, and
            # the growth since would be charged to this task.
            running[key] = (name, t0, self._rss.read(), proc_sampler.GC_RUNS[0], proc_sampler.heap_blocks(), True,
                            counted, container_sampler.count(counted) if counted else None)
        else:
            # Most tasks of an old process: the name and the times only.
            running[key] = (name, t0, None, proc_sampler.GC_RUNS[0], None, False, (), None)

    def task_finished(self, key: Any, failed: bool = False) -> TaskReading | None:
        """Read memory after a read task, keep every task's row and feed the suspicion rings."""
        started = self._running.pop(key, None)
        if started is None:
            return None
        name, t0, rss0, gc0, blocks0, read, counted, items0 = started
        self.tasks_done += 1
        done = self.tasks_done
        blocks1: int | None = None
        rss1: int | None = None
        items1: int | None = None
        if read:
            self._reads += 1
            timed_read = self._reads % READ_TIMING_EVERY == 1
            t_read = self._thread_clock() if timed_read else 0.0
            blocks1 = proc_sampler.heap_blocks()
            rss1 = self._rss.read()
            # The same containers as at the start, else the delta means nothing.
            if items0 is not None and counted is self.counted:
                items1 = container_sampler.count(counted)
            if timed_read:
                self.note_read_cost(self._thread_clock() - t_read)
            self.last_blocks, self.last_rss = blocks1, rss1
            self._read_end_at = done
            if self._own_work != self._own_work_seen or self._paused():
                self._own_work_seen = self._own_work
                self.rss_suspicion.gap()
                self.heap_suspicion.gap()
            else:
                self.rss_suspicion.add(rss1, done)
                self.heap_suspicion.add(blocks1, done)
            every = self.read_every
            if every > 1:
                # Gaps of 1 .. 2N-1 tasks: N on average, never in step with the host's order.
                self._next_read = done + self._random.randrange(1, 2 * every)
        full = proc_sampler.FULL_GC[0][0]
        if full != self.floor[0] or self.floor_between:
            # The first task end after a full collection: its heap is what
            # survived the collection, plus at most this task's own garbage
            # (at the collection itself the running task's temporaries
            # count too, thousands of blocks for a parsed payload).
            self.floor = (full, blocks1 if blocks1 is not None else proc_sampler.heap_blocks(), done)
            self.floor_between = False
        now = self._task_clock() + self._task_offset
        if done <= FULL_TASKS or not (done // TASK_BURST) % TASK_DUTY:
            self._add_row(done, name, t0, now, rss0, rss1, blocks0, blocks1, failed,
                                  proc_sampler.GC_RUNS[0] - gc0, items0 if items1 is not None else None, items1)
        seconds = now - t0 if now > t0 else 0.0
        self.task_seconds += (seconds - self.task_seconds) * (0.01 if self.task_seconds else 1.0)
        # tuple.__new__ builds the named tuple in C (its own __new__ is Python: one more call).
        return _new_tuple(TaskReading, (name, seconds, rss1, blocks1,
                                        None if blocks0 is None or blocks1 is None else blocks1 - blocks0))

    # ---------------------------------------------------------- agent thread --
    def own_work(self) -> None:
        """The agent just took memory for itself: one of its counting stages ran (a census, a container or
        descriptor scan), a young process's flush, or the task rows' buffer grew.

        Their bookkeeping stays in the process: the type counts kept to
        compare with, the containers and modules found, the descriptors'
        names. In a process doing nothing but empty tasks, that alone
        raised the heap by ~5,000 blocks over its first few thousand tasks:
        enough for the heap ring to call it suspect and open windows in a
        worker that does not leak. The rings skip the next reading and
        re-base across the stage (``Suspicion.gap``), as across an
        explain episode; what a leak adds meanwhile is lost only for the
        tasks between two readings.
        """
        self._own_work += 1

    def sample(self) -> None:
        """One process sample."""
        uss = pss = None
        if self._samples_taken % USS_EVERY == 0:
            uss, pss = proc_sampler.read_uss_pss()
            self.sampled_uss = uss
        self._samples_taken += 1
        g0, g1, g2, collections, collected = proc_sampler.gc_reading()
        malloc_used, malloc_free = self.malloc.read()
        rss = self._rss.read()
        self.last_fds = proc_sampler.count_fds()
        self.last_heap_blocks = proc_sampler.heap_blocks()
        self._note_cpu()
        self._outbox.add_sample(
            (self._clock(), rss, uss, pss, self.last_heap_blocks, g0, g1, g2, collections, collected,
             self.last_fds, proc_sampler.thread_count(), self.tasks_done, malloc_used, malloc_free)
            + proc_sampler.gc_state() + (self.floor if self.tasks_done else proc_sampler.FULL_GC[0] + (None,)))
        if self.tasks_done == 0:
            # A process that runs no tasks is judged on time.
            self.rss_suspicion.add(rss)
        self.sampled_rss = rss

    def _note_cpu(self) -> None:
        """The process's CPU time per task since the previous sample (moving), when tasks ran."""
        cpu, tasks = self._cpu_clock(), self.tasks_done
        if self._cpu_at is not None and tasks > self._cpu_at[1]:
            per_task = (cpu - self._cpu_at[0]) / (tasks - self._cpu_at[1])
            self.cpu_per_task += (per_task - self.cpu_per_task) * (0.3 if self.cpu_per_task else 1.0)
        self._cpu_at = (cpu, tasks)

    def note_read_cost(self, cost: float) -> None:
        """Read memory on every task while that is cheap; on one task in about N when it is not.

        A read is ``sys.getallocatedblocks()``, which visits every pymalloc
        pool (~3 µs per 100,000 blocks: ~10-25 µs for a usual Celery child
        with cold caches, 120 µs for one holding a million objects, and it
        evicts the task's cache lines), and one RSS read (a system call).
        ``cost`` is one read's CPU time in the task's thread (its CPU clock:
        on a busy machine the wall clock would count what the OS ran
        meanwhile); the median of the latest five is the read's cost.
        """
        self._read_costs.append(cost)
        read_cost = sorted(self._read_costs)[len(self._read_costs) // 2]
        per_task = max(self.task_seconds, self.cpu_per_task)
        if per_task <= 0:
            # No task has run yet: nothing to weigh the cost against.
            self.read_every = 1
            return
        young = self.tasks_done < FULL_READ_TASKS
        allowed = (YOUNG_READ_SHARE if young else READ_SHARE) * per_task
        if read_cost <= allowed:
            self.read_every = 1
        else:
            # A read task reads at both ends.
            every = min(MAX_YOUNG_READ_EVERY if young else MAX_READ_EVERY,
                        max(2, math.ceil(2 * read_cost / allowed)))
            if self.read_every == 1:
                self._next_read = self.tasks_done + self._random.randrange(1, 2 * every)
            self.read_every = every

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
                 clock: Callable[[], float] = wallclock.now, monotonic: Callable[[], float] = time.monotonic) -> None:
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
