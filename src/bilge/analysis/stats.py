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
    """One-sided Mann-Kendall test for an increasing trend.

    Returns:
        (z score, p-value); p is small when y tends to increase.
    """
    ys = np.asarray(y, dtype=float)
    n = len(ys)
    if n < 4:
        return 0.0, 1.0
    i, j = np.triu_indices(n, k=1)
    s = float(np.sign(ys[j] - ys[i]).sum())
    _, counts = np.unique(ys, return_counts=True)
    ties = counts[counts > 1]
    var = (n * (n - 1) * (2 * n + 5) - float((ties * (ties - 1) * (2 * ties + 5)).sum())) / 18.0
    if var <= 0:
        return 0.0, 1.0
    z = (s - 1) / math.sqrt(var) if s > 0 else ((s + 1) / math.sqrt(var) if s < 0 else 0.0)
    return z, 0.5 * math.erfc(z / math.sqrt(2))
