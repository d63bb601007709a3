"""Does this callable leak? bilge's diagnosis of one callable, called repeatedly in this process.

The core of the pytest plugin (``@pytest.mark.no_leak``, the ``bilge_leaks``
fixture) and of ``bilge guard``. It runs the same analysis ``bilge report``
runs on a worker, on the same records, so a test fails with the finding a
user would see from a worker: verdict, bytes and objects per call, type,
holder, allocation line, hint.

1. **Measure**: the callable runs ``calls`` times. Every ``stride`` calls,
   memory is read after a full collection (garbage that the collector will
   free is not a leak; when the code under test disabled the collector, no
   collection: what it keeps is what a worker would keep). The process's
   older objects are frozen out of the collector meanwhile (``gc.freeze``),
   so a collection costs what the calls made, not the test suite's heap.
   Per-call data goes into preallocated arrays: the check's own bookkeeping
   must not be the growth it measures.
2. **Judge**: the readings become the task records and samples of one
   process, judged by ``analysis.diagnose`` (RSS and heap-block trends after
   warm-up, with per-call thresholds instead of a worker's absolute ones).
   A leak verdict must survive twice the calls (a bounded cache still
   filling at the end of the first calls levels off in the second half);
   an inconclusive one (growth slowing) buys more calls, up to ``max_calls``.
3. **Explain** (only a leak pays for it): censuses between calls name the
   growing types; holder searches name what keeps them; tracemalloc episodes
   (one call traced at a time) or, for native growth, glibc's in-use bytes
   per line name the allocation site. Then the diagnosis runs again.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bilge.analysis import census_diff, kind
from bilge.analysis.diagnose import diagnose
from bilge.analysis.trend import TrendPolicy
from bilge.model import (
    INCONCLUSIVE,
    LEAK,
    AllocationWindow,
    Census,
    Diagnosis,
    FdSnapshot,
    Finding,
    Holder,
    ProcessData,
    ProcessInfo,
    RunData,
    RunInfo,
    Sample,
    TaskRecord,
)
from bilge.samplers import process as proc_sampler
from bilge.samplers.census import Census as CensusTaker
from bilge.samplers.holders import find_holders, registry_counts
from bilge.samplers.native_sites import NativeWindow
from bilge.samplers.sampled_allocations import SampledAllocations

# Fewest readings a verdict is given on (each is a collection and a read).
MIN_READINGS = 16
# RSS moves in pages: growth under this over the judged half is noise.
MIN_RSS_GROWTH = 64 * 1024
# Censuses taken to name the growing types, and calls between two of them.
CENSUSES = 4
CENSUS_CALLS = 10
# Growing types whose holders are searched.
HOLDER_TYPES = 4
# Allocation episodes (one traced call each) and the calls they may take.
EPISODES = 6
NATIVE_CALLS = 24


@dataclass(frozen=True)
class GuardPolicy:
    """How a check runs and what it calls a leak.

    Args:
        calls: calls measured before the first verdict.
        max_calls: calls measured at most (an inconclusive verdict buys more).
        max_seconds: measuring stops adding calls after this long.
        readings: memory readings over ``calls`` (each after a collection).
        min_bytes_per_call: steady growth below this per call is not a leak.
        explain: name the type, holder and line of a leak (costs a few hundred ms).
        frames: stack depth of the allocation episodes.
        holder_seconds: time one holder search may take.
        show_values: render held values in the finding (off: memory holds secrets).
    """

    calls: int = 200
    max_calls: int = 1000
    max_seconds: float = 30.0
    readings: int = 40
    min_bytes_per_call: float = 64.0
    explain: bool = True
    frames: int = 12
    holder_seconds: float = 0.5
    show_values: bool = False

    def __post_init__(self) -> None:
        if self.calls < MIN_READINGS * 2:
            raise ValueError("calls must be at least %d (got %d): the verdict needs %d readings after warm-up"
                             % (MIN_READINGS * 2, self.calls, MIN_READINGS))
        if self.max_calls < self.calls:
            raise ValueError("max_calls (%d) must be at least calls (%d)" % (self.max_calls, self.calls))
        if self.min_bytes_per_call <= 0:
            raise ValueError("min_bytes_per_call must be positive (got %r)" % self.min_bytes_per_call)

    @property
    def stride(self) -> int:
        """Calls between two readings."""
        return max(1, self.calls // self.readings)

    def rss_policy(self) -> TrendPolicy:
        return TrendPolicy(min_points=MIN_READINGS, alpha=1e-4, min_growth=MIN_RSS_GROWTH,
                           min_slope=self.min_bytes_per_call)

    def native_policy(self) -> TrendPolicy:
        # glibc's in-use bytes: exact like heap blocks, and they see native
        # allocations that reuse freed memory before RSS moves.
        return TrendPolicy(min_points=MIN_READINGS, alpha=1e-6, min_growth=MIN_RSS_GROWTH,
                           min_slope=self.min_bytes_per_call)

    def heap_policy(self) -> TrendPolicy:
        # Heap blocks are exact after a collection; at ~64 B a block.
        per_call = self.min_bytes_per_call / kind.BLOCK_BYTES
        return TrendPolicy(min_points=MIN_READINGS, alpha=1e-6, min_growth=max(32.0, per_call * self.calls / 4),
                           min_slope=per_call)


DEFAULT_POLICY = GuardPolicy()


@dataclass(frozen=True)
class GuardResult:
    """The outcome of one check: the verdict, its finding and what the check cost."""

    name: str
    verdict: str
    reason: str
    confidence: float
    calls: int
    seconds: float
    confirmed_after_calls: int | None
    bytes_per_call: float | None
    blocks_per_call: float | None
    native_bytes_per_call: float | None
    finding: Finding | None
    diagnosis: Diagnosis = field(repr=False)

    @property
    def leaked(self) -> bool:
        return self.verdict == LEAK


def check(fn: Callable[[], object], name: str | None = None, policy: GuardPolicy = DEFAULT_POLICY) -> GuardResult:
    """Call ``fn`` repeatedly and diagnose whether it leaks.

    Args:
        fn: the code under test, called without arguments.
        name: what the finding calls it (default: the callable's qualified name).
        policy: how many calls, thresholds, whether to explain.

    Returns:
        The verdict and, for a leak, the finding. Exceptions of ``fn`` propagate.
    """
    return _Check(fn, name or _name_of(fn), policy).run()


def _name_of(fn: Callable[[], object]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    module = getattr(inner, "__module__", None) or ""
    qualname = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return "%s.%s" % (module, qualname) if module else qualname


class _Check:
    """One check's state: the per-call arrays, the readings and what the explain stage found."""

    def __init__(self, fn: Callable[[], object], name: str, policy: GuardPolicy) -> None:
        self.fn = fn
        self.name = name
        self.policy = policy
        # Preallocated: filling them allocates nothing the heap reading sees.
        self.started = array("d", bytes(8 * policy.max_calls + 8 * (CENSUSES * CENSUS_CALLS + 200)))
        self.ended = array("d", self.started)
        self.done = 0
        self.readings = _Readings(policy.max_calls // policy.stride + 2)
        self.censuses: list[Census] = []
        self._census_taker = CensusTaker()
        self.windows: list[AllocationWindow] = []
        self.holders: list[Holder] = []
        self.fds: list[FdSnapshot] = []
        self.measured = 0
        self._rss = proc_sampler.RssReader()
        self._offset = [0, 0, 0, 0]  # the check's own memory in later readings (blocks, rss, malloc used/free)
        self._last_raw: tuple[int | None, ...] = (None, None, None, None)
        self._malloc = proc_sampler.MallocStats()
        self._registries: dict[str, int] | None = None  # C-held registry sizes at the previous look
        self._t0 = time.time()

    # ------------------------------------------------------------- phases --
    def run(self) -> GuardResult:
        t0 = time.perf_counter()
        self.fn()  # the first call may import, compile and fill caches: not measured
        self._registries = registry_counts()
        if self.policy.explain:
            # Counts before the growth: a container that holds far more than
            # its type grew by since then is a static table, not the holder.
            self._census(sized=False)
        frozen_by_us = gc.get_freeze_count() == 0
        if frozen_by_us:
            gc.freeze()
        try:
            self._read()
            self.fds.append(self._fd_snapshot())
            self._measure(self.policy.calls)
            diagnosis = self._judge()
            confirming = diagnosis.verdict == LEAK
            while (diagnosis.verdict == INCONCLUSIVE or confirming) and self._may_extend(t0):
                # A leak must survive twice the calls: a bounded cache still
                # filling when the first calls end levels off in the second
                # half. An inconclusive verdict buys half as many again.
                self._measure(min(self.policy.max_calls - self.measured,
                                  self.policy.calls if confirming else max(self.policy.calls // 2, 1)))
                confirming = False
                diagnosis = self._judge()
            self.fds.append(self._fd_snapshot())
        finally:
            if frozen_by_us:
                gc.unfreeze()
        if diagnosis.verdict == LEAK and self.policy.explain:
            self._explain(diagnosis)
            diagnosis = self._diagnose()
        return self._result(diagnosis, time.perf_counter() - t0)

    def _may_extend(self, t0: float) -> bool:
        return self.measured < self.policy.max_calls and time.perf_counter() - t0 < self.policy.max_seconds

    def _measure(self, calls: int) -> None:
        """Measured calls: memory read after every ``stride``-th."""
        stride = self.policy.stride

        def read(i: int) -> None:
            if (i + 1) % stride == 0:
                self._read()

        self._calls(calls, on_end=read)
        self.measured = self.done

    def _read(self, rebase: bool = False) -> None:
        """One reading after a collection (unless the code under test turned the collector off).

        ``rebase``: no call ran since the last reading, but the check did
        something that leaves memory behind (a diagnosis imports, fills
        caches): the difference is the check's own, and is taken out of
        every later reading.
        """
        if gc.isenabled():
            gc.collect()
        raw = (proc_sampler.heap_blocks(), self._rss.read(), *self._malloc.read())
        if rebase:
            self._offset = [o + (r - last if r is not None and last is not None else 0)
                            for o, r, last in zip(self._offset, raw, self._last_raw)]
            self._last_raw = raw
            return
        self._last_raw = raw
        blocks, rss, malloc_used, malloc_free = (r - o if r is not None else None for r, o in zip(raw, self._offset))
        garbage, enabled, _ = proc_sampler.gc_state()
        self.readings.add(time.time(), (self.done, blocks, rss, malloc_used, malloc_free, proc_sampler.count_fds(),
                                        garbage, enabled, proc_sampler.gc_collections(), threading.active_count()))

    def _calls(self, n: int, on_start: Callable[[int], None] | None = None,
               on_end: Callable[[int], None] | None = None) -> None:
        """Calls recorded as calls (censuses count per call); the hooks get the call's index, ``on_end`` once it
        is counted in ``done``."""
        fn, started, ended, clock = self.fn, self.started, self.ended, time.time
        for _ in range(n):
            i = self.done
            if i >= len(started):
                return
            if on_start:
                on_start(i)
            started[i] = clock()
            fn()
            ended[i] = clock()
            self.done = i + 1
            if on_end:
                on_end(i)

    def _census(self, sized: bool) -> None:
        taken = self._census_taker.take(sized=sized)
        self.censuses.append(Census(t=taken.t, tasks_done=self.done, objects=taken.objects,
                                    duration=taken.duration, types={r[0]: (r[1], r[2]) for r in taken.types}))

    def _explain(self, diagnosis: Diagnosis) -> None:
        for n in range(CENSUSES):
            if n:
                self._calls(CENSUS_CALLS)
            self._census(sized=True)
        growing = [g.type for g in census_diff.type_growth(self.censuses[-CENSUSES:], CENSUS_CALLS * (CENSUSES - 1),
                                                           census_diff.MIN_COUNT_PER_CALL * CENSUS_CALLS)
                   if g.steady][:HOLDER_TYPES]
        if growing:
            self._search_holders(growing)
        if diagnosis.kind in (kind.NATIVE, kind.FRAGMENTATION) or not growing:
            self._native_window()
        else:
            self._episodes(growing)
        if growing:
            self._search_holders(growing)

    def _search_holders(self, types: list[str]) -> None:
        started = time.time()
        search = find_holders(types, max_seconds=self.policy.holder_seconds, show_values=self.policy.show_values,
                              registries_before=self._registries)
        self._registries = registry_counts()
        t = time.time()
        self.holders += [Holder(t=t, started=started, type=p.type_name, path=p.path, root_kind=p.root_kind,
                                container_type=p.container_type, container_len=p.container_length,
                                targets=p.targets, values=p.values) for p in search.paths]

    def _episodes(self, types: list[str]) -> None:
        window = SampledAllocations(episodes=EPISODES, min_episodes=2, max_episode_seconds=5.0, gap_tasks=1,
                                    join_seconds=0.05)
        if not window.open(types):
            return  # tracemalloc is on already (the test traces memory itself)
        window.arm(EPISODES, frames=self.policy.frames)
        result: AllocationWindow | None = None
        try:
            for _ in range(EPISODES * 8):
                self._calls(1, lambda i: window.on_task_started(i, self.name), window.on_task_finished)
                _, result = window.poll()
                if result is not None:
                    break
            else:
                _, result = window.close_now()
        finally:
            window.abort()
        if result is not None:
            self.windows.append(result)

    def _native_window(self) -> None:
        window = NativeWindow(self._malloc.in_use if self._malloc.in_use() is not None else None,
                              window_tasks=NATIVE_CALLS, max_seconds=30.0)
        if not window.open():
            return
        result: AllocationWindow | None = None
        try:
            window.on_task_finished()  # arms at this boundary
            for _ in range(NATIVE_CALLS * 2):
                self._calls(1, None, lambda i: window.on_task_finished())
                result = window.poll()
                if result is not None:
                    break
        finally:
            window.abort()
        if result is not None:
            self.windows.append(result)

    def _fd_snapshot(self) -> FdSnapshot:
        return FdSnapshot(t=time.time(), tasks_done=self.done, targets=proc_sampler.fd_targets())

    # ------------------------------------------------------------ results --
    def _process(self) -> ProcessData:
        samples = self.readings.samples()
        after = {s.tasks_done: s for s in samples}
        tasks = []
        for i in range(self.done):
            read = after.get(i + 1)
            before = after.get(i) if read else None
            tasks.append(TaskRecord(
                seq=i + 1, name=self.name, started=self.started[i], ended=self.ended[i],
                rss_before=before.rss if before else None, rss_after=read.rss if read else None,
                blocks_before=before.heap_blocks if before else None,
                blocks_after=read.heap_blocks if read else None, failed=False, gc_runs=None))
        info = ProcessInfo(id=1, pid=os.getpid(), ppid=os.getppid(), parent_id=None, role="guard",
                           started=self._t0, ended=None, argv=" ".join(sys.argv))
        return ProcessData(info=info, samples=samples, tasks=tuple(tasks),
                           censuses=tuple(self.censuses), windows=tuple(self.windows),
                           holders=tuple(self.holders), fd_snapshots=tuple(self.fds))

    def _judge(self) -> Diagnosis:
        """A verdict between measuring phases; what the diagnosis leaves in memory is not the callable's."""
        diagnosis = self._diagnose()
        self._read(rebase=True)
        return diagnosis

    def _diagnose(self) -> Diagnosis:
        run = RunInfo(id=1, started=self._t0, ended=time.time(), command="bilge guard %s" % self.name,
                      exit_code=None, hostname=socket.gethostname())
        return diagnose(RunData(run=run, processes=(self._process(),)), self.policy.rss_policy(),
                        self.policy.heap_policy(), self.policy.native_policy(), census_steps=False)

    def _result(self, d: Diagnosis, seconds: float) -> GuardResult:
        p = d.processes[0] if d.processes else None
        per_call = self._per_call()
        finding = d.findings[0] if d.findings else None
        if finding is not None and finding.bytes_per_call is None and per_call[0] is not None:
            finding = replace(finding, bytes_per_call=round(per_call[0], 1))
        return GuardResult(
            name=self.name, verdict=d.verdict, reason=p.reason if p else d.reason,
            confidence=p.confidence if p else 0.0, calls=self.done, seconds=round(seconds, 3),
            confirmed_after_calls=p.confirmed_after_tasks if p else None,
            bytes_per_call=per_call[0], blocks_per_call=per_call[1], native_bytes_per_call=per_call[2],
            finding=finding, diagnosis=d)

    def _per_call(self) -> tuple[float | None, float | None, float | None]:
        """RSS bytes, heap blocks and glibc in-use bytes per call over the judged (second) half of the readings."""
        samples = self.readings.samples()
        half = samples[len(samples) // 2:]
        if len(half) < 2 or half[-1].tasks_done <= half[0].tasks_done:
            return None, None, None
        first, last = half[0], half[-1]
        calls = last.tasks_done - first.tasks_done

        def rate(field: str) -> float | None:
            a, b = getattr(first, field), getattr(last, field)
            return (b - a) / calls if a is not None and b is not None else None

        return rate("rss"), rate("heap_blocks"), rate("malloc_used")


class _Readings:
    """Memory readings in preallocated arrays: taking one allocates nothing that outlives it.

    A list of ``Sample`` objects would grow the Python heap by a few blocks
    per reading, which the heap-block trend would see as the code's leak.
    """

    FIELDS = ("t", "tasks_done", "heap_blocks", "rss", "malloc_used", "malloc_free", "fds", "gc_garbage",
              "gc_enabled", "gc_collections", "threads")
    MISSING = -1

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.n = 0
        self._t = array("d", bytes(8 * capacity))
        self._values = [array("q", bytes(8 * capacity)) for _ in self.FIELDS[1:]]

    def add(self, t: float, values: tuple[int | None, ...]) -> None:
        """One reading: its time, then the other ``FIELDS`` in order (None when unknown)."""
        n = self.n
        if n >= self.capacity:
            return
        self._t[n] = t
        for column, value in zip(self._values, values):
            column[n] = self.MISSING if value is None else value
        self.n = n + 1

    def samples(self) -> tuple[Sample, ...]:
        out = []
        for i in range(self.n):
            v = {name: (None if column[i] == self.MISSING else column[i])
                 for name, column in zip(self.FIELDS[1:], self._values)}
            out.append(Sample(t=self._t[i], uss=None, pss=None, gc_frozen=0, **v))  # type: ignore[arg-type]
        return tuple(out)


def describe(result: GuardResult) -> str:
    """The check's outcome as a few plain lines (a pytest failure, ``bilge guard``'s text output)."""
    lines = ["%s: %s after %d calls (%.2f s): %s" % (result.name, result.verdict, result.calls, result.seconds,
                                                     result.reason)]
    if result.verdict == LEAK:
        lines[0] += " (confidence %.4f)" % result.confidence
    f = result.finding
    if result.bytes_per_call is not None and result.blocks_per_call is not None:
        native = ", %+.0f bytes glibc in-use" % result.native_bytes_per_call \
            if result.native_bytes_per_call is not None else ""
        lines.append("  growth per call: %+.0f bytes RSS, %+.1f Python heap blocks%s"
                     % (result.bytes_per_call, result.blocks_per_call, native))
    if result.confirmed_after_calls:
        lines.append("  confirmed after:  %d calls" % result.confirmed_after_calls)
    if f is not None:
        lines.append("  kind:             %s" % f.kind)
        if f.type:
            per = " (%+.2f per call)" % f.count_per_call if f.count_per_call is not None else ""
            lines.append("  growing type:     %s%s" % (f.type, per))
        lines.append("  held by:          %s" % (f.holder or "no holder found"))
        lines.append("  allocated at:     %s" % (f.location or "not located"))
        lines.append("  hint:             %s" % f.hint)
        if f.values:
            lines.append("  held values:      %s" % ", ".join(f.values))
    return "\n".join(lines)
