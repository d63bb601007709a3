"""Which module-level containers keep growing: the evidence for leaks a census cannot count.

A set of short keys or a dict of timestamps adds no gc-tracked object per
call, so no type grows in a census; its container's length does. A
container counts as growing when it was read in at least ``MIN_SCANS``
scans of the window, never shrank, grew by ``MIN_ELEMENTS`` or more, and
still grew in the window's second half at a quarter of its first half's
rate or more (a cache filling in warm-up, a deque at its ``maxlen``, an
evicting cache all stop or shrink).
"""

from __future__ import annotations

from collections.abc import Sequence

from bilge.model import ContainerGrowth, ContainerScan
from bilge.samplers.containers import keeps_pace

MIN_SCANS = 3
MIN_ELEMENTS = 16


def growing(scans: Sequence[ContainerScan], since_tasks: int = 0) -> tuple[ContainerGrowth, ...]:
    """Containers still growing over the scans taken after ``since_tasks`` tasks, fastest first."""
    window = [s for s in scans if s.tasks_done >= since_tasks]
    if len(window) < MIN_SCANS:
        return ()
    series: dict[str, list[tuple[int, int]]] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for scan in window:
        for path, container, length, element in scan.lengths:
            series.setdefault(path, []).append((scan.tasks_done, length))
            if element != "?":
                kinds[path] = (container, element)
            else:
                kinds.setdefault(path, (container, element))
    last_scan = window[-1].tasks_done
    out = []
    for path, points in series.items():
        if len(points) < MIN_SCANS or points[-1][0] != last_scan:
            continue  # not read throughout (too short at first, or cut from a scan): no steady series
        if not keeps_pace(points, min_growth=MIN_ELEMENTS):
            continue
        (t0, n0), (t1, n1) = points[0], points[-1]
        container, element = kinds[path]
        out.append(ContainerGrowth(path=path, container_type=container, element_type=element, first=n0, last=n1,
                                   tasks=t1 - t0, scans=len(points)))
    return tuple(sorted(out, key=lambda g: -g.per_task))


def merged(groups: Sequence[Sequence[ContainerGrowth]]) -> tuple[ContainerGrowth, ...]:
    """One entry per path across processes (the one that grew most per task), fastest first."""
    best: dict[str, ContainerGrowth] = {}
    for group in groups:
        for g in group:
            if g.path not in best or g.per_task > best[g.path].per_task:
                best[g.path] = g
    return tuple(sorted(best.values(), key=lambda g: -g.per_task))
