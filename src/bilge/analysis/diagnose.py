"""The diagnosis of a run: per-process verdicts, attribution, findings.

Data flows one way: ``RunData`` (from the store) → per-process
``ProcessDiagnosis`` → pooled findings → ``Diagnosis`` (for the reporters).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from bilge.analysis import (
    attribution,
    census_diff,
    containers,
    findings,
    garbage,
    holders,
    kind,
    own_activity,
    recycling,
    signature,
    sites,
    trend,
)
from bilge.analysis.findings import Leak
from bilge.analysis.trend import DEFAULT_POLICY, TrendPolicy
from bilge.model import (
    INCONCLUSIVE,
    LEAK,
    MALLOC,
    NO_LEAK,
    STAGE_HOLDER_SEARCH,
    TRACEMALLOC,
    Census,
    ContainerGrowth,
    Diagnosis,
    Finding,
    Holder,
    ProcessData,
    ProcessDiagnosis,
    RunData,
    Sample,
    Series,
    TaskGrowth,
    TaskRecord,
    Trend,
    TypeGrowth,
)

MIN_CENSUSES = 3
# A process without tasks is judged on time: one sample every 0.5 s by
# default, so this asks for about five minutes of samples.
TIME_POLICY = TrendPolicy(min_points=600, min_slope=1.0)
# The same test on Python heap blocks (units: blocks, not bytes), at a
# stricter significance. Heap blocks are an exact count of live objects'
# memory (no pages, no allocator slack), so a small steady trend is certain
# long before it shows in RSS: a slow leak (a short key remembered per call,
# ~0.3 blocks a task) is judged by what it costs in a day at the process's
# task rate (~64 B a block; 16 MiB a day is 1 GiB in two months), and a
# trend of at least 1500 blocks (~96 KiB) over the window: the zoo's benign
# apps' caches still fill by up to ~1 block a task (~850 over a short
# child's window) once bilge's own memory is taken out (it was ~3 blocks a
# task and ~1,000-block steps before; the floor was 4000 blocks then).
HEAP_POLICY = TrendPolicy(alpha=1e-6, min_growth=1500, min_slope=0.05, min_per_day=(16 << 20) / 64,
                          unit_bytes=64)
# The block floor tells a slow leak from a library's cache still filling by
# size alone. A module-level container that grew steadily through the
# window (see analysis/containers.py) tells them apart by what grows: with
# one, a heap trend under the floor is a leak when it is as certain and
# costs as much a day.
CORROBORATED_HEAP_POLICY = replace(HEAP_POLICY, min_growth=1)
# Celery's MainProcess under prefork: it consumes and supervises, runs no task.
POOL_PARENT = "celery-main"


@dataclass(frozen=True)
class _Window:
    """The part of one process's data that explains its growth.

    It starts a quarter of the way in: the verdict cuts warm-up hard (it
    looks at the second half only), while per-task and per-type effects
    only need the first lazy imports and cache fills out of the way.
    """

    data: ProcessData  # as stored: every task (calls between censuses count them all)
    tasks: tuple[TaskRecord, ...]  # re-based: the agent's own memory taken out
    samples: tuple[Sample, ...]
    censuses: tuple[Census, ...]
    kind: str | None
    evidence: tuple[str, ...]
    leaky: TaskGrowth | None
    holders: tuple[Holder, ...]  # the process's, without static tables (see holders.plausible)
    on_heap: bool = False  # the verdict rests on the Python heap alone (RSS has not followed)
    containers: tuple[ContainerGrowth, ...] = ()  # module-level containers still growing in the window
    garbage: bool = False  # full collections took back most of the heap's growth (analysis/garbage.py)


def diagnose(run: RunData, policy: TrendPolicy = DEFAULT_POLICY, heap_policy: TrendPolicy = HEAP_POLICY,
             native_policy: TrendPolicy | None = None, census_steps: bool = True) -> Diagnosis:
    """Diagnose a whole run.

    Args:
        run: everything the store holds about the run.
        policy: thresholds of the per-process verdict (on RSS, bytes).
        heap_policy: thresholds of the same verdict on Python heap blocks.
        native_policy: thresholds of the same verdict on glibc's in-use bytes,
            if they are read often enough to judge (the in-process check reads
            them with every reading; a worker's samples are too few yet).
        census_steps: take the memory each census left out of the task series
            (an agent's censuses run among the tasks; ``bilge.guard`` counts
            between its measured calls, and re-bases its readings itself).
    """
    judged = tuple(_judge(p, policy, heap_policy, native_policy, census_steps)
                   for p in run.processes if p.samples or p.tasks)
    leaking = [(d, w) for d, w in judged if d.verdict == LEAK]
    growth = attribution.task_growth([w.tasks for _, w in leaking]) if leaking else ()
    verdicts = Verdicts(judged=judged, growth=tuple(growth), findings=_pooled_findings(leaking, growth))
    for rule in RUN_RULES:
        verdicts = rule(verdicts)
    judged, growth, findings = verdicts.judged, verdicts.growth, verdicts.findings
    earlier = run.earlier_findings
    processes = tuple(_signed(_with_findings(d, w), earlier) if d.verdict == LEAK else d for d, w in judged)
    findings = signature.stamped(findings, earlier)
    verdict, reason = _overall(processes)
    confidence = max((d.confidence for d in processes if d.verdict == verdict), default=0.0)
    return Diagnosis(run=run.run, verdict=verdict, kind=findings[0].kind if findings else None,
                     confidence=confidence, findings=findings, processes=processes, reason=reason,
                     task_growth=growth, recycling=recycling.summarise(run))


@dataclass(frozen=True)
class Verdicts:
    """The run's per-process verdicts (with the window each was explained from) and the findings pooled from its
    leaking processes, as the run-level rules leave them."""

    judged: tuple[tuple[ProcessDiagnosis, _Window], ...]
    growth: tuple[TaskGrowth, ...] = ()
    findings: tuple[Finding, ...] = ()

    @property
    def leaking(self) -> tuple[tuple[ProcessDiagnosis, _Window], ...]:
        return tuple((d, w) for d, w in self.judged if d.verdict == LEAK)

    def undecided(self, why: Callable[[ProcessDiagnosis, _Window], ProcessDiagnosis]) -> Verdicts:
        """Every leaking process re-judged by ``why`` (to an inconclusive verdict), and no findings."""
        return Verdicts(judged=tuple((why(d, w), w) if d.verdict == LEAK else (d, w) for d, w in self.judged))


def unexplained(v: Verdicts) -> Verdicts:
    """A leak verdict nothing explains is itself a warning sign (issue 9): in processes that ran tasks, a leak
    names a task, a type or a holder. Growth none of them explains is as often a cache still filling, memory
    bilge's own explain stage left behind, or garbage waiting for a full collection (in the zoo's runs more
    often than a leak): say which it may be and what more is needed."""
    return v.undecided(_unexplained_process) if v.findings and _unexplained_leak(v.findings[0], v.leaking) else v


def still_filling(v: Verdicts) -> Verdicts:
    """What holds the growth is a cache still filling, ever more slowly: bounded if its keys are, which only a
    longer run tells."""
    filled = _filling(v.findings[0], v.judged, v.leaking) if v.findings else None
    return v.undecided(lambda d, _: _still_filling(d, *filled)) if filled is not None else v


def one_kind(v: Verdicts) -> Verdicts:
    """One leak, one kind: the leaking processes the first finding covers take its kind (see ``_reconciled``)."""
    if not v.findings:
        return v
    return replace(v, judged=tuple(_reconciled(d, w, v.findings[0]) for d, w in v.judged))


# The run-level rules, in order: each takes the verdicts the one before left (like the findings' steps).
RUN_RULES: tuple[Callable[[Verdicts], Verdicts], ...] = (unexplained, still_filling, one_kind)


def _signed(d: ProcessDiagnosis, earlier: Mapping[str, float] | None) -> ProcessDiagnosis:
    return replace(d, findings=signature.stamped(d.findings, earlier))


# Kinds one process's window can confuse: how much of its RSS growth its traced Python bytes explain moves with
# its allocator's state (pymalloc arenas, glibc free lists), more in one child than in its twin.
MEMORY_KINDS = (kind.PYTHON_OBJECTS, kind.NATIVE, kind.FRAGMENTATION)


def _reconciled(d: ProcessDiagnosis, w: _Window, first: Finding) -> tuple[ProcessDiagnosis, _Window]:
    """A leaking process the run's first finding covers takes that finding's kind (one leak, one kind) when the
    two differ only between memory kinds; its own evidence stays in its window's lines."""
    if d.verdict != LEAK or d.pid not in first.pids or w.kind == first.kind \
            or w.kind not in MEMORY_KINDS or first.kind not in MEMORY_KINDS:
        return d, w
    return replace(d, kind=first.kind), replace(w, kind=first.kind)


