"""The statistical verdict on one memory series: leak, no-leak or inconclusive.

A leak is growth that is (1) significant after warm-up, (2) large enough to
matter, and (3) still going on at the end. Warm-up plateaus fail (3), a
one-off step at start fails (1) because it lies before the window, a spike
is removed by block medians, and noise fails (1) or (2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bilge.analysis.stats import block_medians, mann_kendall, theil_sen
from bilge.model import INCONCLUSIVE, LEAK, NO_LEAK, Trend


@dataclass(frozen=True)
class TrendPolicy:
    """Thresholds of the verdict; the defaults are justified in docs/statistics.md.

    Args:
        min_points: raw points below which no verdict is given.
        max_blocks: the series is reduced to at most this many block medians.
        alpha: significance of the trend over the post-warm-up window.
        tail_alpha: significance still required over the last quarter.
        tail_ratio: the last quarter's slope must keep this share of the
            window's slope, or growth is judged to be levelling off.
        min_growth: bytes the window must grow by to be called a leak.
        min_slope: bytes per x-unit below which growth is ignored.
        min_per_day: when set and the caller knows the rate (x-units per
            second), growth matters when it would reach this much in a day at
            that rate: a slow leak that is statistically certain is not
            dismissed for being small over a short window, and a worker that
            runs few tasks is not called leaking for a trend that costs it
            little. ``min_growth``/``min_slope`` then only ask for a visible
            trend.
        unit_bytes: bytes one y-unit stands for (for the reason text).
    """

    min_points: int = 60
    max_blocks: int = 120
    alpha: float = 1e-4
    tail_alpha: float = 0.01
    tail_ratio: float = 0.25
    min_growth: float = 192 * 1024
    min_slope: float = 16.0
    min_per_day: float | None = None
    unit_bytes: float = 1.0


DEFAULT_POLICY = TrendPolicy()


DAY = 86400.0


def assess(x: Sequence[float], y: Sequence[float], policy: TrendPolicy = DEFAULT_POLICY, unit: str = "task",
           rate: float | None = None) -> Trend:
    """Judge one series (x increasing: task ordinal or seconds; y: bytes).

    Args:
        x: positions of the points.
        y: memory at those points.
        policy: thresholds.
        unit: what x counts, for the reason text.
        rate: x-units per second over the judged window (tasks per second), for
            ``policy.min_per_day``.

    Returns:
        The verdict with slope (bytes per x-unit) over the post-warm-up window.
    """
    n = len(y)
    if n < policy.min_points:
        return Trend(INCONCLUSIVE, 0.0, 1.0, 0.0, 0, n,
                     "only %d %ss observed; at least %d are needed" % (n, unit, policy.min_points),
                     needed=policy.min_points - n)
    bx, by = block_medians(x, y, policy.max_blocks)
    half = len(bx) // 2
    wx, wy = bx[half:], by[half:]
    window_start = int(n * half / len(bx))
    slope = theil_sen(wx, wy)
    _, p = mann_kendall(wy)
    confidence = 1.0 - p
    growth = slope * float(wx[-1] - wx[0])
    per_day = slope * rate * DAY if policy.min_per_day is not None and rate else None
    small = slope < policy.min_slope or growth < policy.min_growth or (
        per_day is not None and policy.min_per_day is not None and per_day < policy.min_per_day)
    if p >= policy.alpha or small:
        why = _flat_reason(p, slope, growth, policy, unit, per_day, rate)
        return Trend(NO_LEAK, slope, p, 1.0 - _no_leak_doubt(p, growth, policy), window_start, n, why)
    quarter = len(wx) // 2
    tx, ty = wx[quarter:], wy[quarter:]
    tail_slope = theil_sen(tx, ty)
    _, tail_p = mann_kendall(ty)
    if tail_slope >= policy.tail_ratio * slope and tail_p < policy.tail_alpha:
        return Trend(LEAK, slope, p, confidence, window_start, n,
                     "memory grows steadily after warm-up: %+.0f bytes per %s, still growing at the end%s"
                     % (slope, unit, ": " + per_day_text(slope, rate, policy, unit) if per_day is not None else ""))
    if tail_slope < policy.tail_ratio * slope and tail_p >= policy.tail_alpha:
        return Trend(NO_LEAK, slope, p, 1.0 - tail_p, window_start, n,
                     "memory grew after warm-up, then levelled off (a plateau, e.g. a bounded cache filling)")
    more = max(n // 2, policy.min_points)
    return Trend(INCONCLUSIVE, slope, p, confidence, window_start, n,
                 "memory grows, but the growth is slowing; about %d more %ss are needed to tell a leak from a "
                 "cache still filling" % (more, unit), needed=more)


def _flat_reason(p: float, slope: float, growth: float, policy: TrendPolicy, unit: str,
                 per_day: float | None = None, rate: float | None = None) -> str:
    if p >= policy.alpha:
        return "no sustained growth after warm-up (trend test p=%.2g)" % p
    if per_day is not None and policy.min_per_day is not None and per_day < policy.min_per_day \
            and slope >= policy.min_slope and growth >= policy.min_growth:
        return ("growth after warm-up is too small to matter: %s, under %s a day"
                % (per_day_text(slope, rate, policy, unit),
                   size_text(policy.min_per_day * policy.unit_bytes)))
    return "growth after warm-up is too small to matter (%+.0f bytes per %s, %+.0f KiB over the window)" % (
        slope * policy.unit_bytes, unit, growth * policy.unit_bytes / 1024)


def per_day_text(slope: float, rate: float | None, policy: TrendPolicy, unit: str = "task") -> str:
    """What a slope (y-units per x-unit) comes to in a day at the observed rate ("" when the rate is not known)."""
    if not rate:
        return ""
    return "~%s a day at the observed %.3g %ss per second" % (size_text(slope * rate * DAY * policy.unit_bytes), rate,
                                                               unit)


def size_text(n: float) -> str:
    """Bytes as a short human figure ("1.5 MiB")."""
    for factor, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= factor:
            return "%.1f %s" % (n / factor, suffix)
    return "%.0f bytes" % n


def _no_leak_doubt(p: float, growth: float, policy: TrendPolicy) -> float:
    """How much a no-leak verdict is in doubt: high when a trend is near-significant and near-material."""
    if p >= 0.05:
        return 0.0
    return float(min(1.0, max(0.0, growth / policy.min_growth)) * (1.0 - p) * 0.5)


def confirmed_after(
    x: Sequence[float], y: Sequence[float], policy: TrendPolicy = DEFAULT_POLICY, checkpoints: int = 60,
    rate: float | None = None,
) -> int | None:
    """The smallest prefix length from which every later prefix is judged a leak.

    Re-runs ``assess`` on growing prefixes, as the live agent would have seen
    the data, so it answers "how many points did the verdict need".
    """
    n = len(y)
    step = max(10, n // checkpoints)
    marks = list(range(policy.min_points, n, step)) + [n]
    confirmed: int | None = None
    for m in marks:
        if assess(x[:m], y[:m], policy, rate=rate).verdict == LEAK:
            if confirmed is None:
                confirmed = m
        else:
            confirmed = None
    return confirmed


def as_arrays(points: Sequence[tuple[float, int | float | None]]) -> tuple[list[float], list[float]]:
    """Split (x, y) pairs, dropping pairs with a missing y."""
    xs: list[float] = []
    ys: list[float] = []
    for a, b in points:
        if b is not None:
            xs.append(float(a))
            ys.append(float(b))
    return xs, ys


def evenly(x: Sequence[float], y: Sequence[float]) -> tuple[list[float], list[float]]:
    """The series with its readings spread evenly over x (medians of equal-width bins, each at its last x).

    The agent reads memory after every task while a process is young and
    after one task in N later on. Block medians and "the second half" of a
    series count readings: uneven, the first 3000 tasks would outweigh the
    next 17,000, and a young process's creep would be judged as the whole
    trend. Bins as wide as the typical gap between readings in the sparser
    half of the x range make every stretch of tasks weigh the same; an
    evenly read series comes back unchanged.
    """
    n = len(x)
    if n < 4:
        return list(x), list(y)
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    gaps = np.diff(xs)
    middle = xs[0] + (xs[-1] - xs[0]) / 2
    early, late = gaps[xs[1:] <= middle], gaps[xs[1:] > middle]
    width = max(float(np.median(early)) if len(early) else 0.0, float(np.median(late)) if len(late) else 0.0)
    if width <= 1.5 * float(np.median(gaps)):
        return list(x), list(y)
    index = ((xs - xs[0]) // width).astype(int)
    cuts = np.flatnonzero(np.diff(index)) + 1
    bins = zip(np.split(xs, cuts), np.split(ys, cuts))
    out = [(float(bx[-1]), float(np.median(by))) for bx, by in bins]
    return [a for a, _ in out], [b for _, b in out]


def fitted_line(
    x: Sequence[float], y: Sequence[float], max_blocks: int = 120
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Endpoints of the Theil-Sen line through a series (None if too short).

    The intercept is the median of y - slope * x, the usual companion of the
    Theil-Sen slope, so the line is as robust as the slope.
    """
    if len(y) < 4:
        return None
    bx, by = block_medians(np.asarray(x, float), np.asarray(y, float), max_blocks)
    slope = theil_sen(bx, by)
    intercept = float(np.median(by - slope * bx))
    x0, x1 = float(bx[0]), float(bx[-1])
    return (x0, intercept + slope * x0), (x1, intercept + slope * x1)
