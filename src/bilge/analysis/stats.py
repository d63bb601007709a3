"""Robust trend statistics on short, noisy, step-shaped memory series.

- ``block_medians`` turns thousands of samples into at most a few hundred
  points; a median per block removes isolated spikes and damps the serial
  correlation that would otherwise inflate the trend test.
- ``theil_sen`` is the median of pairwise slopes: up to 29% of the points
  can be arbitrary outliers without moving it.
- ``mann_kendall`` tests for a monotonic upward trend without assuming
  linearity or normal noise (one-sided p-value, tie-corrected).

See docs/statistics.md for why these and not least squares.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bilge import trendtest

Array = NDArray[np.float64]


def block_medians(x: ArrayLike, y: ArrayLike, max_points: int) -> tuple[Array, Array]:
    """Median of x and y over consecutive blocks, at most ``max_points`` blocks."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    n = len(xs)
    if n <= max_points:
        return xs, ys
    edges = np.linspace(0, n, max_points + 1).astype(int)
    bx = np.array([np.median(xs[a:b]) for a, b in zip(edges[:-1], edges[1:]) if b > a])
    by = np.array([np.median(ys[a:b]) for a, b in zip(edges[:-1], edges[1:]) if b > a])
    return bx, by


def theil_sen(x: ArrayLike, y: ArrayLike) -> float:
    """Median of the slopes between all pairs of points with distinct x."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if len(xs) < 2:
        return 0.0
    i, j = np.triu_indices(len(xs), k=1)
    dx = xs[j] - xs[i]
    keep = dx != 0
    if not keep.any():
        return 0.0
    return float(np.median((ys[j][keep] - ys[i][keep]) / dx[keep]))


def mann_kendall(y: ArrayLike) -> tuple[float, float]:
    """One-sided Mann-Kendall test for an increasing trend (``bilge.trendtest``, shared with the agent).

    Returns:
        (z score, p-value); p is small when y tends to increase.
    """
    return trendtest.mann_kendall([float(v) for v in np.asarray(y, dtype=float)])


def binomial_at_most(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact; n up to a few thousand is instant)."""
    if k >= n or p <= 0.0:
        return 1.0
    if k < 0:
        return 0.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lg = math.lgamma
    terms = [lg(n + 1) - lg(i + 1) - lg(n - i + 1) + i * log_p + (n - i) * log_q for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))
