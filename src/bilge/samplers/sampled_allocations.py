"""Allocation sites from sampled tasks: tracemalloc on for one task at a time.

Stdlib-only. tracemalloc costs 8-25x on every allocation while it traces
(notes/budgeted-profiling.md §3), so it must never trace a run of tasks on
an allocation-heavy worker. Instead the window is a pool of **episodes**,
each tracing exactly one task, as many as the agent's budget buys:

1. ``arm``: the agent grants a number of episodes, as many as its budget buys;
2. at a task's end (``on_task_finished``), after ``gap_tasks`` untraced
   tasks: tracing starts, so that what the next task's message allocates
   (its payload, which a leak often keeps) is traced;
3. the next task is a **warm-up**, traced but not measured: what a task
   leaves in flight until the next one replaces it (its result, a request,
   buffers of a postrun handler) must be traced in snapshot A too, or it
   would not cancel;
4. at a later task's start (``on_task_started``): snapshot A, if the task
   is wanted; else it is one more warm-up (at most ``MAX_WARMUPS``). Every
   task name is measured ``EXPLORE`` times first; after that, only the names
   whose episodes left the most behind at sites the other names do not
   leave anything at (a leaky task leaves bytes behind in every call, the
   others do not; what every task leaves alike is residue that cancels in
   a longer run, and is not reported);
5. the measured task runs; at its end, snapshot C; the next task is a
   **cool-down**, traced so that the measured task's result (kept in flight
   until the next result replaces it) is gone by B;
6. at the start of the task after the cool-down (or, if the worker idles,
   from the agent thread): snapshot B, the type join, and tracing stops.
   Per traceback, the smaller of C − A and B − A is what the measured task
   left behind: what is in flight at a task start (a message, a request,
   the previous result) is traced in A too and cancels, and what differs
   between two task starts (the next message is another task's) is not in
   C − A. The snapshots are compared right there, untraced, and dropped.

The agent thread pools the sites of all episodes (``poll``); the window
closes when it has its episodes, or at its deadline with what it has. Each finished episode reports its own timings
(:class:`Episode`), so the agent charges the budget what tracing really
cost, and an episode that runs past ``max_episode_seconds`` is stopped from
the agent thread (tracing stops; the task runs on untraced).

Only file names, line numbers, counts and sizes leave this module; snapshots
are dropped as soon as they are compared. Never opened when the host traces
memory itself.
"""

from __future__ import annotations

import random
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from bilge.model import AllocationSite, AllocationWindow, TypeSite
from bilge.samplers import wallclock
from bilge.samplers.allocations import (
    innermost_user_frame,
    is_own,
    merge_sites,
    object_traceback,
    owner_of,
    type_sites,
)

IDLE, ARMED, STARTED, WARMING, TRACING = "idle", "armed", "started", "warming", "tracing"
MEASURED, COOLING, AWAITING = "measured", "cooling", "awaiting"
# States in which tracemalloc is on.
ON = (STARTED, WARMING, TRACING, MEASURED, COOLING, AWAITING)
# States in which a task's end moves the window on.
AT_TASK_END = (ARMED, WARMING, TRACING, COOLING)
# Warm-up tasks traced at most before the measured one, whatever its name.
MAX_WARMUPS = 3
# A wanted task that does not come within this many tasks: any task will do.
TARGET_PATIENCE = 20
# Episodes per task name before the window prefers the names that leave most behind.
EXPLORE = 2
MAX_NAMES = 64
MAX_SITES = 1024
# Sites kept per task name beyond the window's top ones: a task whose
# garbage is megabytes must not crowd another task's leak of a few
# kilobytes out of the result.
SITES_PER_NAME = 3


class _OwnedLock:
    """A lock that knows which thread holds it.

    Snapshots, the type join and the comparisons allocate while it is held,
    and an allocation can start a collection that runs the host's
    finalizers; a finalizer that runs a task eagerly (``task.apply()``)
    comes back into the hooks on the same thread. The window's entry points
    return at once then (that task is not measured) instead of waiting on a
    lock their own thread holds.
    """

    __slots__ = ("_lock", "_owner")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = 0

    def __enter__(self) -> _OwnedLock:
        self._lock.acquire()
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *_: object) -> None:
        self._owner = 0
        self._lock.release()

    def mine(self) -> bool:
        """True when the calling thread holds the lock (a re-entry)."""
        return self._owner == threading.get_ident()


