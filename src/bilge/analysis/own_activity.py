"""Take the agent's own explain activity out of a process's task series.

After a process turns suspect the agent runs allocation episodes
(tracemalloc on a few tasks), native windows and holder searches inside
it. They leave steps in its memory: tracemalloc's tables are freed when an
episode ends, but glibc and pymalloc keep pages of them; naming sites fills
caches; a holder search's bookkeeping raises the high-water mark. Left in,
steps spread over the trend window would look like growth to the verdict
and the attribution.

The agent stores every budgeted run with its span (a store written before
runs were recorded falls back to the spans of its windows and holder
searches). The tasks that overlapped a run are dropped, and the memory
change across each such gap, **less the growth the process showed on both
sides of it** (the smaller of its paces over up to ``LOOKBACK`` readings
before and after, times the tasks across), is subtracted from every reading
after it. A benign process has its whole step taken out, including a
warm-up that ended during the gap; a leaking one keeps its own growth
across the gap, so the episode that measures the leaky task by design does
not flatten the very trend being measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace

from bilge.model import MEMORY_STAGES, ProcessData, TaskRecord

# Readings on each side of a gap (at most) that give the pace to expect across it;
# the pace is the difference of the medians of its first and last EDGE.
LOOKBACK = 200
EDGE = 20


def activity(p: ProcessData) -> list[tuple[float, float]]:
    """Time intervals during which the agent's memory-changing stages ran in this process, merged and sorted.

    Args:
        p: the stored process.

    Returns:
        (start, end) spans of its runs of ``MEMORY_STAGES``; for a store
        without such runs (older bilge), those of its windows and holder searches.
    """
    spans = [(r.started, r.ended) for r in p.cost.runs if r.stage in MEMORY_STAGES]
    if not spans:
        spans = [(w.started, w.ended) for w in p.windows]
        spans += [(h.started, h.t) for h in p.holders]
    return _merged(spans)


def _merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    spans = sorted(spans)
    merged: list[tuple[float, float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


# A census is counted from a list of every object and written at once; what
# it keeps (the counts of the baseline and of the latest two censuses, new
# type names) is a step of a few hundred to ~1,500 heap blocks in a small
# worker, and the list can leave a step of a few hundred KiB in RSS
# (glibc keeps the pages). The span taken out around it: its CPU time twice
# over before its end (it shares the GIL with the task), and the flush after.
CENSUS_BEFORE = 2.0
CENSUS_AFTER = 0.02


def agent_work(p: ProcessData) -> list[tuple[float, float]]:
    """Every span in which the agent changed the process's memory: its explain activity and its censuses."""
    spans = activity(p) + [(c.t - CENSUS_BEFORE * c.duration - 0.002, c.t + CENSUS_AFTER) for c in p.censuses] \
        + [(s.t - CENSUS_BEFORE * s.duration - 0.002, s.t + CENSUS_AFTER) for s in p.container_scans]
    return _merged(spans)


def without_activity(tasks: Sequence[TaskRecord], spans: Sequence[tuple[float, float]]) -> tuple[TaskRecord, ...]:
    """Tasks with those overlapping ``spans`` dropped and later readings shifted back by each gap's step.

    Each series (RSS, heap blocks) is re-based on its own readings: heap
    blocks are read on one task in N on big heaps, so the step of a gap is
    taken between the last task before it and the first task after it that
    have a reading. A "before" reading taken right after the activity (or
    carried over from a dropped task) still holds its transient peak: it is
    cleared on the first kept task after each gap.
    """
    if not spans:
        return tuple(tasks)
    dropped = _dropped(tasks, spans)
    kept: list[TaskRecord] = []
    after_gap: list[bool] = []
    gap = False
    span_index = 0
    for t, drop in zip(tasks, dropped):
        # A span that ended before this task started, between two tasks
        # (a census while the process waited for work), is a gap too.
        while span_index < len(spans) and spans[span_index][1] < t.started:
            span_index += 1
            gap = True
        if drop:
            gap = True
            continue
        kept.append(t)
        after_gap.append(gap)
        gap = False
    rss, _ = _offsets([(t.seq, t.rss_after) for t in kept], after_gap)
    blocks, rebased = _offsets([(t.seq, t.blocks_after) for t in kept], after_gap)
    out = []
    for i, t in enumerate(kept):
        clear = after_gap[i]
        out.append(replace(t, rss_before=None if clear else _minus(t.rss_before, rss[i]),
                           rss_after=_minus(t.rss_after, rss[i]),
                           blocks_before=None if clear or i in rebased else _minus(t.blocks_before, blocks[i]),
                           blocks_after=_minus(t.blocks_after, blocks[i])))
    return tuple(out)


def _offsets(points: list[tuple[int, int | None]], after_gap: list[bool]) -> tuple[list[int], set[int]]:
    """Per kept task, what to subtract from this series' readings; and the tasks with the first reading after a gap.

    The readings fall into segments, split by the gaps. Across each gap the
    step is the change from the last reading before it to the first after
    it, less the growth the process was showing on **both** sides (the
    smaller of the two segments' paces, times the tasks across): a leak
    keeps its growth across the gap; a warm-up that ended during the gap
    (flat after it) has none added back.
    """
    segments: list[list[tuple[int, int]]] = [[]]
    segment_of: list[int] = []
    rebased: set[int] = set()
    for i, ((seq, value), gap) in enumerate(zip(points, after_gap)):
        if gap and segments[-1]:
            segments.append([])
        if value is not None:
            if not segments[-1] and len(segments) > 1:
                rebased.add(i)
            segments[-1].append((seq, value))
        segment_of.append(len(segments) - 1)
    shift = [0] * len(segments)
    previous: list[tuple[int, int]] = []
    for k, segment in enumerate(segments):
        if k and segment and previous:
            pace = min(_pace(previous[-LOOKBACK:]), _pace(segment[:LOOKBACK]))
            (last_seq, last_value), (seq, value) = previous[-1], segment[0]
            shift[k] = shift[k - 1] + int(round(value - last_value - pace * max(0, seq - last_seq)))
        elif k:
            shift[k] = shift[k - 1]
        if segment:
            previous = segment
    return [shift[k] for k in segment_of], rebased


def _dropped(tasks: Sequence[TaskRecord], spans: Sequence[tuple[float, float]]) -> list[bool]:
    """Which tasks overlap a span (sorted, merged spans)."""
    dropped = []
    span_index = 0
    for t in tasks:
        while span_index < len(spans) and spans[span_index][1] < t.started:
            span_index += 1
        dropped.append(span_index < len(spans) and t.ended >= spans[span_index][0]
                       and t.started <= spans[span_index][1])
    return dropped


def _pace(points: list[tuple[int, int]]) -> float:
    """Growth per task over these (seq, reading) points; 0 when too few or shrinking (never extrapolated)."""
    if len(points) < 2 * EDGE:
        return 0.0
    first, last = points[:EDGE], points[-EDGE:]
    span = statistics.median(s for s, _ in last) - statistics.median(s for s, _ in first)
    if span <= 0:
        return 0.0
    rise = statistics.median(v for _, v in last) - statistics.median(v for _, v in first)
    return max(0.0, rise / span)


def _minus(value: int | None, shift: int) -> int | None:
    return None if value is None else value - shift