def _filling(first: Finding, judged: Sequence[tuple[ProcessDiagnosis, _Window]],
             leaking: Sequence[tuple[ProcessDiagnosis, _Window]]) -> tuple[str, float, float] | None:
    """The module-level container the first finding's holder runs through, when it fills at a slowing pace over
    the run's processes and no leaking process has another container growing at its pace; else None."""
    if first.holder is None:
        return None
    # Over each container's whole series, not the judged window alone: a
    # cache's fill slows from its first entry, and the container stage only
    # starts reading a container once it has grown for a while.
    filled = [f for f in containers.filling([w.data.container_scans for _, w in judged if w.tasks])
              if _under(first.holder, f[0])]
    if not filled:
        return None
    steady = {g.path for _, w in leaking for g in w.containers} - {filled[0][0]}
    return None if steady else filled[0]


def _still_filling(d: ProcessDiagnosis, path: str, early: float, late: float) -> ProcessDiagnosis:
    more = max(d.tasks_observed // 2, TIME_POLICY.min_points)
    return replace(d, verdict=INCONCLUSIVE, findings=(), trend_line=None, confirmed_after_tasks=None,
                   confirmed_after_calls=None, reason=(
        "memory grows after warm-up (%s), but what holds the growth, %s, fills at a slowing pace (%.3g new "
        "entries per task in the first third of its readings, %.3g in the last): a cache whose keys repeat is "
        "bounded by how many keys there are; about %d more tasks are needed to tell it from a leak"
        % (d.reason, path, early, late, more)))


def _under(holder_path: str, container_path: str) -> bool:
    """Whether a holder path runs through a container's path (the container itself, an item or an attribute)."""
    return holder_path == container_path or holder_path.startswith((container_path + "[", container_path + "."))


def _explained_meanwhile(p: ProcessData) -> bool:
    """Whether bilge's explain stage ran in the process while its memory was still being read after tasks."""
    read = [t.ended for t in p.tasks if t.rss_after is not None]
    return bool(read) and any(start < read[-1] for start, _ in own_activity.activity(p))


def _unexplained(f: Finding) -> bool:
    return f.task is None and f.type is None and f.holder is None


def _unheld(f: Finding) -> bool:
    """A type alone: garbage waiting for a full collection has types that grow too (a dropped tree's nodes)."""
    return f.task is None and f.holder is None


def _unexplained_leak(first: Finding, leaking: Sequence[tuple[ProcessDiagnosis, _Window]]) -> bool:
    """Whether the run's first finding leaves the leaking processes' growth unexplained.

    Only processes that ran tasks of more than one name can be asked for a
    task: the pool's parent is judged on time, and a process running one
    task (``bilge.guard``'s callable, a worker with one task type) has named
    it by running it.
    """
    if not all(d.tasks_observed for d, _ in leaking) or len({t.name for _, w in leaking for t in w.data.tasks}) < 2:
        return False
    if _unexplained(first):
        return True
    # Python objects nothing is seen holding, while no full collection ran:
    # cyclic garbage (a parsed document's tree, an exception's frames) grows
    # just so until one runs. A type alone does not tell them apart, nor does
    # the task that makes the garbage; the heap's floor after a collection
    # would, and so would a holder search (garbage has no path from a root).
    # Nor does the kind: garbage in memory pymalloc does not serve (a dropped
    # tree's dicts and strings over 512 bytes) moves glibc's counters as a
    # native leak does. A native leak bilge measured has a line (its
    # native window's); one with neither line nor holder, in a process never
    # searched, rests on the task's correlation alone.
    awaited = all(garbage.awaited(w.data.samples) for _, w in leaking)
    unsearched = not any(_searched(w.data) for _, w in leaking)
    return awaited and (_unheld(first) or first.holder is None and unsearched and (
        first.kind == kind.PYTHON_OBJECTS or first.kind in MEMORY_KINDS and first.location is None))


def _searched(p: ProcessData) -> bool:
    """Whether bilge's explain stage searched the process for what holds its growing types."""
    return bool(p.holders) or bool(p.cost and any(r.stage == STAGE_HOLDER_SEARCH for r in p.cost.runs))


def _unexplained_process(d: ProcessDiagnosis, w: _Window) -> ProcessDiagnosis:
    if _explained_meanwhile(w.data):
        cause = "bilge's own explain stage ran in this process meanwhile and may have left it"
    elif garbage.awaited(w.data.samples) and not _searched(w.data):
        cause = ("no full collection ran while the collector was on and bilge has not searched for what holds the "
                 "growing objects yet, so it may be cyclic garbage waiting for a collection")
    elif garbage.awaited(w.data.samples):
        cause = "no full collection ran while the collector was on, so it may be garbage waiting for one"
    else:
        cause = "a cache still filling looks the same until it stops"
    return replace(d, verdict=INCONCLUSIVE, findings=(), trend_line=None, confirmed_after_tasks=None,
                   confirmed_after_calls=None, reason=(
        "memory grows after warm-up (%s), but no task, object type or holder explains the growth: %s; about %d "
        "more tasks are needed" % (d.reason, cause, max(d.tasks_observed // 2, TIME_POLICY.min_points))))


def _overall(processes: Sequence[ProcessDiagnosis]) -> tuple[str, str]:
    if not processes:
        return INCONCLUSIVE, ("no process recorded any sample: the command may not be a Python program, may "
                              "run Python with -I/-E (which skips the agent), or exited within a second")
    leaking = [d for d in processes if d.verdict == LEAK]
    if leaking:
        return LEAK, "%d of %d processes leak" % (len(leaking), len(processes))
    # Processes that ran tasks must all be judged; a process that only
    # supervises (Celery's main process) counts only when it leaks.
    judged = [d for d in processes if d.tasks_observed] or list(processes)
    if all(d.verdict == NO_LEAK for d in judged):
        return NO_LEAK, "memory is flat after warm-up in every process that ran tasks"
    undecided = next(d for d in judged if d.verdict != NO_LEAK)
    return INCONCLUSIVE, "pid %d: %s" % (undecided.pid, undecided.reason)


@dataclass(frozen=True)
class _Verdict:
    """One process's memory verdict before it is explained: on the tasks' series, or on time for a process
    that runs none (the pool's parent)."""

    trend: Trend
    confirmed: int | None  # tasks after which the verdict was certain
    growth: float | None  # bytes per task (None: judged on time)
    on_heap: bool  # the verdict rests on the Python heap alone (RSS has not followed)
    by_task: bool
    trend_start: float  # when the judged window starts
    explain_start: float  # when the explain window starts (a quarter in)


def _judge(raw: ProcessData, policy: TrendPolicy, heap_policy: TrendPolicy,
           native_policy: TrendPolicy | None, census_steps: bool = True) -> tuple[ProcessDiagnosis, _Window]:
    spans = own_activity.agent_work(raw) if census_steps else own_activity.activity(raw)
    p = replace(raw, tasks=own_activity.without_activity(raw.tasks, spans))
    samples = [s for s in p.samples if s.rss is not None]
    v = _verdict(p, samples, policy, heap_policy, native_policy)
    window = replace(_explain_window(p, v.explain_start, v.trend.verdict == LEAK, v.on_heap), data=raw)
    if v.by_task and v.trend.verdict == LEAK and not (window.containers or holders.growing([window.holders])):
        # Nothing is seen holding more and more: the growth may be garbage
        # that full collections free (a holder found once can be a static
        # table the search reached first, pygments' styles say).
        rejudged = garbage.judged(v.trend, p.samples, p.tasks[min(v.trend.window_start, len(p.tasks) - 1)].seq
                                  if p.tasks else 0, heap_policy, _task_rate(p.tasks[len(p.tasks) // 2:]),
                                  p.tasks, raw.tasks, v.trend.slope if v.on_heap else None)
        if rejudged.verdict != LEAK:
            v = replace(v, confirmed=None)
            window = replace(_explain_window(p, v.explain_start, False), data=raw)
        v = replace(v, trend=rejudged)
    return _process_diagnosis(raw, p, samples, v, window), window


def _verdict(p: ProcessData, samples: Sequence[Sample], policy: TrendPolicy, heap_policy: TrendPolicy,
             native_policy: TrendPolicy | None) -> _Verdict:
    if len(p.tasks) >= policy.min_points or not samples:
        result, confirmed, growth, on_heap = _task_verdict(p, policy, heap_policy, native_policy)
        if on_heap and result.verdict == LEAK:
            # RSS has not followed (its slope is ~0): the growth is the
            # heap's, at ~64 bytes a block (an estimate; the reason gives blocks).
            growth = result.slope * kind.BLOCK_BYTES
        return _Verdict(result, confirmed, growth, on_heap, True,
                        p.tasks[min(result.window_start, len(p.tasks) - 1)].started if p.tasks else 0.0,
                        _quarter_in(p.tasks).started if p.tasks else 0.0)
    x, y = trend.as_arrays([(s.t, s.rss) for s in samples])
    result = trend.assess(x, y, TIME_POLICY, unit="sample")
    if result.verdict == INCONCLUSIVE and result.needed and p.info.role == POOL_PARENT:
        result = replace(result, reason=(
            "the pool's parent runs no tasks and is judged on its memory over time: %d samples so far, "
            "%d needed for a verdict (~%.0f more minutes at one sample every 0.5 s)"
            % (result.points, TIME_POLICY.min_points, result.needed * 0.5 / 60)))
    return _Verdict(result, None, None, False, False, samples[min(result.window_start, len(samples) - 1)].t,
                    samples[len(samples) // 4].t)


def _process_diagnosis(raw: ProcessData, p: ProcessData, samples: Sequence[Sample], v: _Verdict,
                       window: _Window) -> ProcessDiagnosis:
    """The process's verdict, explained by its window, as the reports show it."""
    result = v.trend
    late = [s for s in samples if s.t >= v.trend_start]
    line = trend.fitted_line([s.t for s in late], [float(s.rss or 0) for s in late])
    per_hour = _per_hour(p.tasks[result.window_start:], v.growth) if v.by_task else None
    if per_hour is None:
        per_hour = (line[1][1] - line[0][1]) / (line[1][0] - line[0][0]) * 3600 \
            if line and line[1][0] > line[0][0] else None
    leaky = window.leaky
    fds = [s.fds for s in samples if s.fds is not None]
    return ProcessDiagnosis(
        pid=p.info.pid, role=p.info.role, verdict=result.verdict, kind=window.kind,
        confidence=round(result.confidence, 6),
        growth_bytes_per_task=v.growth if p.tasks else None,
        growth_bytes_per_hour=per_hour, tasks_observed=len(raw.tasks), confirmed_after_tasks=v.confirmed,
        tasks_excluded=len(raw.tasks) - len(p.tasks),
        confirmed_after_calls=_calls([t for t in raw.tasks if t.seq <= v.confirmed], leaky.task)
        if v.confirmed and leaky else None,
        rss_start=samples[0].rss if samples else None, rss_end=samples[-1].rss if samples else None,
        reason=result.reason, rss_series=tuple((s.t, int(s.rss or 0)) for s in samples),
        fds_start=fds[0] if fds else None, fds_end=fds[-1] if fds else None,
        series=_process_series(samples), trend_line=line if result.verdict == LEAK else None,
        sites=sites.leak_sites(p.windows, MALLOC if window.kind == kind.NATIVE else TRACEMALLOC),
        cost=raw.cost, snapshots=raw.snapshots,
    )


MAX_PLOT_POINTS = 400


def _thin(points: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    step = max(1, len(points) // MAX_PLOT_POINTS)
    return tuple(points[::step])


def _process_series(samples: Sequence[Sample]) -> tuple[Series, ...]:
    """RSS, USS, Python heap blocks and open fds over time, thinned for plots."""
    out = []
    for name, unit, field in (("RSS", "bytes", "rss"), ("USS", "bytes", "uss"),
                              ("Python heap blocks", "blocks", "heap_blocks"), ("open fds", "fds", "fds")):
        points = [(s.t, float(v)) for s in samples if (v := getattr(s, field)) is not None]
        if points:
            out.append(Series(name=name, unit=unit, points=_thin(points)))
    return tuple(out)


def _type_series(censuses: Sequence[Census], types: Sequence[TypeGrowth]) -> tuple[Series, ...]:
    """Counts over time of the reported growing types."""
    return tuple(
        Series(name=t.type, unit="objects",
               points=_thin([(c.t, float(c.types[t.type][0])) for c in censuses if t.type in c.types]))
        for t in types
    )


def _task_verdict(p: ProcessData, policy: TrendPolicy, heap_policy: TrendPolicy,
                  native_policy: TrendPolicy | None) -> tuple[Trend, int | None, float, bool]:
    """The verdict on RSS after each task, or on the Python heap (or glibc's in-use bytes) when RSS has not
    followed yet.

    Returns (verdict, confirmed after tasks, RSS slope in bytes per task, whether the verdict rests on the
    Python heap).

    A leak can fill memory that warm-up freed (pymalloc pools, glibc free
    lists) for a long time before RSS moves; heap blocks move with every
    leaked object. The heap path is stricter (``HEAP_POLICY``) because it
    only ever turns a no-leak into a leak.
    """
    # Evenly: past a process's young phase only some tasks are read.
    x, y = trend.evenly(*trend.as_arrays([(t.seq, t.rss_after) for t in p.tasks]))
    result = trend.assess(x, y, policy, unit="task")
    bx, by = trend.evenly(*trend.as_arrays([(t.seq, t.blocks_after) for t in p.tasks]))
    rate = _task_rate(p.tasks[len(p.tasks) // 2:])
    heap = trend.assess(bx, by, heap_policy, unit="task", rate=rate)
    heap_confirmed = _as_task_count(bx, trend.confirmed_after(bx, by, heap_policy, rate=rate)) \
        if heap.verdict == LEAK else None
    if result.verdict == LEAK:
        # Either series may confirm first: RSS stalls while a leak refills
        # memory freed earlier, heap blocks keep counting every object. The
        # heap's is the corroborated one when a growing container lowers its
        # floor, as when RSS has not moved (a leak of 1 KiB strings: ~1.5
        # blocks a task, under the floor for a short child's window).
        if heap_confirmed is None:
            corroborated = _corroborated_heap_verdict(p, bx, by, heap_policy, rate)
            heap_confirmed = corroborated[1] if corroborated is not None else None
        confirmed = [c for c in (_as_task_count(x, trend.confirmed_after(x, y, policy)), heap_confirmed) if c]
        return result, min(confirmed) if confirmed else None, result.slope, False
    if heap.verdict != LEAK:
        corroborated = _corroborated_heap_verdict(p, bx, by, heap_policy, rate)
        if corroborated is not None:
            return (*corroborated, result.slope, True)
        native = _native_verdict(p, native_policy)
        if native is not None:
            return (*native, False)
        return result, None, result.slope, False
    per_day = ", " + trend.per_day_text(heap.slope, rate, heap_policy) if rate else ""
    reason = ("the Python heap grows steadily after warm-up (%+.2f blocks per task, still growing at the end%s) "
              "while RSS has not followed yet: the leak is filling memory freed earlier, and RSS will grow once "
              "that is used up" % (heap.slope, per_day))
    return replace(heap, reason=reason), heap_confirmed, result.slope, True


def _corroborated_heap_verdict(p: ProcessData, bx: Sequence[float], by: Sequence[float], heap_policy: TrendPolicy,
                               rate: float | None) -> tuple[Trend, int | None] | None:
    """A heap trend under the block floor that a steadily growing module-level container corroborates."""
    if not p.container_scans or heap_policy.min_growth <= CORROBORATED_HEAP_POLICY.min_growth:
        return None
    policy = replace(heap_policy, min_growth=CORROBORATED_HEAP_POLICY.min_growth)
    heap = trend.assess(bx, by, policy, unit="task", rate=rate)
    if heap.verdict != LEAK:
        return None
    # The containers' series from the explain window's start (a quarter in),
    # or the heap trend's if that is earlier: the trend looks at the second
    # half, where a short, busy child gets two or three scans within the
    # container stage's budget; a container growing at every scan since a
    # quarter in, and still at the latest, corroborates the heap trend.
    since = min(int(bx[heap.window_start]), _quarter_in(p.tasks).seq) if p.tasks else 0
    grown = containers.growing(p.container_scans, since)
    if not grown:
        return None
    g = grown[0]
    per_day = ", " + trend.per_day_text(heap.slope, rate, policy) if rate else ""
    reason = ("the Python heap grows steadily after warm-up (%+.2f blocks per task, still growing at the end%s), "
              "and %s (a %s of %s) grew from %d to %d entries over %d tasks without shrinking: a slow leak that "
              "RSS has not shown yet" % (heap.slope, per_day, g.path, g.container_type, g.element_type, g.first,
                                         g.last, g.tasks))
    return replace(heap, reason=reason), _as_task_count(bx, trend.confirmed_after(bx, by, policy, rate=rate))


def _quarter_in(tasks: Sequence[TaskRecord]) -> TaskRecord:
    """The task a quarter of the way in: where the explain window (and what corroborates a heap trend) starts."""
    return tasks[len(tasks) // 4]


def _native_verdict(p: ProcessData, policy: TrendPolicy | None) -> tuple[Trend, int | None, float] | None:
    """A leak verdict on glibc's in-use bytes, when RSS and the heap have none (a native leak reusing freed memory)."""
    if policy is None:
        return None
    mx, my = trend.evenly(*trend.as_arrays([(s.tasks_done, s.malloc_used) for s in p.samples if s.tasks_done]))
    native = trend.assess(mx, my, policy, unit="task")
    if native.verdict != LEAK:
        return None
    reason = ("glibc's in-use bytes grow steadily after warm-up (%+.0f bytes per task, still growing at the end) "
              "while RSS and the Python heap have not: native allocations are reusing memory freed earlier, and "
              "RSS will grow once that is used up" % native.slope)
    return replace(native, reason=reason), _as_task_count(mx, trend.confirmed_after(mx, my, policy)), native.slope


def _task_rate(tasks: Sequence[TaskRecord]) -> float | None:
    """Tasks per second over these tasks (None for fewer than two)."""
    if len(tasks) < 2 or tasks[-1].ended <= tasks[0].started:
        return None
    return len(tasks) / (tasks[-1].ended - tasks[0].started)


def _per_hour(tasks: Sequence[TaskRecord], per_task: float | None) -> float | None:
    """Growth per hour as growth per task times the recent task rate.

    Steadier than a line through the few RSS samples of a short trend
    window, which a single page-cache or arena move can tip negative.
    """
    if per_task is None or len(tasks) < 2 or tasks[-1].ended <= tasks[0].started:
        return None
    return per_task * len(tasks) / (tasks[-1].ended - tasks[0].started) * 3600


def _as_task_count(x: Sequence[float], prefix: int | None) -> int | None:
    """A prefix length of the (possibly thinned) series as the task ordinal it ends at."""
    return int(x[prefix - 1]) if prefix else None


def _traced_native(p: ProcessData) -> bool:
    """Whether the episodes saw native bytes an extension registered survive: native memory measured, not
    inferred from RSS steps."""
    return any(s.native for w in p.windows for s in w.sites)


def _explain_window(p: ProcessData, start: float, leaking: bool, on_heap: bool = False) -> _Window:
    tasks = tuple(t for t in p.tasks if t.started >= start)
    samples = tuple(s for s in p.samples if s.t >= start)
    first_task = p.tasks[0].started if p.tasks else start
    earlier = tuple(s for s in p.samples if first_task <= s.t < start)
    leak_kind, evidence = kind.classify(samples, tasks, p.windows, p.fd_snapshots, earlier) if leaking else (None, ())
    if on_heap and leak_kind in (kind.NATIVE, kind.FRAGMENTATION) and not _traced_native(p):
        # The verdict itself rests on the Python heap's growth while RSS has
        # not followed: RSS growth in the window (steps bilge's own explain
        # stage left there, among others) cannot make it native.
        leak_kind, evidence = kind.PYTHON_OBJECTS, (
            "the verdict rests on the Python heap's growth (RSS has not followed); " + evidence[0],) + evidence[1:]
    swept = garbage.dominated(garbage.collections(p.samples, tasks[0].seq), HEAP_POLICY.min_growth) \
        if leaking and tasks else False
    leaky = attribution.lasting_leak([tasks], garbage=swept) if leaking else None
    censuses = _window_censuses(p.censuses, start, own_activity.activity(p))
    return _Window(data=p, tasks=tasks, samples=samples, censuses=censuses,
                   kind=leak_kind, evidence=evidence, leaky=leaky, garbage=swept,
                   holders=holders.plausible(p) if leaking else (), on_heap=on_heap,
                   containers=containers.growing(p.container_scans, tasks[0].seq if tasks else 0) if leaking
                   else ())


def _window_censuses(censuses: Sequence[Census], start: float,
                     busy: Sequence[tuple[float, float]] = ()) -> tuple[Census, ...]:
    """Censuses after warm-up; at least the last MIN_CENSUSES when there are that many.

    A short run may hold only one census after the window start; the last
    few are then the best available evidence of what is still growing.
    Censuses counted while bilge's own explain stage ran (``busy`` spans)
    are left out when enough others remain: they count the holder search's
    and the windows' own tuples, lists and dicts with the worker's.
    """
    quiet = [c for c in censuses if not any(a <= c.t and c.t - c.duration <= b for a, b in busy)]
    if len(quiet) >= MIN_CENSUSES:
        censuses = quiet
    inside = [c for c in censuses if c.t >= start]
    if len(inside) < MIN_CENSUSES:
        inside = list(censuses[-MIN_CENSUSES:])
    return tuple(inside)


def _calls(tasks: Sequence[TaskRecord], name: str) -> int:
    return sum(1 for t in tasks if t.name == name)


def _calls_between(tasks: Sequence[TaskRecord], first: Census, last: Census, name: str | None) -> int | None:
    if name is None:
        return None
    return sum(1 for t in tasks if first.tasks_done < t.seq <= last.tasks_done and t.name == name)


def _types(window: _Window, task: str | None) -> tuple[tuple[TypeGrowth, ...], int | None, float]:
    """Type growth over the window's censuses, the leaking task's calls, and the materiality floor."""
    cs = window.censuses
    if len(cs) < 2:
        return (), None, 0.0
    calls = _calls_between(window.data.tasks, cs[0], cs[-1], task)
    if calls is None:
        # No task named: assume the leak rides on an average task name.
        between = [t for t in window.data.tasks if cs[0].tasks_done < t.seq <= cs[-1].tasks_done]
        names = {t.name for t in between}
        basis = len(between) / len(names) if names else 0.0
    else:
        basis = float(calls)
    floor = census_diff.MIN_COUNT_PER_CALL * basis
    grown = census_diff.type_growth(cs, calls, floor)
    if window.garbage:
        # Counts include garbage waiting for a full collection: its types are not what the process keeps.
        collected = garbage.collected_types(window.data.censuses, window.data.samples)
        grown = tuple(t for t in grown if t.type not in collected)
    return grown, calls, floor


KIND_PREFERENCE = (kind.FILE_DESCRIPTORS, kind.UNCOLLECTABLE, kind.PYTHON_OBJECTS, kind.FRAGMENTATION, kind.NATIVE)


def _with_findings(d: ProcessDiagnosis, window: _Window) -> ProcessDiagnosis:
    leaky = window.leaky
    types, _, _ = _types(window, leaky.task if leaky else None)
    found = findings.findings(Leak(
        leaky=leaky, types=tuple(types), kind=window.kind or kind.NATIVE, pids=(d.pid,), evidence=window.evidence,
        windows=tuple(window.data.windows), holder_groups=(window.holders,), grown=window.containers))
    reported = [t for t in types if any(f.type == t.type for f in found)]
    return replace(d, findings=found, type_series=_type_series(window.data.censuses, reported))


def _pooled_findings(
    leaking: Sequence[tuple[ProcessDiagnosis, _Window]], growth: Sequence[TaskGrowth]
) -> tuple[Finding, ...]:
    if not leaking:
        return ()
    leaky = attribution.lasting_leak([w.tasks for _, w in leaking], growth, garbage=any(w.garbage for _, w in leaking))
    task = leaky.task if leaky else None
    per_process = []
    total_calls = 0
    floor = 0.0
    for _, w in leaking:
        types, calls, process_floor = _types(w, task)
        per_process.append(types)
        total_calls += calls or 0
        floor += process_floor
    types = census_diff.merge(per_process, total_calls or None, floor)
    # The kind most leaking processes agree on; evidence from the first of them.
    names = [w.kind or kind.NATIVE for _, w in leaking]
    # Ties go to the kind with the more direct evidence: native is what is
    # left when nothing else explains the growth.
    leak_kind = max(set(names), key=lambda k: (names.count(k), -KIND_PREFERENCE.index(k)
                                               if k in KIND_PREFERENCE else -len(KIND_PREFERENCE)))
    evidence = next(w.evidence for _, w in leaking if (w.kind or kind.NATIVE) == leak_kind)
    pids = tuple(d.pid for d, _ in leaking)
    return findings.findings(Leak(
        leaky=leaky, types=tuple(types), kind=leak_kind, pids=pids, evidence=evidence,
        windows=tuple(x for _, w in leaking for x in w.data.windows),
        holder_groups=tuple(w.holders for _, w in leaking),
        grown=containers.merged([w.containers for _, w in leaking])))