@dataclass(frozen=True)
class Episode:
    """One episode, as the budget sees it.

    ``name``/``traced_seconds`` are the measured task and its wall time;
    ``warmups`` the (name, wall time) of the other tasks traced (warm-up,
    cool-down);
    ``hook_seconds`` the time the snapshots and the join added at task
    boundaries (in the task's thread); ``outcome`` is ``done``, or why it
    was dropped.
    """

    name: str
    started: float
    ended: float
    traced_seconds: float
    hook_seconds: float
    frames: int
    outcome: str
    warmups: tuple[tuple[str, float], ...] = ()


class SampledAllocations:
    """A pool of one-task tracemalloc episodes.

    Args:
        episodes: episodes pooled before the window closes.
        min_episodes: fewest episodes whose pooled sites count as a result.
        max_seconds: the window closes at this age, with what it has.
        max_episode_seconds: an episode still tracing after this long is stopped.
        gap_tasks: untraced tasks between two episodes, on average.
        max_sites: sites reported (and each task name's ``SITES_PER_NAME`` largest).
        join_seconds: time the type join may take per episode.
        max_memory: tracemalloc's own memory an episode may use (bytes).
        clock: wall clock.
    """

    def __init__(self, episodes: int = 16, min_episodes: int = 3, max_seconds: float = 600.0,
                 max_episode_seconds: float = 1.0, gap_tasks: int = 3, max_sites: int = 10,
                 join_seconds: float = 0.01, max_memory: int = 32 << 20,
                 clock: Callable[[], float] = wallclock.now) -> None:
        self.episodes = episodes
        self.min_episodes = min_episodes
        self.max_seconds = max_seconds
        self.max_episode_seconds = max_episode_seconds
        self.gap_tasks = gap_tasks
        self.max_sites = max_sites
        self.join_seconds = join_seconds
        self.max_memory = max_memory
        self._clock = clock
        self._lock = _OwnedLock()
        self._rng = random.Random(0x6B11)
        self.active = False
        self._reset()

    def _reset(self) -> None:
        self.state = IDLE
        self._opened = 0.0
        self._types: frozenset[str] = frozenset()
        # Episodes compared per task name, and bytes left behind per site
        # and task name: a site that every task leaves alike is in-flight
        # residue (a postrun handler's buffers), one that one task leaves
        # is that task's doing.
        self.episodes_by_name: Counter[str] = Counter()
        self._site_by_name: dict[tuple[str, int], Counter[str]] = {}
        self._wanted: frozenset[str] | None = None
        self._frames = 1
        self._granted = 0
        self._admit: Callable[[], bool] | None = None
        self._gap = 0
        self._waited = 0
        self._key: object = None
        self._name = ""
        self._t0 = self._wall0 = self._hook = self._traced = 0.0
        self._warm: list[tuple[str, float]] = []
        self._warm_name = ""
        self._warm_t0 = 0.0
        self._first: tracemalloc.Snapshot | None = None
        # The measured task ran in the main thread (prefork, solo): a trace
        # rooted in a thread's bootstrap is then another thread's doing.
        self._in_main = True
        self._ended: tracemalloc.Snapshot | None = None
        self._joined: tuple[TypeSite, ...] = ()
        # (S1, S2, join) per finished episode, compared in the agent thread.
        # (name, sites left behind, join) per finished episode, pooled in the agent thread.
        self._to_compare: list[tuple[str, list[AllocationSite], tuple[TypeSite, ...]]] = []
        self._finished: list[Episode] = []
        self._sites: list[AllocationSite] = []
        self._type_counts: Counter[tuple[str, str, int, str]] = Counter()
        self._type_sampled: Counter[str] = Counter()
        self._done = 0
        self._peak = 0
        self._traceback_of: Callable[[object], tuple[tuple[str, int], ...] | None] | None = None

    # ---------------------------------------------------------- agent thread --
    def open(self, types: Collection[str] = (), began: float | None = None) -> bool:
        """Start a window (nothing is traced until ``arm``); False if the host traces memory itself."""
        if tracemalloc.is_tracing() or self.active:
            return False
        self._reset()
        # Prepared before any tracing: importing ctypes inside an episode
        # would make ctypes' own objects look born there.
        self._traceback_of = object_traceback()
        self._opened = self._clock() if began is None else began
        self._types = frozenset(types)
        self.active = True
        return True

    @property
    def done(self) -> int:
        """Episodes pooled so far."""
        return self._done

    @property
    def tracing(self) -> bool:
        """True while an episode has tracemalloc on."""
        return self.state in ON

    @property
    def wanted(self) -> int:
        """Episodes still to run before the window is full."""
        return max(0, self.episodes - self._done - len(self._to_compare) - self._granted
                   - (self.state in (TRACING, MEASURED, COOLING, AWAITING)))

    def arm(self, episodes: int, frames: int = 6, admit: Callable[[], bool] | None = None) -> None:
        """Grant ``episodes`` more episodes, ``frames`` deep.

        ``admit`` is asked (in the task's thread) right before each episode
        starts tracing; False ends the grant (the budget is spent).
        """
        if self._lock.mine():
            return
        with self._lock:
            if not self.active:
                return
            self._granted += max(0, min(episodes, self.wanted))
            self._frames = max(1, frames)
            self._admit = admit
            if self.state == IDLE and self._granted:
                self.state = ARMED
                self._waited = 0

    def poll(self) -> tuple[list[Episode], AllocationWindow | None]:
        """Finished episodes since the last poll, and the window's result once it closes."""
        if not self.active or self._lock.mine():
            return [], None
        with self._lock:
            tracing = self.state in ON
            if tracing:
                self._peak = max(self._peak, tracemalloc.get_tracemalloc_memory())
            if tracing and self._peak > self.max_memory:
                self._drop("stopped: tracemalloc's own memory over %d MiB" % (self.max_memory >> 20))
            elif self.state == TRACING and time.perf_counter() - self._t0 > self.max_episode_seconds:
                self._drop("stopped: traced task ran over %.1f s" % self.max_episode_seconds)
            elif self.state in (STARTED, WARMING) and time.perf_counter() - self._t0 > self.max_episode_seconds:
                # No task came to measure: stop tracing an idle worker, try again later.
                self._drop("stopped: no task to measure within %.1f s" % self.max_episode_seconds)
            elif self.state == COOLING and time.perf_counter() - self._t0 > self.max_episode_seconds:
                self._drop("stopped: cool-down task ran over %.1f s" % self.max_episode_seconds)
            elif self.state in (MEASURED, AWAITING) and time.perf_counter() - self._t0 > self.max_episode_seconds:
                # The worker idles after the traced task: close at this boundary.
                self._end_episode()
        finished = self._compare()
        busy = self.state in ON or self._granted
        if self._done >= self.episodes and not busy:
            return finished, self._close("done")
        if self._clock() - self._opened > self.max_seconds and self.state not in ON:
            return finished, self._close(self._status())
        return finished, None

    def close_now(self) -> tuple[list[Episode], AllocationWindow | None]:
        """Close with what the window has (the agent stops); a result if it pooled ``min_episodes``."""
        if not self.active or self._lock.mine():
            return [], None
        with self._lock:
            if self.state in (MEASURED, AWAITING):
                self._end_episode()
            elif self.state in (TRACING, COOLING):
                self._drop("stopped: the agent stops")
            elif self.state in (STARTED, WARMING):
                self._drop("stopped: the agent stops")
            self._granted = 0
            self.state = IDLE
        finished = self._compare()
        return finished, self._close(self._status())

    def _status(self) -> str:
        if self._done >= self.min_episodes:
            return "done"
        return "%d of %d episodes within %.0f s (budget)" % (self._done, self.episodes, self.max_seconds)

    def _compare(self) -> list[Episode]:
        """Pool the sites of finished episodes (in the agent thread)."""
        with self._lock:
            pending, self._to_compare = self._to_compare, []
            finished, self._finished = self._finished, []
        for name, left, joined in pending:
            self._sites = merge_sites(self._sites + left)
            if name in self.episodes_by_name or len(self.episodes_by_name) < MAX_NAMES:
                self.episodes_by_name[name] += 1
                for site in left:
                    key = (site.file, site.line)
                    if key in self._site_by_name or len(self._site_by_name) < MAX_SITES:
                        self._site_by_name.setdefault(key, Counter())[name] += site.size
            sampled: dict[str, int] = {}
            for t in joined:
                self._type_counts[(t.type, t.file, t.line, t.owner)] += t.count
                sampled[t.type] = max(sampled.get(t.type, 0), t.sampled)
            self._type_sampled.update(sampled)
            self._done += 1
        if pending:
            self._wanted = self._leaving_names()
        del pending
        return finished

    def abort(self) -> None:
        """Stop tracing now (agent shutdown, errors); the window closes without a result."""
        if not self.active or self._lock.mine():
            return
        with self._lock:
            if self.state in ON:
                self._drop("aborted")
        self._close("aborted")

    def _close(self, status: str) -> AllocationWindow:
        self.active = False
        kept = []
        for s in self._sites:
            specific = self._specific((s.file, s.line))
            if sum(specific.values()) > 0:
                # Named by the task that leaves the most there: the line of a
                # leak is the leaking task's, not a retried task's garbage.
                kept.append(replace(s, task=max(specific, key=specific.__getitem__)))
        ranked = _ranked(kept, self.max_sites) if status == "done" else []
        result = AllocationWindow(started=self._opened, ended=self._clock(), tasks=self._done, status=status,
                                  peak_memory=self._peak, sites=tuple(ranked),
                                  type_sites=self._pooled_types() if status == "done" else ())
        self._reset()
        return result

    def _pooled_types(self) -> tuple[TypeSite, ...]:
        """Type-to-site joins of all episodes, added up per (type, line)."""
        return tuple(TypeSite(type=k[0], file=k[1], line=k[2], count=c, sampled=self._type_sampled[k[0]],
                              owner=k[3])
                     for k, c in sorted(self._type_counts.items(), key=lambda item: (item[0][0], -item[1])))

    # ----------------------------------------------------------- task thread --
    def on_task_started(self, key: object, name: str) -> None:
        """At every task start, in the task's thread: warm-up, snapshot A of a wanted task, or B after it."""
        if self.state not in ON or self._lock.mine():
            return
        with self._lock:
            if self.state == AWAITING:
                self._end_episode()
                return
            if self.state == MEASURED:
                # The cool-down task: traced, so that what the measured task
                # leaves in flight until the next one replaces it (its result)
                # is gone by snapshot B.
                self.state = COOLING
                self._warm_name, self._warm_t0 = name, time.perf_counter()
                return
            if self.state in (TRACING, COOLING):
                return  # another thread's task (threads pool): traced along, not measured
            if not tracemalloc.is_tracing():
                self._granted = 0
                self._drop("stopped by the host")
                return
            if self.state == STARTED or (not self._wants(name) and len(self._warm) < MAX_WARMUPS):
                # Traced but not measured: what it leaves in flight at the
                # next task start is traced, so it cancels in B - A.
                self.state = WARMING
                self._warm_name, self._warm_t0 = name, time.perf_counter()
                return
            t = time.perf_counter()
            self._in_main = threading.current_thread() is threading.main_thread()
            self._first = tracemalloc.take_snapshot()
            self._key, self._name = key, name
            self._t0 = time.perf_counter()
            self._hook += self._t0 - t
            self.state = TRACING

    def _wants(self, name: str) -> bool:
        """Explore every name first; then measure the names that leave the most behind."""
        if self.episodes_by_name[name] < EXPLORE:
            return True
        wanted = self._wanted
        return wanted is None or name in wanted

    def _specific(self, site: tuple[str, int]) -> dict[str, float]:
        """Bytes per episode that each task name leaves at ``site`` beyond what the other names leave there."""
        by_name = self._site_by_name.get(site, Counter())
        means = {n: by_name[n] / e for n, e in self.episodes_by_name.items() if e}
        if len(means) < 2:
            return means
        # Beyond twice what the name that leaves least there leaves: a leak in
        # some task names stands out, residue every name leaves does not.
        # (A site that every task name leaks alike looks like residue too.)
        least = min(means.values())
        return {n: max(0.0, mean - 2 * least) for n, mean in means.items()}

    def _leaving_names(self) -> frozenset[str] | None:
        """The task names whose episodes leave the most behind, at sites the other names do not (None: any)."""
        score: dict[str, float] = {}
        for site in self._site_by_name:
            for n, extra in self._specific(site).items():
                score[n] = score.get(n, 0.0) + extra
        top = max(score.values(), default=0.0)
        if top <= 0:
            return None
        return frozenset(n for n, v in score.items() if v >= 0.5 * top)

    def on_task_finished(self, key: object) -> None:
        """At every task end, in the task's thread: an armed window starts tracing; a traced task is done."""
        if self.state not in AT_TASK_END or self._lock.mine():
            return
        with self._lock:
            if self.state == ARMED:
                if self._gap > 0:
                    self._gap -= 1
                elif self._admit is not None and not self._admit():
                    self._granted = 0
                    self.state = IDLE
                elif not tracemalloc.is_tracing():
                    tracemalloc.start(self._frames)
                    self._wall0 = self._clock()
                    self._t0 = time.perf_counter()
                    self._warm = []
                    self.state = STARTED
                else:
                    self._granted = 0  # the host traces now: leave it alone
                    self.state = IDLE
                return
            if self.state in (WARMING, COOLING):
                self._warm.append((self._warm_name, time.perf_counter() - self._warm_t0))
                if self.state == COOLING:
                    self.state = AWAITING
                return
            if key != self._key:
                return
            self._traced = time.perf_counter() - self._t0
            if not tracemalloc.is_tracing():
                self._granted = 0
                self._drop("stopped by the host")
                return
            self._peak = max(self._peak, tracemalloc.get_tracemalloc_memory())
            t = time.perf_counter()
            self._ended = tracemalloc.take_snapshot()  # C: what the measured task left, in flight or not
            self._hook += time.perf_counter() - t
            self.state = MEASURED

    def _end_episode(self) -> None:
        """Snapshot S2 and the join at the boundary after the traced task; tracing stops (lock held)."""
        t = time.perf_counter()
        second: tracemalloc.Snapshot | None = None
        joined: tuple[TypeSite, ...] = ()
        try:
            if tracemalloc.is_tracing():
                second = tracemalloc.take_snapshot()
                if self._types:
                    joined = type_sites(self._types, self.join_seconds, self._traceback_of, generations=2)
        finally:
            # Whatever failed, tracing stops here and the episode ends.
            if tracemalloc.is_tracing():
                tracemalloc.stop()
            done = second is not None and self._first is not None and self._ended is not None
            if done:
                # Compared at once, untraced, and dropped: a snapshot kept
                # until the agent thread's next tick would sit in the
                # process's memory readings for hundreds of tasks.
                self._to_compare.append((self._name, _left_behind(self._first, self._ended, second, self._in_main),  # type: ignore[arg-type]
                                         joined))
            else:
                self._granted = 0  # the host stopped tracing: leave its tracemalloc alone from now on
            self._first = self._ended = second = None
            hook = self._hook + time.perf_counter() - t
            self._finished.append(Episode(self._name, self._wall0, self._clock(), self._traced, hook,
                                          self._frames, "done" if done else "stopped by the host",
                                          tuple(self._warm)))
            self._next()

    def _drop(self, outcome: str) -> None:
        """Stop an episode without a result (lock held)."""
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        traced = time.perf_counter() - self._t0 if self.state == TRACING else 0.0
        self._first = self._ended = None
        self._finished.append(Episode(self._name or self._warm_name, self._wall0, self._clock(), traced, self._hook,
                                      self._frames, outcome, tuple(self._warm)))
        self._next()

    def _next(self) -> None:
        self._granted = max(0, self._granted - 1)
        self._key = None
        self._name = ""
        self._hook = 0.0
        self._warm = []
        self.state = ARMED if self._granted else IDLE
        # A random gap (seeded: the same task sequence gets the same
        # choices): a fixed one would lock onto a fixed position in a
        # repeating task sequence and never measure some task names.
        self._gap = self._rng.randint(0, 2 * self.gap_tasks)
        self._waited = 0


