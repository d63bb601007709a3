"""Growth that full garbage collections take back: cyclic garbage, not a leak.

A task that raises leaves its exception, traceback and frames in reference
cycles; Celery's retries raise on every retried try. Objects that live
through a young collection while the task runs are promoted, and once they
are garbage only a full collection frees them, which CPython runs rarely
(when a quarter more objects wait than the heap holds). Between full
collections the Python heap, and RSS with it, climbs like a leak; at each it
falls back. Users file it as a leak (celery/celery#6058, #4371) and a trend
test on RSS or heap blocks agrees with them.

What survives a full collection is what the process keeps: the agent reads
the heap's blocks at the first task end after each one (``Watch.floor``),
and the floor of a task the agent's own work overlapped is left out (its
temporaries, a tracemalloc snapshot say, count there). When
collections take back growth of the size the verdict saw, the verdict is
judged again on those floors alone: a leak raises them, garbage does not.
It is judged again only when nothing is seen holding the growth (no
module-level container growing, no holder path seen holding more at a later
search): a container that grows is a leak whatever the collector frees
beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from bilge.analysis import trend
from bilge.analysis.kind import BLOCK_BYTES
from bilge.analysis.trend import TrendPolicy
from bilge.model import INCONCLUSIVE, LEAK, NO_LEAK, Census, Sample, TaskRecord, Trend

# Collections must have taken back, at once, at least this share of the heap's
# growth over the judged window for that growth to be judged as garbage.
MIN_TAKEN_SHARE = 0.5
# A full collection also empties the interpreter's free lists: blocks taken
# back from no garbage at all (~3,600 in a zoo worker).
FREE_LIST_BLOCKS = 4096
# Floors the verdict needs: two give a first comparison (inconclusive at
# best: one difference, which garbage one collection missed and the next
# takes moves as much as a leak), three a trend (a leak or a no-leak).
MIN_FLOORS = 2
TREND_FLOORS = 3
# Floors rising at under this share of the heap's growth the verdict saw
# leave it undecided: mostly garbage, perhaps something kept besides.
KEPT_SHARE = 0.5
# A type a full collection took back: it had gained at least this many
# objects since the first count, and the collection left under half of them.
MIN_COLLECTED = 20


@dataclass(frozen=True)
class Collections:
    """The full collections of one process from the judged window on, the last one before it first.

    ``taken`` are the blocks each took back (the heap's reading before it
    less its floor); ``floors`` (tasks done, heap blocks after it) those
    that can be compared: read apart from the agent's own work.
    """

    floors: tuple[tuple[int, int], ...]
    taken: tuple[int, ...]
    net: int  # heap blocks over the judged window, last reading less first
    rss_between: int | None  # RSS at the last floor less RSS at the first

    collected_at: tuple[int, ...]  # tasks done at each

    @property
    def tasks_between(self) -> float:
        """Tasks from one full collection to the next, on average (0: one seen)."""
        return (self.collected_at[-1] - self.collected_at[0]) / max(1, len(self.collected_at) - 1)


def collections(samples: Sequence[Sample], start: int, tasks: Sequence[TaskRecord] = (),
                stored: Sequence[TaskRecord] = ()) -> Collections | None:
    """The full collections seen in samples whose ``tasks_done`` ≥ ``start`` (None when the agent did not read
    them).

    Args:
        samples: the process's samples.
        start: the first task of the judged window.
        tasks: the process's tasks with the agent's own activity taken out
            (``own_activity.without_activity``), and ``stored``, the tasks as
            stored: a floor read at the end of one stored but taken out is
            left out (the agent's temporaries count there).
    """
    left_out = {t.seq for t in stored} - {t.seq for t in tasks}
    floors: list[tuple[int, int]] = []  # (task, heap blocks)
    taken: list[int] = []
    collected_at: list[int] = []
    rss_at: list[int | None] = []
    window: list[int] = []
    prev: Sample | None = None
    # The heap's highest reading since the previous floor: a sample can fall
    # between a collection and the task end that reads its floor, already low.
    peak = 0
    for s in samples:
        if s.heap_blocks is not None and s.tasks_done >= start:
            window.append(s.heap_blocks)
        if (prev is not None and s.gc_full is not None and prev.gc_full is not None and s.gc_full > prev.gc_full
                and s.heap_after_full is not None):
            at = s.floor_task if s.floor_task is not None else s.tasks_done
            if s.tasks_done < start:
                # Only the latest collection before the window is kept: the window's reference.
                floors, taken, collected_at, rss_at = [], [], [], []
            taken.append(max(0, peak - s.heap_after_full))
            collected_at.append(at)
            if at not in left_out:
                floors.append((at, s.heap_after_full))
                rss_at.append(s.rss)
            peak = 0
        elif (prev is not None and s.gc_full is not None and s.gc_full == prev.gc_full and collected_at
              and s.floor_task is not None and s.floor_task != prev.floor_task and s.heap_after_full is not None):
            # The same collection's floor read again at a task end (the
            # first was read between tasks, with a task's temporaries).
            at = s.floor_task
            collected_at[-1] = at
            if floors and floors[-1][0] == prev.floor_task:
                floors.pop()
                rss_at.pop()
            if at not in left_out:
                floors.append((at, s.heap_after_full))
                rss_at.append(s.rss)
        peak = max(peak, s.heap_blocks or 0)
        prev = s
    if not taken or len(window) < 2:
        return None
    first_rss, last_rss = (rss_at[0], rss_at[-1]) if rss_at else (None, None)
    # As read, not re-based: re-basing takes out the step across bilge's own
    # work, and a collection that falls there (the explain stage's own among
    # them) would be taken out with it.
    return Collections(floors=tuple(floors),
                       taken=tuple(taken), net=window[-1] - window[0], collected_at=tuple(collected_at),
                       rss_between=last_rss - first_rss if first_rss is not None and last_rss is not None else None)


def dominated(seen: Collections | None, min_blocks: float = 1) -> bool:
    """Whether full collections took back, at once, at least half of what the heap grew over the window (and at
    least ``min_blocks``), beyond what emptying the free lists gives back: then the heap's and RSS's growth are
    mostly garbage's, per call as well as in all."""
    return seen is not None and max(seen.taken) >= MIN_TAKEN_SHARE * max(seen.net, min_blocks) + FREE_LIST_BLOCKS


def judged(verdict: Trend, samples: Sequence[Sample], start: int, policy: TrendPolicy,
           rate: float | None, tasks: Sequence[TaskRecord] = (), stored: Sequence[TaskRecord] = (),
           claimed: float | None = None) -> Trend:
    """A leak verdict judged again when full collections take back growth of its size.

    Args:
        verdict: the verdict on RSS or heap blocks after each task.
        samples: the process's samples.
        start: the task the verdict's window starts at.
        policy: the heap-block thresholds (``diagnose.HEAP_POLICY``), applied to the floors.
        rate: tasks per second, for the policy's bytes-a-day test.
        tasks, stored: the process's tasks re-based and as stored (see ``collections``).
        claimed: the heap blocks per task the verdict saw, when it rests on the heap: floors that rise
            far slower than that say part of the growth is garbage.

    Returns:
        ``verdict`` itself unless the growth is garbage's size; then a leak when
        the floors rise materially, else inconclusive (too few floors, or RSS
        rose more than garbage accounts for) or no-leak.
    """
    if verdict.verdict != LEAK:
        return verdict
    seen = collections(samples, start, tasks, stored)
    if seen is None or not dominated(seen, policy.min_growth):
        return verdict
    if claimed is None and samples and max(seen.taken) * BLOCK_BYTES < MIN_TAKEN_SHARE * verdict.slope * max(
            0, samples[-1].tasks_done - start):
        # A verdict on RSS that grew far more than any collection took back
        # (a native leak; a collection also empties free lists).
        return verdict
    garbage = ("the growth looks like cyclic garbage: the heap grew by %+d blocks over the window and full "
               "collections took back up to %d (~%s) at a time; nothing is seen holding it" % (
                   seen.net, max(seen.taken), trend.size_text(max(seen.taken) * BLOCK_BYTES)))
    if len(seen.floors) < MIN_FLOORS:
        needed = max(int(seen.tasks_between) or verdict.points // 2, 1)
        read = "was read once, at task %d" % seen.floors[0][0] if seen.floors else \
            "could not be read apart from bilge's own work"
        return replace(verdict, verdict=INCONCLUSIVE, needed=needed, reason=(
            "%s; what survives a full collection %s: about %d more tasks are needed to see more full collections "
            "and tell a leak from garbage" % (garbage, read, needed)))
    (t0, f0), (t1, f1) = seen.floors[0], seen.floors[-1]
    slope = (f1 - f0) / max(1, t1 - t0)
    per_day = slope * rate * trend.DAY if rate else None
    material = slope >= policy.min_slope and f1 - f0 >= policy.min_growth and (
        policy.min_per_day is None or per_day is None or per_day >= policy.min_per_day)
    floors = "the heap after each full collection (what survives) went %d → %d over tasks %d-%d (%+.2f blocks a " \
             "task, %d collections)" % (f0, f1, t0, t1, slope, len(seen.floors))
    if material and (claimed is None or slope >= KEPT_SHARE * claimed):
        if len(seen.floors) >= TREND_FLOORS:
            return replace(verdict, reason="%s; %s: it keeps growing" % (verdict.reason, floors))
        needed = max(int(seen.tasks_between), 1)
        return replace(verdict, verdict=INCONCLUSIVE, needed=needed, reason=(
            "%s; %s: one rise between two collections, which garbage the first missed moves as much as a leak; "
            "about %d more tasks (1 more full collection) are needed to tell" % (garbage, floors, needed)))
    if material and claimed is not None:
        # What survives grows, far slower than the heap the verdict saw:
        # part of it garbage, part perhaps kept.
        more = max(1, TREND_FLOORS + 1 - len(seen.floors))
        needed = max(int(seen.tasks_between * more), 1)
        return replace(verdict, verdict=INCONCLUSIVE, needed=needed, reason=(
            "%s; %s, under %.0f%% of the %+.2f blocks a task the heap grew: part of the growth is garbage; about "
            "%d more tasks (%d more full collections) are needed to tell whether the rest is kept" % (
                garbage, floors, 100 * KEPT_SHARE, claimed, needed, more)))
    tooth = max(seen.taken) * BLOCK_BYTES
    if len(seen.floors) >= TREND_FLOORS and seen.rss_between is not None and seen.rss_between <= tooth:
        return replace(verdict, verdict=NO_LEAK, needed=0, reason=(
            "no leak: %s; %s, and RSS between them rose %s, within what the garbage occupies between "
            "collections: a high-water mark. Break the cycles (clear exc.__traceback__, del the exception "
            "in except blocks) to lower it" % (garbage, floors, trend.size_text(seen.rss_between))))
    more = max(1, TREND_FLOORS - len(seen.floors))
    needed = max(int(seen.tasks_between * more), 1)
    rss = "" if seen.rss_between is None or seen.rss_between <= tooth else (
        ", though RSS rose %s between them, more than the garbage occupies" % trend.size_text(seen.rss_between))
    return replace(verdict, verdict=INCONCLUSIVE, needed=needed, reason=(
        "%s; %s, not enough to call it a leak%s; about %d more tasks (%d more full collections) are needed to "
        "tell a leak from garbage" % (garbage, floors, rss, needed, more)))


def collected_types(censuses: Sequence[Census], samples: Sequence[Sample]) -> frozenset[str]:
    """Types a full collection between two counts took back at least half the growth of.

    Garbage's types (a retried task's frames and tracebacks, a dropped
    minidom tree's nodes) fall at every full collection; a leaked object is
    reachable, so its type's count does not.
    """
    if len(censuses) < 2:
        return frozenset()
    full, i, at = [], 0, 0
    for c in censuses:
        while i < len(samples) and samples[i].t <= c.t:
            at = samples[i].gc_full or at
            i += 1
        full.append(at)
    base = censuses[0].types
    out = set()
    for (a, fa), (b, fb) in zip(zip(censuses, full), zip(censuses[1:], full[1:])):
        if fb <= fa:
            continue
        for name, (before, _) in a.types.items():
            gain = before - base.get(name, (0, 0))[0]
            after = b.types.get(name, (0, 0))[0] - base.get(name, (0, 0))[0]
            if gain >= MIN_COLLECTED and after < MIN_TAKEN_SHARE * gain:
                out.add(name)
    return frozenset(out)


def awaited(samples: Sequence[Sample]) -> bool:
    """Whether no full collection ran while the process ran tasks, its collector on (the agent counted them):
    garbage promoted out of the young generations may still be waiting for one."""
    counted = [s for s in samples if s.tasks_done and s.gc_full is not None]
    return bool(counted) and counted[-1].gc_full == counted[0].gc_full and all(s.gc_enabled for s in counted)
