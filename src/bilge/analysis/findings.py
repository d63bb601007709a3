"""Findings from a leak's evidence: a pipeline of small steps over one frozen draft.

``diagnose`` decides *whether* memory leaks (per process) and pools the
evidence of the processes that leak into one ``Leak``: the leaking task, the
types that grew, the kind, the allocation windows, the holder searches, the
containers that kept growing. This module decides *what to say*: which types
lead, what holds each, which line allocated it. Each rule is one step, a
function from a ``Draft`` to a ``Draft`` (like structlog's processors), run
in order by ``FindingsPipeline``; the last one writes the findings. A new rule
is a new step with its own test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from bilge.analysis import attribution, hints, holders, kind, sites
from bilge.model import (
    GENERIC_TYPES,
    MALLOC,
    TRACEMALLOC,
    AllocationSite,
    AllocationWindow,
    ContainerGrowth,
    Finding,
    Holder,
    TaskGrowth,
    TypeGrowth,
)

MAX_FINDINGS = 5
# Element types that own no native memory: never named as a native leak's owner.
SCALARS = frozenset({"str", "bytes", "int", "float", "bool", "NoneType", "?"})


@dataclass(frozen=True)
class Leak:
    """The pooled evidence of one leak (one process's, or the leaking processes' together)."""

    leaky: TaskGrowth | None  # the task whose calls grow memory, if one does
    types: tuple[TypeGrowth, ...]  # census growth over the window, ranked by the census
    kind: str
    pids: tuple[int, ...]
    evidence: tuple[str, ...]
    windows: tuple[AllocationWindow, ...] = ()
    holder_groups: tuple[tuple[Holder, ...], ...] = ()  # one group per process
    grown: tuple[ContainerGrowth, ...] = ()  # containers growing at every scan of the window

    @property
    def task(self) -> str | None:
        return self.leaky.task if self.leaky else None


@dataclass(frozen=True)
class Draft:
    """What the steps have decided so far about one leak."""

    leak: Leak
    evidence: tuple[str, ...]  # the leak's, plus what the steps add
    where: str | None = None  # the top allocation site (file:line)
    # A native leak with no native line: where the leaking task's surviving
    # Python allocations were made in the user's code (its Python owners'
    # birthplace), for a finding that names such an owner.
    owner_where: str | None = None
    owner_evidence: tuple[str, ...] = ()
    # Types held by a path seen growing (between searches, or a container
    # growing at every scan): the ones keeping the growth alive.
    held_growing: frozenset[str] = frozenset()
    holder_of: Mapping[str, Holder | None] = field(default_factory=dict)  # per steady type
    inner: frozenset[str] = frozenset()  # types held through another type's holder path
    reach: Mapping[str, int] = field(default_factory=dict)  # most targets a holder of the type reached
    ranked: tuple[TypeGrowth, ...] = ()  # the types to report, first first
    # A container that names the leak instead of a counted type.
    owner: ContainerGrowth | None = None
    findings: tuple[Finding, ...] = ()


Step = Callable[[Draft], Draft]


def locate(d: Draft) -> Draft:
    """The top surviving allocation site, of those the leaking task left when it is named and left any (another
    task's can be its garbage: a retried task's tracebacks survive a measured call until a full collection).
    tracemalloc sees Python's allocators and what C extensions register with it: a native leak is located by the
    native window, else by the native bytes tracemalloc saw (numpy's array data), or not at all, rather than
    invented."""
    tracer = MALLOC if d.leak.kind == kind.NATIVE else TRACEMALLOC
    found = sites.leak_sites(d.leak.windows, tracer)
    if not found and tracer == MALLOC:
        # Native bytes tracemalloc saw after all: a C extension registered them (numpy's array data).
        found = sites.native_traced(d.leak.windows)
        tracer = TRACEMALLOC
    if not found:
        return _owner_site(d) if d.leak.kind == kind.NATIVE else d
    found = _tasks_own(found, d.leak.task)
    return replace(d, where=sites.location(found[0]),
                   evidence=d.evidence + (sites.describe(found[0], d.leak.windows, tracer),))


def _tasks_own(found: tuple[AllocationSite, ...], task: str | None) -> tuple[AllocationSite, ...]:
    """The sites the leaking task left, when it is named and left any."""
    return tuple(s for s in found if s.task == task) or found if task else found


def _owner_site(d: Draft) -> Draft:
    """A native leak no native window measured: the user's line whose Python allocations the leaking task kept.
    When the finding names the Python type owning the native memory (a connection kept in a dict), that line is
    where the owners are made (``sqlite3.connect``); a finding with no owner type gets no line from it."""
    found = tuple(s for s in _tasks_own(sites.leak_sites(d.leak.windows, TRACEMALLOC), d.leak.task)
                  if s.owner == "user")
    if not found:
        return d
    return replace(d, owner_where=sites.location(found[0]),
                   owner_evidence=(sites.describe(found[0], d.leak.windows, TRACEMALLOC)
                                   + ": where the Python objects owning the native memory are made",))


def _owner_line(d: Draft) -> tuple[str | None, tuple[str, ...]]:
    """A finding's line and its evidence: the native (or traced) line, else its owners' birthplace."""
    return (d.where, ()) if d.where or d.owner_where is None else (d.owner_where, d.owner_evidence)


def growing_holders(d: Draft) -> Draft:
    """Types whose holder was seen growing: between searches; inside a container growing at every scan (one
    search saw it once); or the type such a container gains (its newest element's)."""
    groups, grown = d.leak.holder_groups, d.leak.grown
    held = {h.type for h in holders.growing(groups)}
    held |= {h.type for group in groups for h in group
             if holders.within(h.path, (g.path for g in grown))}
    held |= {g.element_type for g in grown}
    return replace(d, held_growing=frozenset(held))


def name_holders(d: Draft) -> Draft:
    """Each steady type's holder, how many objects the holders reached, and which types are held inside another
    type's holder path (a traceback below the exception a list keeps, a closure's cell below the callback): the
    inside of that leak."""
    reach: dict[str, int] = {}
    for group in d.leak.holder_groups:
        for h in group:
            reach[h.type] = max(reach.get(h.type, 0), h.targets)
    grown = [g.path for g in d.leak.grown]
    holder_of = {t.type: holders.holder_for(t.type, d.leak.holder_groups, grown) for t in d.leak.types if t.steady}
    paths = {name: h.path for name, h in holder_of.items() if h}
    inner = {name for name, path in paths.items()
             if any(holders.runs_through(path, other) for other in paths.values())}
    return replace(d, holder_of=MappingProxyType(holder_of), inner=frozenset(inner),
                   reach=MappingProxyType(reach))


def rank(d: Draft) -> Draft:
    """Steady types, those held by a growing path first, specific ones (a class) before builtin containers, the
    one whose holder reaches the most objects first.

    Cycles nothing refers to (uncollectable) have no holder: the census
    ranking (specific types first) stands. A weak reference keeps nothing
    alive: weakrefs that grow are the bookkeeping of what leaks (logging's
    list of every handler), never ahead of a type that is held.
    """
    steady = [t for t in d.leak.types if t.steady]
    if d.leak.kind != kind.UNCOLLECTABLE:
        held = {name for name, h in d.holder_of.items() if h}
        steady.sort(key=lambda t: (
            t.type in d.inner, holders.is_weak(t.type) and t.type in d.held_growing, t.type not in d.held_growing,
            t.type not in held, t.type in GENERIC_TYPES, -d.reach.get(t.type, 0)))
    return replace(d, ranked=tuple(steady))


def native_owner(d: Draft) -> Draft:
    """Native bytes often have a Python owner (a connection, an image, an array, a parsed document): a specific
    type that grows with the calls in a holder seen growing is named as the owner; else the objects of one
    type a container gains at every scan (the census may not count it: a C type without gc support); else no
    type is (the census counts Python objects, not native bytes)."""
    if d.leak.kind != kind.NATIVE:
        return d
    owned = tuple(t for t in d.ranked if t.type in d.held_growing and t.type not in GENERIC_TYPES
                  and t.type not in d.inner and not holders.is_weak(t.type))[:1]
    owner = None if owned else next(
        (g for g in d.leak.grown if g.element_type not in GENERIC_TYPES | SCALARS), None)
    return replace(d, ranked=owned, owner=owner)


def same_bar(d: Draft) -> Draft:
    """Findings after the first clear the same bar: their holder was seen growing too (a static table of a type
    that happens to grow, say pygments' style lists, is not a second leak)."""
    if d.leak.kind == kind.NATIVE:
        return d
    if d.held_growing:
        ranked = d.ranked[:1] + tuple(t for t in d.ranked[1:MAX_FINDINGS] if t.type in d.held_growing)
    else:
        ranked = d.ranked[:MAX_FINDINGS]
    return replace(d, ranked=ranked)


# Objects user code never makes itself, kept only as parts of what it keeps: containers, and the frames,
# tracebacks and cells of exceptions and closures.
_PARTS = GENERIC_TYPES | {"frame", "traceback", "cell"}


def growing_container(d: Draft) -> Draft:
    """No counted type, or only a builtin one nothing was seen holding as it grew (a tuple count bilge's own
    window moved, "held" by a constant table such as ssl's error codes), or one whose holder search reached no
    root at all: the container that grows through the window names the leak better. The interpreter's own
    parts count as builtins here: exceptions kept in a list lead with their tracebacks' frames, which a search
    that ran early may not reach. A path from no root is what garbage waiting for a collection gives too (a
    retried task's tracebacks, which keep coming and so "grow" between searches), and a module-level container
    growing at every scan is held for certain. A container of weak references is bookkeeping of what leaks
    (logging's list of every handler), never what keeps it alive."""
    if d.owner is not None or d.leak.kind != kind.PYTHON_OBJECTS:
        return d
    strong = [g for g in d.leak.grown if not holders.is_weak(g.element_type)]
    first = d.ranked[0] if d.ranked else None
    holder = d.holder_of.get(first.type) if first else None
    if strong and (first is None or (first.type in _PARTS and first.type not in d.held_growing)
                   or holder is not None and holders.unrooted(holder)):
        return replace(d, owner=strong[0])
    return d


def container_holders(d: Draft) -> Draft:
    """A type the holder search missed (it ran late, sampled, or ran out of time before reaching the
    application's modules), or found only on a path never seen growing (one search, a constant table of that
    type): a container of that type growing at every scan holds it."""
    holder_of = dict(d.holder_of)
    grown = d.leak.grown
    seen_growing = {id(h) for h in holders.growing(d.leak.holder_groups)}
    for t in d.ranked:
        h = holder_of.get(t.type)
        if h is not None and (id(h) in seen_growing or holders.within(h.path, (g.path for g in grown))):
            continue
        g = next((g for g in grown if g.element_type == t.type), None)
        if g is not None:
            holder_of[t.type] = holders.from_container(g, t.type)
    return replace(d, holder_of=MappingProxyType(holder_of))


def emit(d: Draft) -> Draft:
    """The findings: the container that names the leak, or one per ranked type, or a bare one (task and kind)."""
    leak = d.leak
    bytes_per_call = round(attribution.kept_per_call(leak.leaky), 1) if leak.leaky else None
    if d.owner is not None:
        return replace(d, findings=(_container_finding(d, d.owner, bytes_per_call),))
    if not d.ranked:
        return replace(d, findings=(Finding(
            task=leak.task, type=None, kind=leak.kind, bytes_per_call=bytes_per_call, count_per_call=None,
            hint=hints.hint(leak.kind, leak.task, None, None), pids=leak.pids, evidence=d.evidence,
            location=d.where),))
    line, line_evidence = _owner_line(d)
    out = []
    for i, t in enumerate(d.ranked):
        holder = d.holder_of.get(t.type)
        born = sites.type_site(t.type, leak.windows)
        out.append(Finding(
            task=leak.task, type=t.type, kind=leak.kind,
            bytes_per_call=bytes_per_call if i == 0 else (
                round(t.bytes_per_call, 1) if t.bytes_per_call is not None else None),
            count_per_call=round(t.count_per_call, 3) if t.count_per_call is not None else None,
            hint=hints.hint(leak.kind, leak.task, t.type, t.count_per_call, holder), pids=leak.pids,
            evidence=d.evidence + ("%s: +%d objects, +%d bytes over the window" % (t.type, t.count_delta,
                                                                                 t.bytes_delta),)
            + (("held by %s (%s, %s of %s)" % (holder.path, holder.root_kind, holder.container_len,
                                                 holder.container_type),) if holder else ())
            + ((sites.describe_type_site(born),) if born else ())
            + (line_evidence if i == 0 and not (born and born.owner == "user") else ()),
            # A native leak's line is where the native bytes were allocated;
            # else the user's line that made this type's window-born objects
            # is the most specific answer; else the top surviving bytes (user
            # code first), for the first finding.
            location=d.where if leak.kind == kind.NATIVE and d.where
            else sites.location(born) if born and (born.owner == "user" or d.where is None)
            else (line if i == 0 else None),
            holder=holder.path if holder else None, values=holder.values if holder else ()))
    return replace(d, findings=tuple(out))


def _container_finding(d: Draft, g: ContainerGrowth, bytes_per_call: float | None) -> Finding:
    """A leak no counted type explains, named by the container that keeps growing.

    Its elements are untracked objects (strings, numbers, bytes) or a type
    the census cut: the newest element's type names them, the container's
    path holds them.
    """
    leak, leaky = d.leak, d.leak.leaky
    type_name = g.element_type if g.element_type != "?" else g.container_type
    # Items per call as the task hooks counted them (exact), else the
    # container's growth over the leaking task's calls.
    per_call = (leaky.items_per_call if leaky.items_per_call > 0 else g.per_task * g.tasks / leaky.calls) \
        if leaky and leaky.calls else None
    holder = holders.from_container(g, type_name)
    line, line_evidence = _owner_line(d)
    return Finding(
        task=leak.task, type=type_name, kind=leak.kind, bytes_per_call=bytes_per_call,
        count_per_call=round(per_call, 3) if per_call is not None else None,
        hint=hints.hint(leak.kind, leak.task, type_name, per_call, holder),
        pids=leak.pids, location=line, holder=g.path,
        evidence=d.evidence + line_evidence + ("%s (a %s of %s) grew from %d to %d entries over %d tasks, never "
                                               "shrinking" % (g.path, g.container_type, g.element_type, g.first,
                                                              g.last, g.tasks),))


STEPS: tuple[Step, ...] = (locate, growing_holders, name_holders, rank, native_owner, same_bar, growing_container,
                           container_holders, emit)


class FindingsPipeline:
    """Runs the steps in order over one leak's draft; the last step's findings are the answer."""

    def __init__(self, steps: Sequence[Step] = STEPS) -> None:
        self.steps = tuple(steps)

    def __call__(self, leak: Leak) -> tuple[Finding, ...]:
        draft = Draft(leak=leak, evidence=leak.evidence)
        for step in self.steps:
            draft = step(draft)
        return draft.findings


findings = FindingsPipeline()