def _ranked(sites: list[AllocationSite], top: int) -> list[AllocationSite]:
    """The ``top`` largest sites, and each task name's ``SITES_PER_NAME`` largest, largest first."""
    by_size = sorted(sites, key=lambda s: -s.size)
    chosen = by_size[:top]
    per_name = Counter(s.task for s in chosen)
    for s in by_size[top:]:
        if per_name[s.task] < SITES_PER_NAME:
            per_name[s.task] += 1
            chosen.append(s)
    return chosen


def _left_behind(first: tracemalloc.Snapshot, ended: tracemalloc.Snapshot, second: tracemalloc.Snapshot,
                 in_main: bool = False) -> list[AllocationSite]:
    """Per traceback, what the measured task left behind: the smaller of C − A and B − A.

    A is the measured task's start, C its end, B the start of the task after
    the cool-down. C − A holds the leak and what the task still had in
    flight at its end; B − A holds the leak and what is in flight at a later
    task start (the next message, whose size depends on its task). Only
    the leak is in both. One exception, when the task ran in the main
    thread (``in_main``): a trace made by another thread (rooted in a
    thread's bootstrap) counts from B − A alone, since what the task handed
    to a thread (a queue, a reporter) may be kept there after C and the next
    message is never another thread's. Traces are grouped first and the few
    groups checked for bilge's own frames (no pattern matching per trace:
    this runs in the task's thread).
    """
    start = {stat.traceback: stat for stat in first.statistics("traceback")}
    end = {stat.traceback: stat for stat in ended.statistics("traceback")}
    native_b = _native_bytes(second)
    native_a = _native_bytes(first) if native_b else {}
    native_c = _native_bytes(ended) if native_b else {}
    sites = []
    for stat in second.statistics("traceback"):
        at_start, at_end = start.get(stat.traceback), end.get(stat.traceback)
        base_size, base_count = (at_start.size, at_start.count) if at_start else (0, 0)
        tb = stat.traceback
        native_b_here = native_b.get(tb, 0)
        if (in_main and (at_end is None or stat.size > at_end.size)
                and _in_another_thread(tb, second.traceback_limit)):
            size, count = stat.size - base_size, stat.count - base_count
            native = native_b_here - native_a.get(tb, 0)
        elif at_end is None:
            continue
        else:
            size = min(stat.size, at_end.size) - base_size
            count = min(stat.count, at_end.count) - base_count
            native = min(native_b_here, native_c.get(tb, 0)) - native_a.get(tb, 0) if native_b_here else 0
        if size <= 0 or count <= 0:
            continue
        frames = list(stat.traceback)  # oldest first
        if any(is_own(f.filename) for f in frames):
            continue
        site = innermost_user_frame(frames) or frames[-1]
        sites.append(AllocationSite(file=site.filename, line=site.lineno, size=size, count=count,
                                    owner=owner_of(site.filename),
                                    traceback=tuple("%s:%d" % (f.filename, f.lineno) for f in reversed(frames)),
                                    native=max(0, min(native, size))))
    return sites


