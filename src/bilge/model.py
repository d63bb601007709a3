"""bilge's data: what the store holds and what the analysis concludes.

Frozen dataclasses with no behaviour and no imports from the rest of the
package, so every layer can depend on this module and it depends on none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

SCHEMA_VERSION = 1

# The shared vocabulary: verdicts, kinds of leak, allocation tracers and
# the builtin container types. Every layer spells them from here.
LEAK: Final = "leak"
NO_LEAK: Final = "no-leak"
INCONCLUSIVE: Final = "inconclusive"
Verdict = Literal["leak", "no-leak", "inconclusive"]

# What the leaking memory is.
FILE_DESCRIPTORS: Final = "file-descriptors"
PYTHON_OBJECTS: Final = "python-objects"
NATIVE: Final = "native"
FRAGMENTATION: Final = "fragmentation"
UNCOLLECTABLE: Final = "uncollectable"
LeakKind = Literal["file-descriptors", "python-objects", "native", "fragmentation", "uncollectable"]

# Who recorded an allocation window's sites: Python's tracemalloc, or the
# native window's malloc sampling.
TRACEMALLOC: Final = "tracemalloc"
MALLOC: Final = "malloc"
Tracer = Literal["tracemalloc", "malloc"]

# Holder.root_kind of a local variable in another thread's frame: a Python
# container (the frame's locals), bracketed in its path like the registries
# held from C (``<thread worker> frame run() local 'items'``).
THREAD_STACK: Final = "thread-stack"

# Builtin containers: every program has thousands, so when a specific type
# grows as steadily it names a leak better (the containers are usually its
# parts); a leak of plain dicts still shows as dicts.
GENERIC_TYPES: Final = frozenset({"dict", "list", "tuple", "set", "frozenset", "collections.deque",
                                  "collections.OrderedDict", "collections.defaultdict"})


# ------------------------------------------------------------- stored data --
@dataclass(frozen=True)
class RunInfo:
    """One ``bilge run`` invocation."""

    id: int
    started: float
    ended: float | None
    command: str
    exit_code: int | None
    hostname: str | None


@dataclass(frozen=True)
class ProcessInfo:
    """One observed process (pid reuse is told apart by ``id``)."""

    id: int
    pid: int
    ppid: int
    parent_id: int | None
    role: str
    started: float
    ended: float | None
    argv: str
    exit_code: int | None = None
    # worker_max_memory_per_child as the pool child saw it (KiB), if set.
    celery_max_memory_kb: int | None = None
    # The child's slot in its pool (billiard's process index): a recycled
    # child's successor takes the same one.
    pool_index: int | None = None


@dataclass(frozen=True)
class Recycle:
    """A pool child bilge recycled, with the evidence it wrote before leaving."""

    process_id: int
    pid: int
    t: float
    reason: str
    rss: int | None
    tasks_done: int
    status: str
    snapshot: str


@dataclass(frozen=True)
class Sample:
    """A periodic reading of one process."""

    t: float
    rss: int | None
    uss: int | None
    pss: int | None
    heap_blocks: int | None
    gc_collections: int | None
    fds: int | None
    threads: int | None
    tasks_done: int
    malloc_used: int | None = None
    malloc_free: int | None = None
    gc_garbage: int | None = None
    gc_enabled: int | None = None
    gc_frozen: int | None = None
    # Full collections seen by the agent so far, and the Python heap blocks
    # after the latest (what survived it): in a process that runs tasks, read
    # at the end of task number floor_task, the first to end after it; see
    # agent.watch.Watch.floor.
    gc_full: int | None = None
    heap_after_full: int | None = None
    floor_task: int | None = None


@dataclass(frozen=True)
class TaskRecord:
    """One task execution with the process's memory before and after it.

    ``gc_runs`` counts garbage collections during the task (None if unknown):
    a heap-block delta is exact only for calls without one. ``items_*`` are
    the lengths of the module-level containers the agent saw growing, summed,
    when it was counting them (see ``samplers/containers.py``).
    """

    seq: int
    name: str
    started: float
    ended: float
    rss_before: int | None
    rss_after: int | None
    blocks_before: int | None
    blocks_after: int | None
    failed: bool
    gc_runs: int | None = None
    items_before: int | None = None
    items_after: int | None = None


@dataclass(frozen=True)
class Census:
    """Object counts and estimated bytes by qualified type name."""

    t: float
    tasks_done: int
    objects: int
    duration: float
    types: Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class AllocationSite:
    """A line whose allocations survived an allocation window."""

    file: str
    line: int
    size: int
    count: int
    owner: str
    traceback: tuple[str, ...]
    # The task name whose measured calls left the most here beyond what the
    # other names left (sampled allocation windows; None when unknown).
    task: str | None = None
    # Bytes of ``size`` that a C extension allocated itself and registered
    # with tracemalloc under its own domain (numpy's array data): native
    # memory a Python object owns, not Python's allocators.
    native: int = 0


@dataclass(frozen=True)
class TypeSite:
    """Where sampled objects of a growing type that were born in a window were allocated.

    ``count`` of the ``sampled`` objects (those tracemalloc saw being born)
    came from ``file:line``.
    """

    type: str
    file: str
    line: int
    count: int
    sampled: int
    owner: str


@dataclass(frozen=True)
class AllocationWindow:
    """One tracemalloc window the agent opened in a suspect process."""

    started: float
    ended: float
    tasks: int
    status: str
    peak_memory: int
    sites: tuple[AllocationSite, ...]
    type_sites: tuple[TypeSite, ...] = ()
    # "tracemalloc" (Python's allocators) or "malloc" (glibc's in-use bytes
    # per line of user code, see samplers.native_sites).
    tracer: str = "tracemalloc"


@dataclass(frozen=True)
class Holder:
    """Who keeps objects of a growing type alive, found in the live process.

    ``started``/``t`` bracket the search that found it (its own cost is
    taken out of the memory series, see ``analysis.own_activity``).
    """

    t: float
    started: float
    type: str
    path: str
    root_kind: str
    container_type: str | None
    container_len: int | None
    targets: int
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class FdSnapshot:
    """What a process's open descriptors pointed to at one moment (names, never contents)."""

    t: float
    tasks_done: int
    targets: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ContainerScan:
    """The lengths of the module-level containers followed at one moment (names and numbers only).

    A container is followed from the scan after its length first moved
    (static tables never are); a scan that found none moving stores nothing.

    ``lengths`` holds (path, container type, length, newest element's type),
    e.g. ``("myapp.tasks._SEEN", "set", 1200, "str")``.
    """

    t: float
    tasks_done: int
    lengths: tuple[tuple[str, str, int, str], ...]
    duration: float = 0.0  # wall seconds the scan took (it ended at ``t``)


