"""The agent: a daemon thread per process that samples, censuses and flushes.

Stdlib-only. Design constraints, each learned the hard way by other tools:

- **Never crash the host.** Every entry point catches everything; errors are
  logged once per source, recorded in the store, and a source that keeps
  failing is switched off.
- **Never deadlock at fork.** SQLite has process-global mutexes; a fork taken
  while our thread is inside SQLite would hand the child a held mutex. The
  ``before`` fork handler therefore takes ``_db_lock`` (which every store
  write holds), so a fork always happens between two flushes.
- **Bounded memory.** Buffers are fixed-size deques; what overflows is
  counted, not kept.
- **No references to user objects.** The census returns names and numbers
  only; task hooks keep the task *name*, never the task or its arguments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from bilge.agent import recycle
from bilge.samplers import census as census_sampler
from bilge.samplers import holders as holder_sampler
from bilge.samplers import process as proc_sampler
from bilge.samplers.allocations import AllocationWindow, WindowResult, prepare_window
from bilge.samplers.budget import CpuBudget
from bilge.samplers.native_sites import NativeWindow
from bilge.samplers.suspicion import MIN_HEAP_GROWTH, Suspicion
from bilge.store.writer import StoreWriter

log = logging.getLogger("bilge.agent")

# Consecutive failures after which a sampler is switched off for good.
MAX_FAILURES = 5
# Tasks started but never finished (a hard time limit, a thread pool task
# abandoned) are forgotten beyond this many, oldest first.
MAX_RUNNING = 10000
# How long fork may wait for an in-progress flush. Past it the fork goes
# ahead and the child runs without an agent, rather than risk inheriting a
# lock held by SQLite in the middle of a call.
FORK_WAIT = 1.0
# Long-lived processes: what the store keeps must grow slower than linearly.
# Sample and census intervals stretch with the process's age (a census
# every ~age/60 s means their number grows with log(age)), and past
# FULL_TASKS tasks only one burst of TASK_BURST consecutive tasks in every
# TASK_BURST * TASK_DUTY is recorded (consecutive, so the attribution's
# windows stay whole).
MAX_SAMPLE_INTERVAL = 10.0
USS_EVERY = 10
# Allocation windows (tracemalloc) per process: at most this many, at least
# this far apart, so their cost stays a small share of a long run.
MAX_WINDOWS = 3
WINDOW_REOPEN_AFTER = 1800.0
# When a window's surviving traced bytes explain less than this share of the
# RSS growth per task, the memory grows outside Python's allocators: a
# native window (glibc in-use per user line) follows, for the same tasks' worth.
NATIVE_TRACED_SHARE = 0.5
# Census counts from after this many tasks are the baseline that growing
# types are measured against when the agent looks for their holders.
BASELINE_AFTER_TASKS = 20
MAX_HOLDER_TYPES = 5
MIN_HOLDER_GROWTH = 20
# Holder searches repeat as the process doubles its task count (more leaked
# objects make the holding container stand out), at most this many times.
MAX_HOLDER_SEARCHES = 4
HOLDER_SECONDS = 0.5
HOLDER_INDEX_BYTES = 24 << 20
# What open descriptors point to is read again once their number moved by
# this many (or a tenth), at most once per census interval.
FD_SNAPSHOT_STEP = 4
# A recycle is confirmed once the child, after the policy first said go,
# ran this many more tasks and its RSS grew by CONFIRM_GROWTH more.
CONFIRM_TASKS = 200
CONFIRM_GROWTH = 1 << 20
# Over the soft limit, the recycling policy is consulted at every this many
# task boundaries (it runs the trend test: ~100 µs).
SOFT_LIMIT_EVERY = 8
FULL_TASKS = 50_000
TASK_BURST = 2_000
TASK_DUTY = 10


@dataclass(frozen=True)
class AgentConfig:
    """What the agent needs; read from the environment by ``bilge run``.

    Args:
        data_dir: the bilge data directory.
        run_id: the run this process belongs to.
        sample_interval: seconds between process samples.
        census_budget: the share of one core the census may use (a token
            bucket enforces it: the census is skipped when it would exceed it).
        census_min_interval: seconds; the census never runs more often.
        sizing_every: at most one census in this many also sizes objects;
            the others only count them (about four times cheaper).
        buffer_limit: rows kept between flushes before new ones are dropped.
        show_values: holder searches render a few held items (``--show-values``).
        explain: open allocation windows and search holders once suspect
            (``--no-explain`` turns the explain stage off; watching and
            deciding stay on).
        recycle: when a leaking prefork child leaves after its task
            (``bilge run --recycle``; see ``agent.recycle``).
    """

    data_dir: str
    run_id: int
    sample_interval: float = 0.5
    census_budget: float = 0.005
    census_min_interval: float = 1.0
    sizing_every: int = 5
    buffer_limit: int = 20000
    show_values: bool = False
    explain: bool = True
    recycle: recycle.RecyclePolicy = recycle.RecyclePolicy()


class Agent:
    """Samples one process; survives forks by re-initialising in the child."""

    def __init__(self, config: AgentConfig, role: str = "main", parent_id: int | None = None) -> None:
        self.config = config
        self.role = role
        self.parent_id = parent_id
        self.pid = os.getpid()
        self.process_id: int | None = None
        self._writer = StoreWriter(config.data_dir, config.run_id)
        self._rss = proc_sampler.RssReader()
        self._malloc = proc_sampler.MallocStats()
        self._db_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: deque[tuple[Any, ...]] = deque(maxlen=config.buffer_limit)
        self._tasks: deque[tuple[Any, ...]] = deque(maxlen=config.buffer_limit)
        self._running: dict[Any, tuple[str, float, int | None, int, int | None]] = {}
        self._errors: list[tuple[float, str, str]] = []
        self._failures: dict[str, int] = {}
        self._disabled: set[str] = set()
        self._pending_role: str | None = None
        # (t, tasks done, objects, duration, types) of censuses not yet written:
        # a scheduled census and the explain stage's own counts may both
        # come between two flushes.
        self._pending_censuses: deque[tuple[Any, ...]] = deque(maxlen=8)
        self._next_census = 0.0
        self._census = census_sampler.Census()
        # A small burst lets a fresh process take its first sizing census at
        # once (a 60k-object Celery child takes ~40 ms) without paying much
        # more than census_budget even over a run of a few seconds.
        self._budget = CpuBudget(config.census_budget, burst=0.08)
        self._cost = {True: 0.0, False: 0.0}
        self._since_sized = config.sizing_every  # the first census sizes
        self.tasks_done = 0
        self.dropped_rows = 0
        self._fork_lock_held = False
        self._last_blocks: int | None = None
        self._last_rss: int | None = None
        self._samples_taken = 0
        self._born = time.monotonic()
        self._suspicion = Suspicion()
        # Opens windows only: recycling and fleet state judge memory (RSS).
        self._heap_suspicion = Suspicion(MIN_HEAP_GROWTH)
        self._own_work = 0  # > 0 while the agent thread explains (compare, trim, holder search)
        self._window = AllocationWindow()
        self._native = NativeWindow(self._malloc.in_use)
        self._windows_opened = 0
        self._last_window = -WINDOW_REOPEN_AFTER
        self._pending_windows: list[WindowResult] = []
        self._pending_holders: list[tuple[float, float, str, str, str, str | None, int | None, int, str | None]] = []
        self._baseline: dict[str, int] | None = None
        self._holder_searches = 0
        self._next_holder_search = 0
        self._latest_counts: dict[str, int] = {}
        self._pending_fds: deque[tuple[float, int, tuple[tuple[str, int], ...]]] = deque(maxlen=100)
        self._fd_snapshot_count: int | None = None
        self._next_fd_snapshot = 0.0
        self._hard_limit: int | None = None
        self._facts: dict[str, int] = {}
        self._suspect_stored: int | None = None
        self._recycle_lock = threading.Lock()
        self._recycle_candidate: tuple[int, int] | None = None
        self._recycle_reason: str | None = None
        self._recycle_refused: str | None = None
        self._last_sites: list[tuple[str, int, int]] = []
        self._last_paths: list[tuple[str, str]] = []
        self._previous_counts: dict[str, int] = {}

    # ------------------------------------------------------------ lifecycle --
    def start(self) -> None:
        """Start the sampling thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bilge-agent", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and write what is buffered (bounded by ``timeout``)."""
        self._stop.set()
        self._window.abort()
        self._native.abort()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.flush(final=True)

    def set_role(self, role: str) -> None:
        """Name this process's role (e.g. ``celery-main``), stored on next flush."""
        if role != self.role:
            self.role = role
            self._pending_role = role

    def note_fact(self, column: str, value: int | None) -> None:
        """Remember a fact about this process (``exit_code``, ``celery_max_memory_kb``), stored on next flush."""
        if value is not None and column in ("exit_code", "celery_max_memory_kb", "suspect"):
            self._facts[column] = int(value)

    # ----------------------------------------------------------- task hooks --
    def task_started(self, key: Any, name: str) -> None:
        """Called by integrations as a task starts, in the process that runs it."""
        try:
            if len(self._running) >= MAX_RUNNING:
                self._running.pop(next(iter(self._running)))
            # Memory is read once per task, at its end: a task's "before" is
            # the previous task's "after" (what happens between tasks is
            # Celery's own bookkeeping, the same for every task name), which
            # halves the per-task cost (sys.getallocatedblocks() walks every
            # pymalloc pool: ~5 µs at a 60 MB heap).
            self._running[key] = (name, time.time(), self._last_rss, proc_sampler.GC_RUNS[0], self._last_blocks)
        except Exception as exc:  # noqa: BLE001 - the host's task must run regardless
            self._record_error("task_started", exc)

    def task_finished(self, key: Any, failed: bool = False) -> None:
        """Called as a task ends; records its memory deltas."""
        try:
            started = self._running.pop(key, None)
            if started is None:
                return
            name, t0, rss0, gc0, blocks0 = started
            self.tasks_done += 1
            if self.tasks_done > FULL_TASKS and (self.tasks_done // TASK_BURST) % TASK_DUTY:
                return
            if len(self._tasks) == self._tasks.maxlen:
                self.dropped_rows += 1
            blocks1 = proc_sampler.heap_blocks()
            rss1 = self._rss.read()
            self._last_blocks, self._last_rss = blocks1, rss1
            self._tasks.append(
                (self.tasks_done, name, t0, time.time(), rss0, rss1, blocks0, blocks1, int(failed),
                 proc_sampler.GC_RUNS[0] - gc0)
            )
            if self._own_work or self._window.active or self._native.active:
                # Our tables and searches move memory too: not the process's trend.
                self._suspicion.gap()
                self._heap_suspicion.gap()
            else:
                self._suspicion.add(rss1)
                self._heap_suspicion.add(blocks1)
            if self._window.active:
                self._window.on_task_finished()
            if self._native.active:
                self._native.on_task_finished()
            policy = self.config.recycle
            if (policy.enabled and self._recycle_reason is None and rss1 is not None and rss1 >= policy.soft_limit
                    and self.tasks_done >= policy.min_tasks and not self.tasks_done % SOFT_LIMIT_EVERY):
                # Over the soft limit: decide here, at the task boundary, not
                # up to a sample interval later (a fast leak overshoots).
                self._consider_recycle()
            if self._recycle_reason is not None and self._recycle_refused is None:
                # In task_postrun, in the child: it leaves before its next job.
                self._recycle_refused = recycle.request_child_exit() or ""
        except Exception as exc:  # noqa: BLE001
            self._record_error("task_finished", exc)

    # ------------------------------------------------------------- the loop --
    def _loop(self) -> None:
        try:
            self._register()
        except Exception as exc:  # noqa: BLE001 - no store, no agent; the host runs on
            self._record_error("register", exc)
            self._log_once("register", exc)
            return
        while not self._stop.wait(self._interval(self.config.sample_interval, 600.0, MAX_SAMPLE_INTERVAL)):
            self._guarded("sample", self._sample)
            self._guarded("fds", self._sample_fd_targets)
            self._guarded("state", self._note_state)
            if time.monotonic() >= self._next_census:
                self._guarded("census", self._run_census)
            if self.config.recycle.enabled and self.role == "celery-child":
                self._guarded("recycle", self._consider_recycle)
            if self.config.explain:
                if self._baseline is None and self.tasks_done >= BASELINE_AFTER_TASKS:
                    self._guarded("census", self._recount)
                self._guarded("window", self._tend_window)
            self._guarded("flush", self.flush)

    def _register(self) -> None:
        role = self.role
        with self._db_lock:
            argv = " ".join(sys.argv)[:2000] if hasattr(sys, "argv") else ""
            self.process_id = self._writer.register_process(os.getpid(), os.getppid(), self.parent_id, role, argv)
        if self._pending_role == role:
            # Otherwise set_role() ran during the insert: keep it pending.
            self._pending_role = None
        self._next_census = time.monotonic() + self.config.census_min_interval

    def _sample(self) -> None:
        # smaps_rollup makes the kernel walk every mapping (1 ms at 50 MB,
        # 15 ms at 800 MB): read it on one sample in USS_EVERY only.
        uss = pss = None
        if self._samples_taken % USS_EVERY == 0:
            uss, pss = proc_sampler.read_uss_pss()
        self._samples_taken += 1
        g0, g1, g2, collections, collected = proc_sampler.gc_reading()
        malloc_used, malloc_free = self._malloc.read()
        self._samples.append(
            (time.time(), self._rss.read(), uss, pss, proc_sampler.heap_blocks(), g0, g1, g2, collections,
             collected, proc_sampler.count_fds(), proc_sampler.thread_count(), self.tasks_done, malloc_used,
             malloc_free) + proc_sampler.gc_state()
        )

    def _note_state(self) -> None:
        """Keep the agent's own live judgement in the store, for fleet queries (`celery bilge status`)."""
        suspect = int(self._suspicion.suspect())
        if suspect != self._suspect_stored:
            self._suspect_stored = suspect
            self.note_fact("suspect", suspect)

    def _consider_recycle(self) -> None:
        """Claim a recycle (with its forensic snapshot) when the policy says this child should go.

        Runs in the agent thread, and in the task thread at a boundary when
        the soft limit is passed; the lock keeps the two from both claiming.
        """
        if not self._recycle_lock.acquire(blocking=False):
            return
        try:
            self._consider_recycle_locked()
        finally:
            self._recycle_lock.release()

    def _consider_recycle_locked(self) -> None:
        if self._recycle_reason is not None:
            if self._recycle_refused:
                with self._db_lock:
                    self._writer.refuse_recycle(self.process_id or 0, self._recycle_refused)
                log.warning("bilge: pid %d cannot be recycled: %s", os.getpid(), self._recycle_refused)
                self._disabled.add("recycle")
            return
        policy = self.config.recycle
        if self.role != "celery-child":
            return
        if self._hard_limit is None:
            self._hard_limit = policy.hard_limit or recycle.cgroup_memory_limit() or 0
        rss = self._last_rss if self._last_rss is not None else (self._samples[-1][1] if self._samples else None)
        age = max(1e-3, time.monotonic() - self._born)
        per_second = self._suspicion.growth_per_reading() * self.tasks_done / age
        reason = policy.decide(rss, self._suspicion.suspect(), per_second, self.tasks_done, self._hard_limit or None)
        if reason is None or self.process_id is None or rss is None:
            return
        # Confirmed, not just suspected: the growth must go on after the
        # first time the policy said go (warm-up stops, a leak does not).
        candidate = self._recycle_candidate
        if candidate is None:
            self._recycle_candidate = (self.tasks_done, rss)
            return
        if self.tasks_done < candidate[0] + CONFIRM_TASKS or rss - candidate[1] < CONFIRM_GROWTH:
            return
        now = time.time()
        snapshot = self._forensic_snapshot(reason, rss, per_second)
        with self._db_lock:
            claimed = self._writer.claim_recycle(self.process_id, now, reason, rss, self.tasks_done, snapshot,
                                                 policy.min_interval, urgent=reason.startswith("forecast"))
        if claimed:
            self._recycle_reason = reason
            log.warning("bilge: recycling pool child %d after its current task: %s", os.getpid(), reason)

    def _forensic_snapshot(self, reason: str, rss: int | None, per_second: float) -> str:
        """What this child knows about its leak, written before it leaves (names and numbers only)."""
        import json

        growing = self._growth_since_baseline()[:10]
        last = self._samples[-1] if self._samples else None
        return json.dumps({
            "reason": reason, "pid": os.getpid(), "rss": rss, "tasks_done": self.tasks_done,
            "growth_bytes_per_task": round(self._suspicion.growth_per_reading(), 1),
            "growth_bytes_per_second": round(per_second, 1), "fds": last[10] if last else None,
            "heap_blocks": last[4] if last else None,
            "growing_types": [{"type": name, "objects_added": n} for n, name in growing],
            "sites": [{"file": f, "line": n, "bytes": b} for f, n, b in self._last_sites],
            "holders": [{"type": t, "path": p} for t, p in self._last_paths],
        })

    def _sample_fd_targets(self) -> None:
        """Name what the open descriptors point to, whenever their number has moved."""
        fds = self._samples[-1][10] if self._samples else None
        now = time.monotonic()
        if fds is None or now < self._next_fd_snapshot:
            return
        last = self._fd_snapshot_count
        if last is not None and abs(fds - last) < max(FD_SNAPSHOT_STEP, last // 10):
            return
        self._fd_snapshot_count = fds
        self._next_fd_snapshot = now + self._interval(self.config.census_min_interval, 60.0, 600.0)
        self._pending_fds.append((time.time(), self.tasks_done, proc_sampler.fd_targets()))

    def _tend_window(self) -> None:
        """Open an allocation window when the process turns suspect; explain when it closes."""
        if self._native.active:
            native = _poll_or_abort(self._native)
            if native is not None:
                self._pending_windows.append(native)
        if self._window.active:
            result = _poll_or_abort(self._window)
            if result is not None:
                self._pending_windows.append(result)
                self._last_sites = [(s.file, s.line, s.size) for s in result.sites[:5]]
                with self._working():
                    # tracemalloc's tables are freed: give glibc's share back so
                    # the worker does not keep the window's peak.
                    self._malloc.trim()
                    self._guarded("holders", self._find_holders)
                    self._guarded("native window", lambda: self._follow_with_native(result))
            return
        if self.tasks_done == 0 and self._samples:
            self._suspicion.add(self._samples[-1][1])
        suspect = self._suspicion.suspect() or self._heap_suspicion.suspect()
        if (0 < self._holder_searches < MAX_HOLDER_SEARCHES and self.tasks_done >= self._next_holder_search
                and suspect):
            self._guarded("holders", self._find_holders)
        now = time.monotonic()
        if self._windows_opened < MAX_WINDOWS and now - self._last_window >= WINDOW_REOPEN_AFTER and suspect:
            self._windows_opened += 1
            self._last_window = now
            began = time.time()
            with self._working():
                if self._baseline is not None:
                    # What the window's own bookkeeping creates for good (the
                    # installed-distributions table, ctypes) is created now, before
                    # the fresh counts: else it would look like growth to the
                    # holder search that follows the window.
                    prepare_window()
                    # Fresh counts: the types still growing now are the ones the
                    # window joins to the lines that make them.
                    self._recount()
                opened = self._window.open(self._growing_types(), began)
            if not opened:
                # The host traces memory itself: no window, but holders still help.
                self._guarded("holders", self._find_holders)

    def _follow_with_native(self, result: WindowResult) -> None:
        """Open a native window when what the window traced explains too little of the RSS growth."""
        if result.status != "done" or not self._window.window_tasks or not self.tasks_done:
            return
        rss_per_task = self._suspicion.growth_per_reading()
        traced_per_task = sum(s.size for s in result.sites) / self._window.window_tasks
        if rss_per_task > 0 and traced_per_task < NATIVE_TRACED_SHARE * rss_per_task:
            self._native.open()

    def _recount(self) -> None:
        """Count objects now, whatever the census schedule (the explain stage's own counts).

        Also takes the baseline right after warm-up starts: a busy process
        may run hundreds of tasks before its next scheduled census, and
        growth measured from there would be too short to tell a leaking
        type from noise when the process turns suspect.

        The counts are stored like a scheduled census: a fast worker may
        finish its whole run between two scheduled ones, and these are then
        the only counts the analysis has to name the growing type.
        """
        self._remember_counts(self._census.take(sized=False))

    def _remember_counts(self, result: census_sampler.CensusResult) -> None:
        """Keep a census's counts for the explain stage and its row for the store."""
        self._pending_censuses.append((result.t, self.tasks_done, result.objects, result.duration, result.types))
        counts = {name: count for name, count, _ in result.types}
        if self._baseline is None and self.tasks_done >= BASELINE_AFTER_TASKS:
            self._baseline = counts
        self._previous_counts, self._latest_counts = self._latest_counts, counts

    def _growth_since_baseline(self) -> list[tuple[int, str]]:
        """(objects added, type) of the latest counts against the baseline, at least MIN_HOLDER_GROWTH, most first."""
        baseline = self._baseline or {}
        return sorted(((count - baseline.get(name, 0), name) for name, count in self._latest_counts.items()
                       if count - baseline.get(name, 0) >= MIN_HOLDER_GROWTH), reverse=True)

    def _growing_types(self) -> list[str]:
        """Types that grew since the baseline census and are still growing, specific types first."""
        if self._baseline is None:
            return []
        baseline, previous = self._baseline, self._previous_counts
        # Types still growing now, not just since the baseline: warm-up
        # growth (lazy imports, caches filling) has stopped by the time a
        # process turns suspect, a leak has not.
        growth = [(added, name) for added, name in self._growth_since_baseline()
                  if self._latest_counts[name] > previous.get(name, 0) >= baseline.get(name, 0)]
        # Specific types first (a class that piles up names the leak), then
        # the builtin containers, each by growth.
        growth.sort(key=lambda item: (item[1] in census_sampler.GENERIC_TYPES, -item[0]))
        return [name for _, name in growth[:MAX_HOLDER_TYPES]]

    @contextlib.contextmanager
    def _working(self) -> Iterator[None]:
        """Mark the agent thread's own work in the process (tasks meanwhile are not the process's trend)."""
        self._own_work += 1
        try:
            yield
        finally:
            self._own_work -= 1

    def _find_holders(self) -> None:
        """Name who keeps the types that grew since the baseline census alive."""
        if self._baseline is None:
            return
        with self._working():
            self._search_holders()

    def _search_holders(self) -> None:
        """The search itself (see _find_holders)."""
        self._holder_searches += 1
        # The next search comes after half as many tasks again: a container
        # seen holding more the second time is the growing one, and a
        # short run must still see two searches.
        self._next_holder_search = max(self.tasks_done, BASELINE_AFTER_TASKS) * 3 // 2
        started = time.time()
        self._recount()
        wanted = self._growing_types()
        if not wanted:
            return
        # Bounded well below the search's own defaults: it runs in the user's
        # worker, whose RSS keeps part of whatever peak the search reaches.
        search = holder_sampler.find_holders(wanted, max_seconds=HOLDER_SECONDS, max_index_bytes=HOLDER_INDEX_BYTES,
                                             show_values=self.config.show_values)
        # The search's bookkeeping is freed now; hand glibc's share back to
        # the OS so the host does not keep our peak (pymalloc arenas that
        # emptied are unmapped by Python itself).
        self._malloc.trim()
        if not search.complete:
            self._record_error("holders", RuntimeError(search.reason or "incomplete"))
        t = time.time()
        self._last_paths = [(h.type_name, h.path) for h in search.paths[:10]]
        for h in search.paths:
            self._pending_holders.append((t, started, h.type_name, h.path, h.root_kind, h.container_type or None,
                                          h.container_length if h.container_length >= 0 else None, h.targets,
                                          "\n".join(h.values) if h.values else None))

    def _interval(self, base: float, age_divisor: float, ceiling: float) -> float:
        age = time.monotonic() - self._born
        return min(max(base, age / age_divisor), ceiling)

    def _run_census(self) -> None:
        self._next_census = time.monotonic() + self._interval(self.config.census_min_interval, 60.0, 600.0)
        if self._window.active:
            # The window's snapshots are thousands of tuples of our own, and
            # tracemalloc would trace the census itself: count another time.
            return
        want_sized = self._since_sized >= self.config.sizing_every - 1
        if want_sized and self._budget.can_spend(self._cost[True]):
            sized = True
        elif self._budget.can_spend(self._cost[False]):
            sized = False
        else:
            return
        result = self._census.take(sized)
        self._remember_counts(result)
        self._budget.spend(result.duration)
        # Remember the last cost of each flavour: heaps change slowly.
        self._cost[sized] = result.duration
        self._since_sized = 0 if sized else self._since_sized + 1

    def flush(self, final: bool = False) -> None:
        """Write buffered rows in one transaction; safe from any thread."""
        if self.process_id is None or self.pid != os.getpid():
            return
        acquired = self._db_lock.acquire(timeout=5.0)
        if not acquired:
            return
        try:
            samples = _drain(self._samples)
            tasks = _drain(self._tasks)
            censuses = _drain(self._pending_censuses)
            errors, self._errors = self._errors, []
            role, self._pending_role = self._pending_role, None
            windows, self._pending_windows = self._pending_windows, []
            holders, self._pending_holders = self._pending_holders, []
            fd_targets = _drain(self._pending_fds)
            facts, self._facts = self._facts, {}
            if samples or tasks or censuses or role or errors or windows or holders or fd_targets or facts or final:
                self._writer.flush(
                    self.process_id, samples, tasks, censuses, role, errors,
                    ended=time.time() if final else None, windows=windows, holders=holders, fd_targets=fd_targets,
                    facts=facts,
                )
        finally:
            self._db_lock.release()

    # --------------------------------------------------------------- errors --
    def _guarded(self, source: str, fn: Any) -> None:
        if source in self._disabled:
            return
        try:
            fn()
            self._failures[source] = 0
        except Exception as exc:  # noqa: BLE001
            self._record_error(source, exc)
            self._log_once(source, exc)
            self._failures[source] = self._failures.get(source, 0) + 1
            if self._failures[source] >= MAX_FAILURES:
                self._disabled.add(source)
                log.warning("bilge: %s failed %d times in a row; switched off in pid %d",
                            source, MAX_FAILURES, os.getpid())

    def _record_error(self, source: str, exc: BaseException) -> None:
        if len(self._errors) < 100:
            self._errors.append((time.time(), source, "%s: %s" % (type(exc).__name__, exc)))

    def _log_once(self, source: str, exc: BaseException) -> None:
        if self._failures.get(source, 0) == 0:
            log.warning("bilge agent: %s failed in pid %d: %s", source, os.getpid(), exc)

    # ----------------------------------------------------------------- fork --
    def before_fork(self) -> None:
        """Hold the store lock across fork so SQLite is never mid-call."""
        self._fork_lock_held = self._db_lock.acquire(timeout=FORK_WAIT)

    def after_fork_parent(self) -> None:
        """Release what ``before_fork`` took."""
        if self._fork_lock_held:
            self._fork_lock_held = False
            self._db_lock.release()

    def for_child(self) -> Agent | None:
        """A fresh agent for a forked child (new lock, buffers, connection).

        None when the fork happened while this agent was inside SQLite: the
        child could inherit a held SQLite mutex, so it gets no agent.
        """
        self._writer.abandon()
        if self._window.active:
            # tracemalloc state is inherited: the child must not keep paying
            # for its parent's window.
            import tracemalloc

            tracemalloc.stop()
        if not self._fork_lock_held:
            return None
        return Agent(self.config, role="fork", parent_id=self.process_id)


def _poll_or_abort(window: AllocationWindow | NativeWindow) -> WindowResult | None:
    """Poll a window; one that fails while polled stops tracing before the error is handled."""
    try:
        return window.poll()
    except BaseException:
        window.abort()
        raise


def _drain(buffer: deque[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    out = []
    while buffer:
        out.append(buffer.popleft())
    return out


# ------------------------------------------------------------ process global --
_agent: Agent | None = None
_fork_hooks_installed = False


def current() -> Agent | None:
    """The agent running in this process, if any."""
    if _agent is not None and _agent.pid == os.getpid():
        return _agent
    return None


def start(config: AgentConfig) -> Agent:
    """Start the agent in this process (idempotent) and arm the fork hooks."""
    global _agent
    if current() is not None:
        assert _agent is not None
        return _agent
    _agent = Agent(config)
    _install_fork_hooks()
    proc_sampler.count_gc_runs()
    _agent.start()
    import atexit

    atexit.register(_at_exit)
    from bilge.agent import celery_hooks

    celery_hooks.install()
    return _agent


def start_from_environment(environ: dict[str, str] | None = None) -> Agent | None:
    """Start from ``BILGE_*`` variables; returns None when they are absent."""
    env = os.environ if environ is None else environ
    data_dir = env.get("BILGE_DATA_DIR")
    run_id = env.get("BILGE_RUN_ID")
    if not data_dir or not run_id:
        return None
    config = AgentConfig(data_dir=data_dir, run_id=int(run_id))
    overrides: dict[str, Any] = {}
    for field, var in (("sample_interval", "BILGE_SAMPLE_INTERVAL"), ("census_budget", "BILGE_CENSUS_BUDGET"),
                       ("census_min_interval", "BILGE_CENSUS_MIN_INTERVAL")):
        if env.get(var):
            overrides[field] = float(env[var])
    if env.get("BILGE_SHOW_VALUES") == "1":
        overrides["show_values"] = True
    if env.get("BILGE_EXPLAIN") == "0":
        overrides["explain"] = False
    overrides["recycle"] = recycle.RecyclePolicy.from_environment(env)
    return start(replace(config, **overrides))


def _at_exit() -> None:
    agent = current()
    if agent is not None:
        try:
            agent.stop(timeout=1.0)
        except Exception:  # noqa: BLE001, S110 - exiting anyway; never turn an exit into a crash
            pass


def _before_fork() -> None:
    agent = current()
    if agent is not None:
        try:
            from bilge.agent import celery_hooks

            # Connect Celery's signals before the pool forks its children,
            # so every child inherits them.
            celery_hooks.connect_if_loaded()
        except Exception:  # noqa: BLE001, S110
            pass
        agent.before_fork()


def _after_fork_parent() -> None:
    agent = current()
    if agent is not None:
        agent.after_fork_parent()


def _after_fork_child() -> None:
    global _agent
    parent = _agent
    if parent is None:
        return
    try:
        _agent = parent.for_child()
        if _agent is None:
            log.warning("bilge: pid %d forked during a store write; this child runs without the agent",
                        os.getpid())
        else:
            _agent.start()
    except Exception:  # noqa: BLE001 - a child without an agent is fine; a crashed child is not
        _agent = None


def _install_fork_hooks() -> None:
    global _fork_hooks_installed
    if _fork_hooks_installed or not hasattr(os, "register_at_fork"):
        return
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child)
    _fork_hooks_installed = True
