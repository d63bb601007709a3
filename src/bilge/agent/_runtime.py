"""The agent: a scheduler of small stages in a daemon thread, one per process.

Stdlib-only. The stages each own their state and constants
(``watch``: readings and suspicion; ``census_stage``: object counts;
``container_stage``: the lengths of module-level containers;
``explain``: windows and holder searches within the budget;
``recycle_stage``: leaving at a task boundary); the scheduler only calls
them in turn, meters what each costs (:class:`~bilge.agent.budget.Ledger`),
and writes what they produced (:class:`~bilge.agent.outbox.Outbox`) to the
store. The clocks and the store are injected, so each piece can be tested
alone. Design constraints, each learned the hard way by other tools:

- **Never crash the host.** Every entry point catches everything; errors are
  logged once per source, recorded in the store, and a source that keeps
  failing is switched off.
- **Never deadlock at fork.** SQLite has process-global mutexes; a fork taken
  while our thread is inside SQLite would hand the child a held mutex. The
  ``before`` fork handler therefore takes the store lock (which every store
  write holds), so a fork always happens between two flushes.
- **Bounded memory.** Buffers are bounded; what overflows is counted, not kept.
- **No references to user objects.** The census returns names and numbers
  only; task hooks keep the task *name*, never the task or its arguments.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from bilge.agent import _current, celery_hooks
from bilge.agent.budget import Budget, Ledger, Meter
from bilge.agent.census_stage import CensusStage, Counts
from bilge.agent.container_stage import ContainerStage
from bilge.agent.control import ControlError, ControlServer, socket_dir
from bilge.agent.explain import Explain
from bilge.agent.outbox import Outbox, Store
from bilge.agent.recycle_stage import Recycler
from bilge.agent.snapshot import Snapshots
from bilge.agent.watch import FULL_READ_TASKS, FdScan, Watch
from bilge.config import AgentConfig as AgentConfig  # re-exported by bilge.agent
from bilge.model import STAGE_CENSUS, STAGE_FD_SCAN, STAGE_FLUSH, STAGE_TASK_HOOKS, STAGE_WATCH
from bilge.samplers import process as proc_sampler
from bilge.samplers import wallclock

log = logging.getLogger("bilge.agent")

# Consecutive failures after which a stage is switched off for good.
MAX_FAILURES = 5
# How long fork may wait for an in-progress flush. Past it the fork goes
# ahead and the child runs without an agent, rather than risk inheriting a
# lock held by SQLite in the middle of a call.
FORK_WAIT = 1.0
# Sample intervals stretch with the process's age (age/600 s, at most this).
MAX_SAMPLE_INTERVAL = 10.0
# Buffered rows are written at most this often (seconds), or sooner once
# this many task rows wait: every transaction is a few GIL releases, and in
# a busy worker each costs the agent's thread a switch interval and the
# host's thread a forced switch.
FLUSH_INTERVAL = 2.0
# bilge's own cost (the stages' totals, the budget left, the collector's
# counts) is rewritten at most this often, and at every flush that stores a
# budgeted run or ends the process: three statements fewer in most flushes.
COST_INTERVAL = 10.0
FLUSH_ROWS = 5000
# One call in this many of each task hook is timed (CPU of the task's
# thread: waiting for the GIL is not the hook's cost), whole, with whatever
# the stages do in it; the estimate is that times this many. A clock read on
# every task would cost a share of the hooks' own cost.
HOOK_TIMING_EVERY = 64
# The census and the container scans spend this part of their share in a
# settled process that shows no sign of growth (see Agent._counting_pace);
# a process is young for at most YOUNG_SECONDS.
CALM_PACE = 0.1
YOUNG_SECONDS = 30.0
# Seconds a control request waits for the stages' lock (a tick, a flush).
CONTROL_WAIT = 10.0


class Agent:
    """Schedules one process's stages; survives forks by re-initialising in the child.

    Args:
        config: what the agent does.
        role: this process's role (``main``, ``fork``, ``celery-main``, ``celery-child``).
        parent_id: the store id of the parent's process (forked children).
        store: where rows go (default: the data dir's SQLite store).
        clock: wall clock; monotonic: for intervals and budgets; thread_clock: the
            task thread's CPU clock (the task hooks' cost).
    """

    def __init__(self, config: AgentConfig, role: str = "main", parent_id: int | None = None,
                 store: Store | None = None, clock: Callable[[], float] = wallclock.now,
                 monotonic: Callable[[], float] = time.monotonic,
                 thread_clock: Callable[[], float] = time.thread_time) -> None:
        self.config = config
        self.role = role
        self.parent_id = parent_id
        self.pid = os.getpid()
        self.process_id: int | None = None
        self._clock, self._monotonic = clock, monotonic
        if store is None:
            from bilge.store.writer import StoreWriter

            store = StoreWriter(config.data_dir, config.run_id)
        self.store = store
        self._store_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures: dict[str, int] = {}
        self._disabled: set[str] = set()
        self._fork_lock_held = False
        self._born = monotonic()
        self._flushed = -FLUSH_INTERVAL - 1.0
        self._suspect_stored: int | None = None
        self._thread_clock = thread_clock
        # The task hooks' own CPU time, estimated (see HOOK_TIMING_EVERY).
        self.hook_seconds = 0.0
        self._hook_seconds_stored = 0.0
        self._cost_written = -COST_INTERVAL - 1.0
        self._starts = self._ends = 0
        # Read on every task: plain attributes, not a walk through the config.
        self._explain_on = config.explain
        self._recycle_on = config.recycle.enabled
        self.outbox = Outbox(limit=config.buffer_limit)
        self.ledger = Ledger()
        self.budget = Budget(config.cpu_share, config.cpu_period, config.slowed_per_hour, clock=monotonic)
        self.counts = Counts()
        self.watch = Watch(self.outbox, paused=self._explaining, clock=clock)
        self.census = CensusStage(self.outbox, self.counts, lambda: self.watch.tasks_done, config.census_budget,
                                  config.census_min_interval, config.sizing_every, pace=self._counting_pace,
                                  clock=monotonic)
        # Twice as often as the census may run (a scan costs a tenth of a count).
        self.containers = ContainerStage(self.outbox, lambda: self.watch.tasks_done, self._count_items,
                                         min_interval=config.census_min_interval / 2, pace=self._counting_pace,
                                         clock=monotonic)
        self.fds = FdScan(self.outbox, self.watch, config.census_min_interval, clock=clock, monotonic=monotonic)
        self.explain = Explain(self.outbox, self.watch, self.census, self.counts, self.budget, self.ledger,
                               show_values=config.show_values, growing_containers=self.containers.steadily_growing,
                               clock=clock, monotonic=monotonic)
        self.recycler = Recycler(config.recycle, self.watch, self.counts, self.store, self._store_lock,
                                 lambda: (self.explain.last_sites, self.explain.last_paths), monotonic=monotonic)
        self.snapshots = Snapshots(self.outbox, self.census, self.counts, self.ledger, lambda: self.watch.tasks_done,
                                   config.show_values, clock=clock, growing_containers=self.containers.growing_now)
        # Each stage's run holds this lock, and so does a control request:
        # a request waits for the stage running now, not for a whole tick.
        self._work_lock = threading.RLock()
        self._doing = ("nothing", monotonic())
        # Wall seconds of the longest tick so far (a control request may wait that long).
        self.longest_tick = 0.0
        # Wall seconds of each piece of work's longest run (GIL waits included).
        self.longest_wall: dict[str, float] = {}
        self.control_server: ControlServer | None = None

    @property
    def tasks_done(self) -> int:
        """Tasks this process finished."""
        return self.watch.tasks_done

    def _explaining(self) -> bool:
        return self.explain.busy()

    def _explaining_in_hooks(self) -> bool:
        # Asked on the timed calls only (one in HOOK_TIMING_EVERY). A call in
        # which an episode takes its snapshots runs tens of milliseconds,
        # which the episode charges itself: timed too and multiplied by
        # HOOK_TIMING_EVERY, one such call made seconds of hook cost that
        # never was (5.4 s in one zoo child against 0.1 s in its twin).
        return self._explain_on and self.explain.at_hooks()

    def _counting_pace(self) -> float:
        """The part of their share the census and the container scans may spend now.

        All of it while the process is young (its first FULL_READ_TASKS
        tasks and YOUNG_SECONDS: where a leak is confirmed and named) or
        shows a sign of growth (a suspicion ring, a type or container growing
        at every count); CALM_PACE of it in a settled process that shows
        none, where their counts only watch for a change. A calm benign
        worker otherwise paid ~1 % of its CPU for counts that said nothing.
        """
        watch = self.watch
        young = watch.tasks_done < FULL_READ_TASKS and self._monotonic() - self._born < YOUNG_SECONDS
        if young or watch.rss_suspicion.suspect() or watch.heap_suspicion.suspect():
            return 1.0
        if self.counts.steadily_growing() or self.containers.steadily_growing():
            return 1.0
        return CALM_PACE

    # ------------------------------------------------------------ lifecycle --
    def start(self) -> None:
        """Start the scheduling thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bilge-agent", daemon=True)
        self._thread.start()
        if self.config.control and self.control_server is None:
            self._open_control()

    def _open_control(self) -> None:
        """Serve ``<socket dir>/<pid>.sock``; without it the agent runs on (``bilge snapshot`` cannot reach it)."""
        path = os.path.join(socket_dir(self.config.socket_dir), "%d.sock" % os.getpid())
        server = ControlServer(path, self.control)
        try:
            server.start()
        except ControlError as exc:
            self._record_error("control", exc)
            log.warning("bilge: no control channel in pid %d: %s", os.getpid(), exc)
            return
        self.control_server = server

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread, keep what a window has, and write what is buffered (bounded by ``timeout``)."""
        self._stop.set()
        if self.control_server is not None:
            self.control_server.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._guarded("window", self.explain.finish, wait=timeout)
        # Called from the host's shutdown (Celery's worker_process_shutdown, atexit): a store that fails now (full
        # disk, data dir deleted) is logged once like any flush, never raised into the host.
        self._guarded("flush", lambda: self.flush(final=True), wait=timeout)

    def set_role(self, role: str) -> None:
        """Name this process's role (e.g. ``celery-main``), stored on next flush."""
        if role != self.role:
            self.role = role
            self.outbox.role = role

    def note_fact(self, column: str, value: int | None) -> None:
        """Remember a fact about this process (``exit_code``, ``pool_index``...), stored on next flush."""
        if value is not None and column in ("exit_code", "celery_max_memory_kb", "suspect", "pool_index"):
            self.outbox.facts[column] = int(value)

    # ----------------------------------------------------------- task hooks --
    def task_started(self, key: Any, name: str) -> None:
        """Called by integrations as a task starts, in the process that runs it."""
        self._starts += 1
        timed = not self._starts % HOOK_TIMING_EVERY and not self._explaining_in_hooks()
        t = self._thread_clock() if timed else 0.0
        try:
            # The explain stage first: an episode ending at this boundary
            # ends before the task's own start is taken.
            if self._explain_on:
                self.explain.task_started(key, name)
            self.watch.task_started(key, name)
        except Exception as exc:  # noqa: BLE001 - the host's task must run regardless
            self._record_error("task_started", exc)
        if timed:
            self.hook_seconds += (self._thread_clock() - t) * HOOK_TIMING_EVERY

    def task_finished(self, key: Any, failed: bool = False) -> None:
        """Called as a task ends; records its memory deltas."""
        self._ends += 1
        timed = not self._ends % HOOK_TIMING_EVERY and not self._explaining_in_hooks()
        t = self._thread_clock() if timed else 0.0
        try:
            reading = self.watch.task_finished(key, failed)
            if self._explain_on:
                self.explain.task_finished(key, reading)
            if reading is not None and self._recycle_on and not self.recycler.off:
                self.recycler.at_task_end(self.process_id, self.role)
        except Exception as exc:  # noqa: BLE001
            self._record_error("task_finished", exc)
        if timed:
            self.hook_seconds += (self._thread_clock() - t) * HOOK_TIMING_EVERY

    # ------------------------------------------------------ control channel --
    def control(self, op: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        """Answer one control-channel request (``agent.control``), in the channel's thread.

        Operations: ``status``; ``census`` (count objects now); ``snapshot``
        (count, then search the holders of what grew, or of ``args["types"]``);
        ``window`` (open an allocation window now, if the budget buys one);
        ``flush`` (write what is buffered); ``detach`` (stop this agent, after
        the reply).

        Raises:
            ValueError: an unknown operation, bad arguments, or a busy agent
                (the message is the client's answer).
        """
        if op == "status":
            return self.status()
        if op == "detach":
            # After the reply: stopping closes this very channel.
            threading.Thread(target=detach, name="bilge-detach", daemon=True).start()
            return {"detached": os.getpid()}
        if op not in ("census", "snapshot", "window", "flush"):
            raise ValueError("unknown op %r; known: status, census, snapshot, window, flush, detach" % op[:40])
        if not self._work_lock.acquire(timeout=CONTROL_WAIT):
            doing, since = self._doing
            raise ValueError("the agent stayed busy for %.0f s (running %s for %.1f s); try again" % (
                CONTROL_WAIT, doing, self._monotonic() - since))
        try:
            proc_sampler.AGENT_BUSY[0] = 1
            if op == "window":
                result: dict[str, Any] = {"window": self.explain.open_on_request()}
            elif op == "flush":
                result = {}
            else:
                top = args.get("top", 15)
                result = self.snapshots.take(args.get("types") or (), top, search_holders=op == "snapshot")
        finally:
            proc_sampler.AGENT_BUSY[0] = 0
            self._work_lock.release()
        self.flush()
        return result

    def status(self) -> dict[str, Any]:
        """What this agent knows now: the process, its memory, its suspicion, the explain stage, bilge's cost."""
        watch, explain = self.watch, self.explain
        return {
            "pid": os.getpid(), "role": self.role, "run_id": self.config.run_id, "data_dir": self.config.data_dir,
            "process_id": self.process_id,
            "python": "%d.%d.%d" % sys.version_info[:3],
            "uptime_seconds": round(self._monotonic() - self._born, 3),
            "tasks_done": watch.tasks_done, "rss": watch.sampled_rss, "uss": watch.sampled_uss,
            "heap_blocks": watch.last_heap_blocks, "fds": watch.last_fds,
            "suspect": {"rss": watch.rss_suspicion.suspect(), "heap": watch.heap_suspicion.suspect()},
            "growing_types": self.counts.growing_types(),
            # What the explain stage found last (names and code locations, never values).
            "holders": [{"type": name, "path": path} for name, path in explain.last_paths],
            "sites": [{"file": file, "line": line, "bytes": size} for file, line, size in explain.last_sites],
            "recycle": self.recycler.reason,
            "explain": {"on": self._explain_on, "window_open": explain.window.active,
                        "windows_opened": explain.windows_opened, "reason": explain.reason},
            "cost_cpu_seconds": {c.stage: round(c.cpu_seconds, 4) for c in self.ledger.totals()},
            "snapshots": self.snapshots.taken,
            "longest_tick_seconds": round(self.longest_tick, 3),
            "longest_wall_seconds": {source: round(took, 3) for source, took in self.longest_wall.items()},
        }

    # ------------------------------------------------------------- the loop --
    def _loop(self) -> None:
        try:
            self.register()
        except Exception as exc:  # noqa: BLE001 - no store, no agent; the host runs on
            self._record_error("register", exc)
            self._log_once("register", exc)
            return
        while not self._stop.wait(self._interval()):
            proc_sampler.AGENT_BUSY[0] = 1
            began = self._monotonic()
            try:
                self.tick()
            finally:
                proc_sampler.AGENT_BUSY[0] = 0
                self.longest_tick = max(self.longest_tick, self._monotonic() - began)

    def tick(self) -> None:
        """One round of every stage (the thread's loop body; tests call it directly)."""
        self._metered(STAGE_WATCH, "sample", self.watch.sample)
        self._note_state()
        if self.fds.due() and self.budget.affords(self.fds.last_seconds):
            self._metered(STAGE_FD_SCAN, "fds", self.fds.run, budgeted=True)
            self.watch.own_work()
        if self.census.due():
            self._metered(STAGE_CENSUS, "census", self.census.run)
            self.watch.own_work()
        if self.containers.due():
            self._metered(STAGE_CENSUS, "containers", self.containers.run)
            self.watch.own_work()
        if self.config.recycle.enabled and self.role == "celery-child" and not self.recycler.off:
            self._guarded("recycle", lambda: self.recycler.consider(self.process_id, self.role))
        if self.config.explain:
            self._guarded("window", self.explain.tend)
        now = self._monotonic()
        if now - self._flushed >= FLUSH_INTERVAL or len(self.outbox.tasks) >= FLUSH_ROWS or self._flush_soon():
            self._flushed = now
            self._metered(STAGE_FLUSH, "flush", self.flush)
            if now - self._born < YOUNG_SECONDS:
                # The first flushes fill SQLite's page cache and the agent
                # thread's malloc arena: ~1.7 MiB of RSS in a process running
                # empty tasks, which the RSS ring took for the host's growth.
                # Later flushes leave nothing, and re-basing after each (every
                # FLUSH_INTERVAL) would hide half of a leak in one-second tasks.
                self.watch.own_work()

    def _count_items(self, routes: tuple[Any, ...]) -> None:
        # One assignment: task threads read the tuple once per task.
        self.watch.counted = routes

    def _flush_soon(self) -> bool:
        """Rows the other processes act on (windows, holders, recycles, role, facts) are written at once.

        So is a census: its rows (hundreds of type names and counts) would
        sit in the heap until the next flush, and the heap blocks read after
        each task would rise by them and fall at the flush.
        """
        outbox = self.outbox
        return bool(outbox.windows or outbox.holders or outbox.role is not None or outbox.facts or outbox.errors
                    or outbox.censuses or outbox.containers)

    def register(self) -> None:
        role = self.role
        with self._store_lock:
            argv = " ".join(sys.argv)[:2000] if hasattr(sys, "argv") else ""
            self.process_id = self.store.register_process(os.getpid(), os.getppid(), self.parent_id, role, argv)
        if self.outbox.role == role:
            # Otherwise set_role() ran during the insert: keep it pending.
            self.outbox.role = None

    def _interval(self) -> float:
        age = self._monotonic() - self._born
        return min(max(self.config.sample_interval, age / 600.0), MAX_SAMPLE_INTERVAL)

    def _note_state(self) -> None:
        """Keep the agent's own live judgement in the store, for fleet queries (`celery bilge status`)."""
        suspect = int(self.watch.rss_suspicion.suspect())
        if suspect != self._suspect_stored:
            self._suspect_stored = suspect
            self.note_fact("suspect", suspect)

    def flush(self, final: bool = False) -> None:
        """Write buffered rows in one transaction; safe from any thread."""
        if self.process_id is None or self.pid != os.getpid():
            return
        if not self._store_lock.acquire(timeout=5.0):
            return
        try:
            hooks = self.hook_seconds
            if hooks > self._hook_seconds_stored:
                self.ledger.add(STAGE_TASK_HOOKS, hooks - self._hook_seconds_stored, runs=0)
                self._hook_seconds_stored = hooks
            rows = self.outbox.drain()
            runs = self.ledger.drain_runs()
            if any(rows[k] for k in rows) or runs or final:
                now = self._monotonic()
                cost = final or bool(runs) or now - self._cost_written >= COST_INTERVAL
                if cost:
                    self._cost_written = now
                try:
                    self.store.flush(self.process_id, ended=self._clock() if final else None,
                                     stage_costs=self.ledger.totals() if cost else (), stage_runs=runs,
                                     budget=self.budget.state(self._clock()) if cost else None,
                                     gc_stats=proc_sampler.gc_generations() if cost else (), **rows)
                except Exception:
                    # The store is busy, full or gone for now, and the flush rolled back: its task rows and samples
                    # wait for the next one, within the buffers' bounds (past them they are dropped and counted).
                    self.outbox.requeue(rows["tasks"], rows["samples"])
                    raise
        finally:
            self._store_lock.release()

    # --------------------------------------------------------------- errors --
    def _metered(self, stage: str, source: str, fn: Callable[[], None], budgeted: bool = False) -> None:
        """Run an always-on piece of work guarded, adding its CPU to ``stage``'s cost."""
        with Meter(wall_clock=self._clock) as meter:
            self._guarded(source, fn)
        self.ledger.add(stage, meter.cpu)
        if budgeted:
            self.budget.charge(meter.cpu)

    def _guarded(self, source: str, fn: Callable[[], None], wait: float = CONTROL_WAIT) -> None:
        if source in self._disabled:
            return
        if not self._work_lock.acquire(timeout=wait):
            return  # a control request holds it for long: this stage waits for the next tick
        # What the agent is doing, and since when: a control request that
        # waits too long for the stages' lock says so.
        began = self._monotonic()
        self._doing = (source, began)
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
        finally:
            self._work_lock.release()
            took = self._monotonic() - began
            if took > self.longest_wall.get(source, 0.0):
                self.longest_wall[source] = took

    def _record_error(self, source: str, exc: BaseException) -> None:
        self.outbox.add_error(self._clock(), source, "%s: %s" % (type(exc).__name__, exc))

    def _log_once(self, source: str, exc: BaseException) -> None:
        if self._failures.get(source, 0) == 0:
            log.warning("bilge agent: %s failed in pid %d: %s", source, os.getpid(), exc)

    # ----------------------------------------------------------------- fork --
    def before_fork(self) -> None:
        """Hold the store lock across fork so SQLite is never mid-call."""
        self._fork_lock_held = self._store_lock.acquire(timeout=FORK_WAIT)

    def after_fork_parent(self) -> None:
        """Release what ``before_fork`` took."""
        if self._fork_lock_held:
            self._fork_lock_held = False
            self._store_lock.release()

    def for_child(self) -> Agent | None:
        """A fresh agent for a forked child (new lock, buffers, connection).

        None when the fork happened while this agent was inside SQLite: the
        child could inherit a held SQLite mutex, so it gets no agent.
        """
        self.store.abandon()
        if self.control_server is not None:
            # The parent's socket stays the parent's; the child opens its own.
            self.control_server.abandon()
        if self.explain.window.tracing:
            # tracemalloc state is inherited: the child must not keep paying
            # for its parent's episode.
            import tracemalloc

            tracemalloc.stop()
        if not self._fork_lock_held:
            return None
        return Agent(self.config, role="fork", parent_id=self.process_id)


# ------------------------------------------------------------ process global --
_fork_hooks_installed = False


def current() -> Agent | None:
    """The agent running in this process, if any."""
    agent: Agent | None = _current.get()
    return agent


def start(config: AgentConfig, role: str = "main", parent_id: int | None = None) -> Agent:
    """Start the agent in this process (idempotent) and arm the fork hooks."""
    agent = current()
    if agent is not None:
        return agent
    wallclock.anchor(config.clock_anchor)  # before the first reading: the run's times, whatever the clock does
    agent = Agent(config, role=role, parent_id=parent_id)
    _current.put(agent)
    _install_fork_hooks()
    proc_sampler.count_gc_runs()
    agent.start()
    import atexit

    atexit.register(_at_exit)
    celery_hooks.install()
    return agent


def start_from_environment(environ: Mapping[str, str] | None = None) -> Agent | None:
    """Start from ``BILGE_*`` variables (default: ``os.environ``); returns None when they are absent."""
    config = AgentConfig.from_environment(environ)
    if config is None:
        return None
    for warning in config.warnings:
        log.warning("bilge: %s (pid %d)", warning, os.getpid())
    return start(config)


def attach_here(environ: Mapping[str, str], role: str = "main", parent_id: int | None = None) -> None:
    """Start the agent in a process that is already running (``bilge attach``'s payload calls this).

    Its Celery signals are connected at once when Celery is loaded, so
    per-task accounting starts with the next task. Never raises.
    """
    try:
        config = AgentConfig.from_environment(environ)
        if config is None or current() is not None:
            return
        start(config, role=role, parent_id=parent_id)
        celery_hooks.connect_if_loaded()
    except Exception as exc:  # noqa: BLE001 - an attach that fails must leave the host as it was
        log.warning("bilge: attach failed in pid %d: %s", os.getpid(), exc)


def detach() -> None:
    """Stop this process's agent, disconnect its Celery signals and forget it (``bilge detach``)."""
    agent = current()
    if agent is None:
        return
    _current.put(None)  # the task hooks and fork handlers see no agent from now on
    celery_hooks.uninstall()
    try:
        agent.stop(timeout=2.0)
    except Exception:  # noqa: BLE001, S110 - detached anyway
        pass


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
    parent: Agent | None = _current.inherited()
    if parent is None:
        return
    try:
        child = parent.for_child()
        _current.put(child)
        if child is None:
            log.warning("bilge: pid %d forked during a store write; this child runs without the agent",
                        os.getpid())
        else:
            child.start()
    except Exception:  # noqa: BLE001 - a child without an agent is fine; a crashed child is not
        _current.put(None)


def _install_fork_hooks() -> None:
    global _fork_hooks_installed
    if _fork_hooks_installed or not hasattr(os, "register_at_fork"):
        return
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child)
    _fork_hooks_installed = True