# bilge's own cost. Stages beyond the always-on watch spend from one
# per-process budget (see agent/budget.py); each is accounted by name.
STAGE_WATCH = "watch"  # /proc and gc readings every sample interval
STAGE_TASK_HOOKS = "task-hooks"  # the per-task readings in task_prerun/postrun
STAGE_CENSUS = "census"  # scheduled object counts
STAGE_FLUSH = "flush"  # writing buffered rows to the store
STAGE_RECOUNT = "recount"  # the explain stage's own object counts
STAGE_ALLOCATION_WINDOW = "allocation-window"  # preparing and comparing sampled tasks' snapshots
STAGE_ALLOCATION_EPISODE = "allocation-episode"  # tracemalloc on for a warm-up and a measured task
STAGE_NATIVE_WINDOW = "native-window"  # glibc in-use bytes per user line
STAGE_HOLDER_SEARCH = "holder-search"  # who keeps the growing types alive
STAGE_FD_SCAN = "fd-scan"  # what open descriptors point to
STAGE_SNAPSHOT = "snapshot"  # a census and a holder search a user asked for (`bilge snapshot`)
STAGE_FULL_COLLECTION = "full-collection"  # one gc.collect(): is the heap's growth garbage? (agent.explain)
STAGES = (STAGE_WATCH, STAGE_TASK_HOOKS, STAGE_CENSUS, STAGE_FLUSH, STAGE_RECOUNT, STAGE_ALLOCATION_WINDOW,
          STAGE_ALLOCATION_EPISODE, STAGE_NATIVE_WINDOW, STAGE_HOLDER_SEARCH, STAGE_FD_SCAN, STAGE_SNAPSHOT,
          STAGE_FULL_COLLECTION)
