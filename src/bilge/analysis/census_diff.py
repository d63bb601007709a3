"""Which object types grow: census diffs over the post-warm-up window.

A type is reported when its count grows steadily across the censuses of the
window (not just between two of them), ranked by the bytes it added.
Types cut from a census (only the largest few hundred are stored) are filled
with that census's smallest stored count, an upper bound, so a type that
merely crossed the cut does not look like growth.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from bilge.analysis.trend import DEFAULT_POLICY
from bilge.model import GENERIC_TYPES, Census, TypeGrowth

GENERIC = GENERIC_TYPES

# Share of census-to-census steps in which a steady type may not grow.
MAX_DECREASE_SHARE = 0.25
# A type explains a leak only if it grows with it: at least one object per
# this many calls of the leaking task. Slower growth is interpreter or
# library churn (weakrefs, cached statements) that happens to be rising.
MIN_COUNT_PER_CALL = 0.5
# Share of its overall pace a type must keep over the later half of the
# censuses to explain a leak (the trend verdict's ``tail_ratio``: one notion
# of "still growing at the end" for memory and for types).
TAIL_RATIO = DEFAULT_POLICY.tail_ratio
# A later half shorter than this share of the window's progress is no later
# half: two censuses a task apart (the others were taken while bilge's own
# explain stage ran, and left out) say nothing about a type gained once in
# three calls.
MIN_LATE_SHARE = 0.1


def type_growth(censuses: Sequence[Census], calls: int | None, min_count: float = 0.0) -> tuple[TypeGrowth, ...]:
    """Types whose counts grew over ``censuses`` (in time order), ranked by bytes.

    Args:
        censuses: the censuses of the window, at least two.
        calls: calls of the leaking task between the first and last census,
            to express growth per call (None if no task is known).
        min_count: a type that grew by fewer objects is not steady growth
            worth reporting (see MIN_COUNT_PER_CALL).
    """
    if len(censuses) < 2:
        return ()
    names = set().union(*(c.types for c in censuses))
    floors = [min((v[0] for v in c.types.values()), default=0) for c in censuses]
    out = []
    for name in names:
        counts = [c.types[name][0] if name in c.types else floors[i] for i, c in enumerate(censuses)]
        sizes = [c.types[name][1] if name in c.types else 0 for c in censuses]
        count_delta = counts[-1] - counts[0]
        if count_delta <= 0:
            continue
        steps = [b - a for a, b in zip(counts, counts[1:])]
        decreases = sum(1 for s in steps if s < 0)
        steady = decreases <= MAX_DECREASE_SHARE * len(steps) and sum(1 for s in steps if s > 0) >= len(steps) / 2
        if count_delta < min_count or not _still_growing(censuses, counts, min_count):
            steady = False
        bytes_delta = sizes[-1] - sizes[0]
        per_call = calls if calls else None
        out.append(TypeGrowth(
            type=name, count_delta=count_delta, bytes_delta=bytes_delta,
            count_per_call=count_delta / per_call if per_call else None,
            bytes_per_call=bytes_delta / per_call if per_call else None, steady=steady,
        ))
    return tuple(sorted(out, key=_rank))


def _still_growing(censuses: Sequence[Census], counts: Sequence[int], min_count: float) -> bool:
    """Whether a type kept growing over the later half of the censuses: at ``TAIL_RATIO`` of its overall pace,
    and by its share of ``min_count`` (the floor of the whole window, pro rata).

    A cache filling during warm-up grows steadily over the first censuses and
    by a few churned objects after: it explains growth that has stopped, not
    a leak. Progress is counted in tasks done (in census steps when no task
    ran); with fewer than three censuses, or a later half shorter than
    ``MIN_LATE_SHARE`` of the window, there is no later half to judge.
    """
    if len(counts) < 3:
        return True
    middle = len(counts) // 2
    done = [c.tasks_done for c in censuses]
    position = done if done[-1] > done[0] else list(range(len(counts)))
    total, late = position[-1] - position[0], position[-1] - position[middle]
    if total <= 0 or late <= 0:
        return True
    share = late / total
    if share < MIN_LATE_SHARE:
        return True
    return counts[-1] - counts[middle] >= max(TAIL_RATIO * (counts[-1] - counts[0]), min_count) * share


def _rank(g: TypeGrowth) -> tuple[bool, bool, int, int]:
    return (not g.steady, g.type in GENERIC, -g.bytes_delta, -g.count_delta)


def merge(growths: Sequence[Sequence[TypeGrowth]], calls: int | None, min_count: float = 0.0) -> tuple[TypeGrowth, ...]:
    """Pool per-process type growths (summing deltas) into one ranking."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for per_process in growths:
        for g in per_process:
            slot = acc[g.type]
            slot[0] += g.count_delta
            slot[1] += g.bytes_delta
            slot[2] += int(g.steady)
            slot[3] += 1
    out = [
        TypeGrowth(type=name, count_delta=c, bytes_delta=b,
                   count_per_call=c / calls if calls else None, bytes_per_call=b / calls if calls else None,
                   steady=steady * 2 >= seen and c >= min_count)
        for name, (c, b, steady, seen) in acc.items()
    ]
    return tuple(sorted(out, key=_rank))
