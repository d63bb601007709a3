"""The one trend test: Mann-Kendall on block medians. Stdlib-only.

Both the agent (inside the worker: "is this process suspect?") and the
analysis (the verdict) ask whether a memory series keeps rising; both use
this test, so "growing" means the same thing in the worker and in the
report. Pure Python: the series it sees are block medians (tens to a few
hundred points), where the O(n²) pair count costs well under 10 ms.

- ``block_medians``: a median per block of consecutive readings removes
  isolated spikes and damps the serial correlation that would otherwise
  inflate the test;
- ``mann_kendall``: one-sided test for an increasing trend, with no
  assumption of linearity or normal noise, tie-corrected.

See docs/statistics.md for why these and not least squares.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def block_medians(values: Sequence[float], blocks: int) -> list[float]:
    """The median of each of at most ``blocks`` blocks of consecutive values (all values when fewer)."""
    n = len(values)
    if n <= blocks:
        return [float(v) for v in values]
    edges = [n * i // blocks for i in range(blocks + 1)]
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        if b > a:
            block = sorted(values[a:b])
            out.append(float(block[len(block) // 2]) if len(block) % 2 else
                       (block[len(block) // 2 - 1] + block[len(block) // 2]) / 2.0)
    return out


def mann_kendall(values: Sequence[float]) -> tuple[float, float]:
    """One-sided Mann-Kendall test for an increasing trend.

    Returns:
        (z score, p-value); p is small when the values tend to increase.
    """
    n = len(values)
    if n < 4:
        return 0.0, 1.0
    s = 0
    for i in range(n - 1):
        vi = values[i]
        for j in range(i + 1, n):
            d = values[j] - vi
            s += (d > 0) - (d < 0)
    ties = [t for t in Counter(values).values() if t > 1]
    var = (n * (n - 1) * (2 * n + 5) - sum(t * (t - 1) * (2 * t + 5) for t in ties)) / 18.0
    if var <= 0:
        return 0.0, 1.0
    z = (s - 1) / math.sqrt(var) if s > 0 else ((s + 1) / math.sqrt(var) if s < 0 else 0.0)
    return z, 0.5 * math.erfc(z / math.sqrt(2))