def _native_bytes(snapshot: tracemalloc.Snapshot) -> dict[tracemalloc.Traceback, int]:
    """Bytes per traceback in domains other than Python's own (0): what C extensions allocated themselves and
    registered with ``PyTraceMalloc_Track`` (numpy's array data, domain 389047).

    Read from the snapshot's raw traces, (domain, size, frames, total) tuples
    (``Lib/tracemalloc.py``, ``_Traces``, unchanged since 3.4): grouping by
    domain through ``filter_traces`` costs several times what the episode's
    own statistics cost, in the task's thread. Without them: no native bytes.
    """
    raw = getattr(getattr(snapshot, "traces", None), "_traces", None)
    if not isinstance(raw, list):
        return {}
    out: dict[tracemalloc.Traceback, int] = {}
    frames_seen: dict[object, tracemalloc.Traceback] = {}
    try:
        for trace in raw:
            if trace[0]:
                frames = trace[2]
                tb = frames_seen.get(frames)
                if tb is None:
                    tb = frames_seen[frames] = tracemalloc.Traceback(frames)
                out[tb] = out.get(tb, 0) + trace[1]
    except (TypeError, IndexError, ValueError):  # another layout: the sites stay, without their native share
        return {}
    return out


_THREAD_ROOT = threading.__file__


def _in_another_thread(traceback: tracemalloc.Traceback, limit: int) -> bool:
    """True when the whole traceback is known (shorter than the snapshot's ``limit``, or its total depth says
    so) and starts in ``threading``: a thread's bootstrap, not the main thread's stack."""
    frames = list(traceback)  # oldest first
    whole = len(frames) < limit or traceback.total_nframe == len(frames)
    return bool(frames) and whole and frames[0].filename == _THREAD_ROOT
