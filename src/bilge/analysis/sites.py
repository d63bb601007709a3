"""Allocation sites of the memory that stays, from the agent's windows.

Two tracers make sites: tracemalloc windows (Python's allocators) and, for
leaks outside Python's heap, native windows (glibc's in-use bytes per line
of user code, ``samplers.native_sites``). Each analysis uses one: sites of
every completed window of that tracer are merged by (file, line) and ranked
with the user's own code first (a leak is fixed where the user's code
allocates or keeps, even when a library did the allocating), then by bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bilge.model import MALLOC, TRACEMALLOC, AllocationSite, AllocationWindow, TypeSite
from bilge.samplers.allocations import merge_sites

DONE = "done"
# A type's birthplace is named only when it made this share of its sampled
# objects (several lines making one type leave the location to the bytes).
MIN_TYPE_SHARE = 0.3


# A leak repeats: a line that kept fewer blocks than this over all windows
# made something once (a container's array resized as it grew, a buffer).
# Native sites below it are dropped; Python ones rank after the lines that
# kept blocks again and again (the leaked objects themselves).
MIN_NATIVE_RISES = MIN_REPEATS = 3


def done(windows: Sequence[AllocationWindow], tracer: str = TRACEMALLOC) -> list[AllocationWindow]:
    """The completed windows of one tracer."""
    return [w for w in windows if w.status == DONE and w.tracer == tracer]


def leak_sites(windows: Sequence[AllocationWindow], tracer: str = TRACEMALLOC) -> tuple[AllocationSite, ...]:
    """Merged, ranked sites of the completed windows of ``tracer``: the user's code first, then the lines that
    kept blocks repeatedly, then by bytes."""
    merged = merge_sites(s for window in done(windows, tracer) for s in window.sites)
    if tracer == MALLOC:
        # One rise never freed is a buffer made once; a leak repeats.
        merged = [s for s in merged if s.count >= MIN_NATIVE_RISES]
    return tuple(sorted(merged, key=lambda s: (s.owner != "user", s.count < MIN_REPEATS, -s.size)))


def native_traced(windows: Sequence[AllocationWindow]) -> tuple[AllocationSite, ...]:
    """Merged tracemalloc sites that kept native bytes a C extension registered (numpy's array data), most
    native bytes first: a native leak's lines when no native window ran."""
    merged = merge_sites(s for window in done(windows) for s in window.sites if s.native > 0)
    return tuple(sorted(merged, key=lambda s: (s.owner != "user", s.count < MIN_REPEATS, -s.native)))


def type_site(type_name: str, windows: Sequence[AllocationWindow]) -> TypeSite | None:
    """Where most sampled window-born objects of ``type_name`` were allocated, over all windows."""
    counts: Counter[tuple[str, int, str]] = Counter()
    sampled = 0
    for window in done(windows):
        seen = [t for t in window.type_sites if t.type == type_name]
        sampled += max((t.sampled for t in seen), default=0)
        for t in seen:
            counts[(t.file, t.line, t.owner)] += t.count
    if not counts:
        return None
    (file, line, owner), count = counts.most_common(1)[0]
    if count < MIN_TYPE_SHARE * sampled:
        return None
    return TypeSite(type=type_name, file=file, line=line, count=count, sampled=sampled, owner=owner)


def describe_type_site(site: TypeSite) -> str:
    """One evidence line for a finding's type-to-site join."""
    return "%d of %d sampled %s objects born in the allocation window were allocated at %s:%d (%s)" % (
        site.count, site.sampled, site.type, site.file, site.line, site.owner)


def location(site: AllocationSite | TypeSite) -> str:
    """``path/to/file.py:LINE``, the contract's form."""
    return "%s:%d" % (site.file, site.line)


def describe(site: AllocationSite, windows: Sequence[AllocationWindow], tracer: str = TRACEMALLOC) -> str:
    """One evidence line for a finding."""
    tasks = sum(w.tasks for w in done(windows, tracer))
    if tracer == MALLOC:
        return ("native window over %d tasks: glibc in-use bytes rose by %+d in %d allocations never freed at "
                "%s:%d (%s), counting what the libraries it calls allocated" % (
                    tasks, site.size, site.count, site.file, site.line, site.owner))
    return "allocation window over %d tasks: %s:%d kept %+d bytes in %d blocks (%s)%s" % (
        tasks, site.file, site.line, site.size, site.count, site.owner,
        ", %d of them native memory a C extension allocated itself" % site.native if site.native else "")