# Stages whose runs leave a step in the process's memory (tracemalloc's
# tables, peaks glibc and pymalloc keep, caches filled while naming sites):
# the analysis drops the tasks that overlapped them and takes the step,
# less the growth the process had been showing anyway, out of every later
# reading (``analysis.own_activity``).
MEMORY_STAGES = (STAGE_ALLOCATION_WINDOW, STAGE_ALLOCATION_EPISODE, STAGE_NATIVE_WINDOW, STAGE_HOLDER_SEARCH,
                 STAGE_SNAPSHOT)


@dataclass(frozen=True)
class StageCost:
    """What one stage of the agent cost one process so far (cumulative).

    ``cpu_seconds`` is CPU time of the agent's own work (in its thread, or in
    the task's thread for per-task hooks and tracing); ``slowed_seconds`` is
    wall time that tasks took beyond their usual duration because of the
    stage (tracing); ``runs`` how often the stage ran.
    """

    stage: str
    cpu_seconds: float
    slowed_seconds: float
    runs: int


@dataclass(frozen=True)
class StageRun:
    """One run of a budgeted stage: when, why, what it cost, how it ended."""

    stage: str
    reason: str
    started: float
    ended: float
    cpu_seconds: float
    slowed_seconds: float
    outcome: str


@dataclass(frozen=True)
class BudgetState:
    """The budget a process had left when it last flushed.

    ``cpu_left`` seconds of CPU (of ``cpu_limit`` per ``cpu_period``) and
    ``slowed_left`` seconds of slowed task time (of ``slowed_limit`` per
    ``slowed_period``), the limits holding over any period of that length.
    """

    t: float
    cpu_left: float
    cpu_limit: float
    cpu_period: float
    slowed_left: float
    slowed_limit: float
    slowed_period: float


@dataclass(frozen=True)
class AgentCost:
    """bilge's own cost in one process: per stage, per budgeted run, budget left."""

    stages: tuple[StageCost, ...] = ()
    runs: tuple[StageRun, ...] = ()
    budget: BudgetState | None = None


@dataclass(frozen=True)
class Snapshot:
    """A census and holder search someone asked a live agent for (``bilge snapshot``).

    ``summary`` is the agent's own answer, as the command printed it: top
    types, their change since the previous snapshot, holder paths (see
    ``agent.snapshot.Snapshots.take``).
    """

    t: float
    tasks_done: int
    seconds: float
    summary: Mapping[str, Any]


@dataclass(frozen=True)
class ProcessData:
    """Everything stored about one process."""

    info: ProcessInfo
    samples: tuple[Sample, ...]
    tasks: tuple[TaskRecord, ...]
    censuses: tuple[Census, ...]
    errors: tuple[str, ...] = ()
    windows: tuple[AllocationWindow, ...] = ()
    holders: tuple[Holder, ...] = ()
    fd_snapshots: tuple[FdSnapshot, ...] = ()
    container_scans: tuple[ContainerScan, ...] = ()
    recycles: tuple[Recycle, ...] = ()
    cost: AgentCost = AgentCost()
    snapshots: tuple[Snapshot, ...] = ()
    # (collections, collected, uncollectable) per gc generation at the last flush.
    gc_generations: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True)
class RunData:
    """A run and all its processes, as read from the store."""

    run: RunInfo
    processes: tuple[ProcessData, ...]
    # Signatures earlier runs in the same data dir recorded, with the start
    # of the first run that had each; None when no earlier run was diagnosed
    # (then nothing can be called new).
    earlier_findings: Mapping[str, float] | None = None


# --------------------------------------------------------------- analysis --
@dataclass(frozen=True)
class Trend:
    """A statistical verdict on one memory series.

    ``slope`` is in bytes per x-unit (per task or per second) over the
    post-warm-up window; ``needed`` says how many more points an
    inconclusive series wants.
    """

    verdict: str
    slope: float
    p_value: float
    confidence: float
    window_start: int
    points: int
    reason: str
    needed: int = 0


