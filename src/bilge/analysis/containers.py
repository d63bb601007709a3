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

import math
from collections.abc import Sequence
from functools import reduce

from bilge.analysis.stats import binomial_at_most
from bilge.model import ContainerGrowth, ContainerScan
from bilge.samplers.containers import keeps_pace

MIN_SCANS = 3
MIN_ELEMENTS = 16
# A container fills at a slowing pace when its last third (in tasks) adds
# fewer entries per task than its first third, and a constant rate would
# give so few in the last third with probability under SLOWING_ALPHA: a
# cache whose keys repeat (a coupon collector: each new key turns up ever
# more rarely), which a leak's one-entry-per-call is not. A significance
# test alone, no floor on the slowdown: a leak's entries follow the binomial
# model closely (its containers' dispersion across scans was 1.0-1.6 in the
# zoo's runs, and their p 0.011 at the least), while a skewed key set's cache slows
# gently but surely (tenant_settings: 0.56 of its first rate, p = 3e-9,
# called a leak under the old floor of half the first rate).
SLOWING_ALPHA = 1e-3


def growing(scans: Sequence[ContainerScan], since_tasks: int = 0) -> tuple[ContainerGrowth, ...]:
    """Containers still growing over the scans taken after ``since_tasks`` tasks, fastest first."""
    window = [s for s in scans if s.tasks_done >= since_tasks]
    if len(window) < MIN_SCANS:
        return ()
    series, kinds = _series(window)
    last_scan = window[-1].tasks_done
    out = []
    for path, points in series.items():
        if len(points) < MIN_SCANS or points[-1][0] != last_scan:
            continue  # not read throughout (too short at first, or cut from a scan): no steady series
        part = thirds(points)
        if not keeps_pace(points, min_growth=MIN_ELEMENTS) or part is not None and slowing([part]) is not None:
            continue
        (t0, n0), (t1, n1) = points[0], points[-1]
        container, element = kinds[path]
        out.append(ContainerGrowth(path=path, container_type=container, element_type=element, first=n0, last=n1,
                                   tasks=t1 - t0, scans=len(points)))
    return tuple(sorted(out, key=lambda g: -g.per_task))


def _series(scans: Sequence[ContainerScan]) -> tuple[dict[str, list[tuple[int, int]]], dict[str, tuple[str, str]]]:
    """Per path, its (tasks done, length) readings in order, and its (container type, newest element type)."""
    series: dict[str, list[tuple[int, int]]] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for scan in scans:
        for path, container, length, element in scan.lengths:
            series.setdefault(path, []).append((scan.tasks_done, length))
            if element != "?":
                kinds[path] = (container, element)
            else:
                kinds.setdefault(path, (container, element))
    return series, kinds


def merged(groups: Sequence[Sequence[ContainerGrowth]]) -> tuple[ContainerGrowth, ...]:
    """One entry per path across processes (the one that grew most per task), fastest first."""
    best: dict[str, ContainerGrowth] = {}
    for group in groups:
        for g in group:
            if g.path not in best or g.per_task > best[g.path].per_task:
                best[g.path] = g
    return tuple(sorted(best.values(), key=lambda g: -g.per_task))


def thirds(points: Sequence[tuple[int, int]]) -> tuple[int, int, int, int] | None:
    """(events, tasks) in the first third and in the last third (in tasks) of a container's lengths, as (tasks
    done, length) readings in order; None when they do not grow enough to tell.

    Items are counted in units of the steps' greatest common divisor (a list
    extended by 50 at a time counts 50 items as one event).
    """
    if len(points) < 4:
        return None
    (t0, n0), (t1, n1) = points[0], points[-1]
    if t1 <= t0 or n1 - n0 < MIN_ELEMENTS:
        return None
    first_end = [p for p in points if p[0] <= t0 + (t1 - t0) / 3][-1]
    last_start = [p for p in points if p[0] >= t1 - (t1 - t0) / 3][0]
    early_tasks, late_tasks = first_end[0] - t0, t1 - last_start[0]
    early, late = first_end[1] - n0, n1 - last_start[1]
    if early_tasks <= 0 or late_tasks <= 0 or early <= 0 or late < 0:
        return None
    unit = reduce(math.gcd, [abs(b[1] - a[1]) for a, b in zip(points, points[1:])]) or 1
    return early // unit, early_tasks, late // unit, late_tasks


def slowing(parts: Sequence[tuple[int, int, int, int]]) -> tuple[float, float] | None:
    """(first third's, last third's) events per task, pooled over ``thirds`` of one container in one or more
    processes, when they slow significantly (see SLOWING_ALPHA); None when they do not.

    The test is conditional on the two thirds' total: under a constant rate
    per task the last third's share of it follows its share of the tasks.
    """
    early, early_tasks, late, late_tasks = (sum(part[i] for part in parts) for i in range(4))
    if not early or not early_tasks or not late_tasks:
        return None
    early_rate, late_rate = early / early_tasks, late / late_tasks
    if late_rate >= early_rate \
            or binomial_at_most(late, early + late, late_tasks / (early_tasks + late_tasks)) >= SLOWING_ALPHA:
        return None
    return early_rate, late_rate


def filling(groups: Sequence[Sequence[ContainerScan]]) -> tuple[tuple[str, float, float], ...]:
    """(path, first third's, last third's events per task) of the containers filling at a slowing pace, pooled
    over processes (one group of scans each), most events first.

    Pooled: sibling processes of one worker run the same code, and one
    child's readings may be too few to tell alone.
    """
    parts: dict[str, list[tuple[int, int, int, int]]] = {}
    for scans in groups:
        series, _ = _series(scans)
        for path, points in series.items():
            part = thirds(points) if points[-1][0] == scans[-1].tasks_done else None
            if part is not None:
                parts.setdefault(path, []).append(part)
    out = []
    for path, found in parts.items():
        rates = slowing(found)
        if rates is not None:
            out.append((sum(p[0] + p[2] for p in found), path, rates))
    return tuple((path, early, late) for _, path, (early, late) in sorted(out, reverse=True))
