"""Which task the growth follows: memory left behind per call of each task name.

Two estimators, from the task records (each holds the process's RSS and
Python heap blocks right before and after the task):

- **Window regression** (preferred): cut each process's post-warm-up task
  sequence into windows of consecutive tasks and regress the memory growth
  of each window on how many calls of each task name it held. This credits
  growth to the task that *causes* it even when another task is the one
  that touches the new pages (a native leak fragments the heap, so the next
  big temporary allocation, in whatever task, extends it). Interleaving is
  random, so the counts vary from window to window and the per-call effects
  are identifiable.
- **In-task deltas** (fallback for short series): the same regression with
  one row per call and the RSS/heap change across that call.

A task is named when its window-regression effect stands out from the
other tasks' average by a t statistic of at least ``MIN_T``. When the agent
counted the items of a module-level container seen growing around each
task, the items each call adds are regressed the same way: exact counts
(no allocator, no garbage collector in between), they name the task that
adds to the container when the memory series are too coarse for a slow leak. Small leaks
need more windows than a short run has; there, a third estimator may
decide: the Python heap blocks each call leaves behind, over calls during
which no garbage collection ran (so the delta is exact), regressed the same
way. It is sharp but would blame a task that merely creates cyclic garbage
(freed by a later collection, in another task), so it only decides for the
task the window regression already ranks first, with some support of its
own (t ≥ ``MIN_SUPPORT_T``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from bilge.analysis.kind import BLOCK_BYTES
from bilge.analysis.trend import DEFAULT_POLICY
from bilge.model import TaskGrowth, TaskRecord

MIN_T = 3.0
MIN_SUPPORT_T = 1.5
MIN_CALLS = 10
# A task adds to a growing container when its calls add at least this many
# items more than the other tasks' calls on average (a key per call: one; a
# key per call that misses a cache: the miss rate). Its t must pass MIN_T too.
MIN_ITEMS_PER_CALL = 0.2
# Share of its per-call growth a task must keep over the later half of the window (see lasting_leak): the
# trend verdict's tail_ratio, one notion of "still growing at the end".
TAIL_RATIO = DEFAULT_POLICY.tail_ratio
WINDOW = 20
HUBER_K = 1.345


def task_growth(per_process: Sequence[Sequence[TaskRecord]], window: int = WINDOW) -> tuple[TaskGrowth, ...]:
    """Per task name, the memory left behind per call, most significant first.

    Args:
        per_process: post-warm-up task records, one ordered sequence per process.
        window: tasks per regression window.
    """
    names = sorted({t.name for tasks in per_process for t in tasks})
    if not names:
        return ()
    rows, rss_y, blocks_y = _windows(per_process, names, window)
    if len(rows) < 3 * len(names) + 5:
        # Too few windows: regress the in-task deltas instead (one "window"
        # per call), the same estimator on a shorter, noisier signal.
        rows, rss_y, blocks_y = _calls(per_process, names)
    if len(rows) <= len(names):
        return ()
    x = np.asarray(rows, dtype=float)
    rss_beta, rss_t = _robust_regress(x, np.asarray(rss_y, dtype=float))
    by = np.asarray(blocks_y, dtype=float)
    known = ~np.isnan(by)
    if known.sum() > len(names):
        blocks_beta, blocks_t = _robust_regress(x[known], by[known])
    else:
        blocks_beta, blocks_t = np.zeros(len(names)), np.zeros(len(names))
    exact_beta, exact_t = _exact_blocks(per_process, names)
    items_beta, items_t = _items(per_process, names)
    calls = x.sum(axis=0)
    out = [TaskGrowth(task=n, calls=int(calls[i]), bytes_per_call=float(rss_beta[i]),
                      blocks_per_call=float(exact_beta[i] if exact_beta is not None else blocks_beta[i]),
                      score=float(max(rss_t[i], blocks_t[i])),
                      support=float(exact_t[i]) if exact_t is not None else 0.0,
                      items_per_call=float(items_beta[i]) if items_beta is not None else 0.0,
                      items_score=float(items_t[i]) if items_t is not None else 0.0)
           for i, n in enumerate(names)]
    return tuple(sorted(out, key=lambda g: (-_significant(g), -g.bytes_per_call, -g.score)))


def kept_per_call(g: TaskGrowth) -> float:
    """Bytes one call keeps, at least: RSS can stall while a leak refills memory freed earlier, and heap blocks
    (at ~64 B each) then give the better lower bound."""
    if g.blocks_per_call <= 0:
        return g.bytes_per_call  # the heap says nothing is kept: RSS's figure stands, negative or not
    return max(g.bytes_per_call, g.blocks_per_call * BLOCK_BYTES)


def leaking_task(growths: Sequence[TaskGrowth], garbage: bool = False) -> TaskGrowth | None:
    """The task the growth follows, if one stands out (see the module docstring).

    ``garbage``: full collections took back most of the heap's growth, so
    RSS and the heap blocks of each call measure garbage as much as what is
    kept; then only the exact item counts name a task against them.
    """
    # Items counted around each task are exact (a container's length waits
    # for no collector and counts no return value still in flight), so they
    # come before the heap blocks' in-task deltas. Exact counts make the t
    # statistic of equal effects noise over nothing (every task adding one
    # item): the effect must also stand out in items.
    adds = [g for g in growths if g.items_score >= MIN_T
            and g.items_per_call - _others_mean(growths, g) >= MIN_ITEMS_PER_CALL]
    adder = max(adds, key=lambda g: g.items_per_call) if adds else None
    for g in growths:
        if _significant(g) and (g.bytes_per_call > 0 or g.blocks_per_call > 0) and not _overruled(g, adder, garbage):
            return g
    if adder is not None:
        return adder
    ranked = sorted(growths, key=lambda g: -g.bytes_per_call)
    if ranked and ranked[0].calls >= MIN_CALLS and ranked[0].support >= MIN_T and ranked[0].score >= MIN_SUPPORT_T:
        return ranked[0]
    return None


def lasting_leak(per_process: Sequence[Sequence[TaskRecord]],
                 growths: Sequence[TaskGrowth] | None = None, garbage: bool = False) -> TaskGrowth | None:
    """The leaking task over these tasks (``growths``: their ``task_growth``), if its growth lasts.

    Over the later half of each process's tasks the task must still keep
    ``TAIL_RATIO`` of what it keeps a call over all of them (in bytes or in
    items): a task that fills a bounded cache while the process warms up
    stands out over a window that holds the end of the filling, and keeps
    nothing once the cache evicts; a leaking task keeps on.
    """
    growths = task_growth(per_process) if growths is None else growths
    leaky = leaking_task(growths, garbage)
    if leaky is None:
        return None
    late = next((g for g in task_growth([tasks[len(tasks) // 2:] for tasks in per_process])
                 if g.task == leaky.task), None)
    if late is None:
        return leaky  # too few calls in the later half to judge
    lasting = (kept_per_call(leaky) > 0 and kept_per_call(late) >= TAIL_RATIO * kept_per_call(leaky)) or (
        leaky.items_per_call > 0 and late.items_per_call >= TAIL_RATIO * leaky.items_per_call)
    return leaky if lasting else None


def _overruled(g: TaskGrowth, adder: TaskGrowth | None, garbage: bool = False) -> bool:
    """Whether the exact measures name another task than the window regression's ``g``: the items counted
    around each call say another task adds to the growing container, and the heap blocks of gc-free calls lean
    against ``g`` (its calls keep fewer than the others'). RSS is the one measure left for ``g``, and RSS
    carries more than what is kept: a short window's noise, and the cyclic garbage a retried task leaves for
    the collector to free late (a retry's exception, traceback and frames), which RSS keeps as a high-water
    mark. Neutral blocks (t = 0) do not overrule it: then nothing but the items speaks against it, unless full
    collections took back most of the heap's growth (``garbage``): then the blocks count garbage too."""
    return adder is not None and adder.task != g.task and (g.support < 0 or garbage)


def _others_mean(growths: Sequence[TaskGrowth], g: TaskGrowth) -> float:
    others = [o.items_per_call for o in growths if o is not g]
    return sum(others) / len(others) if others else 0.0


def _exact_blocks(
    per_process: Sequence[Sequence[TaskRecord]], names: list[str]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-call heap blocks left behind, over calls with no garbage collection."""
    clean = [[t for t in tasks if t.gc_runs == 0] for tasks in per_process]
    rows, _, blocks_y = _calls(clean, names)
    if len(rows) < 3 * len(names) + 5:
        return None, None
    return _robust_regress(np.asarray(rows, dtype=float), np.asarray(blocks_y, dtype=float))


def _items(
    per_process: Sequence[Sequence[TaskRecord]], names: list[str], window: int = WINDOW
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per task name, the items its calls add to the containers counted around them, and the t statistic of
    that effect against the other names'.

    Over windows of consecutive tasks when there are enough (the same
    regression as the memory's): a task may hand its item to another
    thread (a queue a reporter thread drains into its own list), which
    appends it after the task ended, between two tasks, where no in-task
    delta sees it; a window holding the call holds the append too, but
    for its edge. Else the in-task deltas (exact, but blind to such
    appends).
    """
    rows, grown = _item_windows(per_process, names, window)
    if len(rows) >= 3 * len(names) + 5:
        return _robust_regress(np.asarray(rows, dtype=float), np.asarray(grown, dtype=float))
    return _in_task_items(per_process, names)


def _item_windows(per_process: Sequence[Sequence[TaskRecord]], names: list[str],
                  window: int) -> tuple[list[list[int]], list[float]]:
    """Rows of per-name task counts over spans of at least ``window`` consecutive tasks between two tasks whose
    items were counted, with the items added across each span (as ``_windows`` for memory)."""
    index = {n: i for i, n in enumerate(names)}
    rows: list[list[int]] = []
    grown: list[float] = []
    for tasks in per_process:
        for chunk, before, after in _spans(tasks, window, lambda t: t.items_after is not None):
            rows.append(_counts(chunk, index))
            grown.append(float(after.items_after - before.items_after))  # type: ignore[operator]
    return rows, grown


def _in_task_items(
    per_process: Sequence[Sequence[TaskRecord]], names: list[str]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per task name, the mean of the items its calls added (counts are exact, no outlier to weigh down), and
    the t statistic of that mean against the other names' calls."""
    added: dict[str, list[float]] = {n: [] for n in names}
    for tasks in per_process:
        for record in tasks:
            if record.items_before is not None and record.items_after is not None:
                added[record.name].append(float(record.items_after - record.items_before))
    if any(len(v) < MIN_CALLS for v in added.values()):
        return None, None
    beta = np.array([float(np.mean(added[n])) for n in names])
    t = np.zeros(len(names))
    for i, n in enumerate(names):
        own = np.asarray(added[n])
        others = np.asarray([v for m in names if m != n for v in added[m]])
        if not len(others):
            continue
        diff = float(own.mean() - others.mean())
        var = float(own.var(ddof=1) / len(own) + others.var(ddof=1) / len(others))
        t[i] = diff / math.sqrt(var) if var > 0 else (math.inf if diff > 0 else -math.inf if diff < 0 else 0.0)
    return beta, t


def _significant(g: TaskGrowth) -> bool:
    return g.calls >= MIN_CALLS and g.score >= MIN_T


def _usable(tasks: Sequence[TaskRecord]) -> list[TaskRecord]:
    return [t for t in tasks if None not in (t.rss_before, t.rss_after, t.blocks_before, t.blocks_after)]


# A span of consecutive tasks and the (RSS, heap blocks) readings that bracket it.
Span = tuple[Sequence[TaskRecord], int, int, 'int | None', 'int | None']
Design = tuple[list[list[int]], list[float], list[float]]


def _design(spans: Iterable[Span], names: list[str]) -> Design:
    """Rows of per-name task counts, with the RSS and heap growth across each span."""
    index = {n: i for i, n in enumerate(names)}
    rows: list[list[int]] = []
    rss_y: list[float] = []
    blocks_y: list[float] = []
    for chunk, rss0, rss1, blocks0, blocks1 in spans:
        rows.append(_counts(chunk, index))
        rss_y.append(float(rss1 - rss0))
        blocks_y.append(float(blocks1 - blocks0) if blocks0 is not None and blocks1 is not None else math.nan)
    return rows, rss_y, blocks_y


def _counts(chunk: Sequence[TaskRecord], index: dict[str, int]) -> list[int]:
    """Calls of each task name in ``chunk``, in ``index``'s order."""
    counts = [0] * len(index)
    for t in chunk:
        counts[index[t.name]] += 1
    return counts


def _spans(tasks: Sequence[TaskRecord], window: int, read: Callable[[TaskRecord], bool]
           ) -> Iterator[tuple[Sequence[TaskRecord], TaskRecord, TaskRecord]]:
    """(tasks, the read task before them, the last of them, itself read): spans of at least ``window``
    consecutive tasks between two read tasks. A young process's memory is read after every task, an old one's
    after one task in N; every task is recorded, read or not, so each span's counts are whole. A span over a gap
    (long runs record tasks in bursts; bilge's own work is cut out) is skipped."""
    before: TaskRecord | None = None
    start = 0
    for i, t in enumerate(tasks):
        if not read(t):
            continue
        if before is None:
            before, start = t, i
            continue
        if t.seq - before.seq < window:
            continue
        chunk = tasks[start + 1:i + 1]
        if len(chunk) == t.seq - before.seq:
            yield chunk, before, t
        before, start = t, i


def _windows(per_process: Sequence[Sequence[TaskRecord]], names: list[str], window: int) -> Design:
    # Heap blocks are read after some tasks only on older records: their growth is unknown there (NaN).
    spans = ((chunk, before.rss_after, after.rss_after, before.blocks_after, after.blocks_after)
             for tasks in per_process for chunk, before, after in _spans(tasks, window, _rss_read))
    return _design(spans, names)  # type: ignore[arg-type]


def _rss_read(t: TaskRecord) -> bool:
    return t.rss_after is not None


def _calls(per_process: Sequence[Sequence[TaskRecord]], names: list[str]) -> Design:
    spans = (((t,), t.rss_before, t.rss_after, t.blocks_before, t.blocks_after)
             for tasks in per_process for t in _usable(tasks))
    return _design(spans, names)  # type: ignore[arg-type]


def _robust_regress(x: np.ndarray, y: np.ndarray, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Huber regression without intercept (IRLS); t of each effect against the others' mean.

    Huber weights keep the windows where a garbage collection or a new
    allocator high-water mark moved memory by a lot from dominating the fit.
    """
    k = x.shape[1]
    weights = np.ones(len(y))
    beta = np.zeros(k)
    residual = y
    for _ in range(iterations):
        root = np.sqrt(weights)
        beta, *_ = np.linalg.lstsq(x * root[:, None], y * root, rcond=None)
        residual = y - x @ beta
        deviation = np.abs(residual - np.median(residual))
        # The MAD is 0 when most windows did not move RSS at all (page-sized
        # steps); fall back to the mean deviation rather than weighting
        # every moving window down to nothing.
        scale = 1.4826 * float(np.median(deviation)) or 1.2533 * float(deviation.mean()) or 1.0
        u = np.abs(residual) / (HUBER_K * scale)
        weights = np.where(u <= 1, 1.0, 1.0 / np.maximum(u, 1e-12))
    root = np.sqrt(weights)
    xw = x * root[:, None]
    sigma2 = float(((residual * root) ** 2).sum()) / max(1, len(y) - k)
    cov = sigma2 * np.linalg.pinv(xw.T @ xw)
    t = np.zeros(k)
    for i in range(k):
        contrast = np.full(k, -1.0 / (k - 1)) if k > 1 else np.zeros(k)
        contrast[i] = 1.0
        var = float(contrast @ cov @ contrast)
        diff = float(contrast @ beta)
        t[i] = diff / math.sqrt(var) if var > 0 else (math.inf if diff > 0 else 0.0)
    return beta, t