@dataclass(frozen=True)
class TaskGrowth:
    """How much memory one task name leaves behind per call.

    ``score`` is the t statistic of the window regression (the causal
    estimate); ``support`` that of the heap blocks each gc-free call leaves
    behind (sharper, but blind to garbage freed by a later collection).
    """

    task: str
    calls: int
    bytes_per_call: float
    blocks_per_call: float
    score: float
    support: float = 0.0
    # Items each call adds to the module-level containers seen growing
    # (exact: a container's length does not wait for a garbage collection),
    # and its t statistic against the other tasks'.
    items_per_call: float = 0.0
    items_score: float = 0.0


@dataclass(frozen=True)
class TypeGrowth:
    """How one object type grew between two censuses."""

    type: str
    count_delta: int
    bytes_delta: int
    count_per_call: float | None
    bytes_per_call: float | None
    steady: bool


@dataclass(frozen=True)
class ContainerGrowth:
    """A module-level container whose length grew steadily through a process's judged window."""

    path: str  # e.g. ``myapp.tasks._SEEN``
    container_type: str
    element_type: str  # the newest element's type ("?" when unknown)
    first: int  # length at the window's first scan
    last: int
    tasks: int  # tasks between those two scans
    scans: int

    @property
    def per_task(self) -> float:
        return (self.last - self.first) / self.tasks if self.tasks else 0.0


@dataclass(frozen=True)
class Finding:
    """One ranked explanation of a leak; unknown fields stay None."""

    task: str | None
    type: str | None
    kind: str | None
    bytes_per_call: float | None
    count_per_call: float | None
    hint: str
    pids: tuple[int, ...]
    evidence: tuple[str, ...] = ()
    holder: str | None = None
    location: str | None = None
    # Renderings of held items, captured only under `bilge run --show-values`
    # and shown only under `bilge report --show-values`.
    values: tuple[str, ...] = ()
    # The leak's stable id (``analysis.signature``), and when an earlier run
    # in the same data dir first found it (None: new, or nothing to compare).
    signature: str | None = None
    seen_since: float | None = None
    new: bool | None = None


@dataclass(frozen=True)
class Series:
    """A named series of (time, value) points, for plots."""

    name: str
    unit: str
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ProcessDiagnosis:
    """The verdict and findings for one process."""

    pid: int
    role: str
    verdict: str
    kind: str | None
    confidence: float
    growth_bytes_per_task: float | None
    growth_bytes_per_hour: float | None
    tasks_observed: int
    confirmed_after_tasks: int | None
    confirmed_after_calls: int | None
    rss_start: int | None
    rss_end: int | None
    reason: str
    findings: tuple[Finding, ...] = ()
    rss_series: tuple[tuple[float, int], ...] = field(default=(), repr=False)
    fds_start: int | None = None
    fds_end: int | None = None
    series: tuple[Series, ...] = field(default=(), repr=False)
    sites: tuple[AllocationSite, ...] = ()
    trend_line: tuple[tuple[float, float], tuple[float, float]] | None = None
    tasks_excluded: int = 0
    type_series: tuple[Series, ...] = field(default=(), repr=False)
    cost: AgentCost = AgentCost()
    snapshots: tuple[Snapshot, ...] = ()


@dataclass(frozen=True)
class RecyclingSummary:
    """Who recycled which pool children, and warnings about Celery's own recycling."""

    by_bilge: tuple[Recycle, ...]
    # pids of children that left with billiard's recycle exit code (155):
    # worker_max_tasks_per_child or worker_max_memory_per_child.
    by_celery: tuple[int, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Diagnosis:
    """The whole answer for a run."""

    run: RunInfo
    verdict: str
    kind: str | None
    confidence: float
    findings: tuple[Finding, ...]
    processes: tuple[ProcessDiagnosis, ...]
    reason: str = ""
    task_growth: tuple[TaskGrowth, ...] = ()
    schema_version: int = SCHEMA_VERSION
    recycling: RecyclingSummary | None = None
