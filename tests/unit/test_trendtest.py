"""The shared trend test: the agent's suspicion and the analysis's verdict use the same Mann-Kendall."""

from __future__ import annotations

import pytest

from bilge.trendtest import block_medians, mann_kendall


def test_a_rising_series_has_a_small_p_and_a_falling_or_flat_one_does_not() -> None:
    """Strictly rising: z = (S-1)/sqrt(var) with S = n(n-1)/2; flat (all ties): no trend at all."""
    z, p = mann_kendall([float(i) for i in range(10)])
    assert z == pytest.approx((45 - 1) / (10 * 9 * 25 / 18) ** 0.5)
    assert p < 1e-4
    assert mann_kendall([9.0 - i for i in range(10)])[1] > 0.99
    assert mann_kendall([5.0] * 10) == (0.0, 1.0)
    assert mann_kendall([1.0, 2.0, 3.0]) == (0.0, 1.0)


def test_ties_shrink_the_variance() -> None:
    """A tie group of t values removes t(t-1)(2t+5)/18 from the variance."""
    values = [1.0, 2.0, 2.0, 3.0, 4.0]
    z, _ = mann_kendall(values)
    s = 9  # 10 pairs, one tied
    var = (5 * 4 * 15 - 2 * 1 * 9) / 18
    assert z == pytest.approx((s - 1) / var ** 0.5)


def test_block_medians_take_a_median_per_block_and_keep_short_series() -> None:
    """A spike inside a block does not move its median; fewer values than blocks are kept as they are."""
    assert block_medians([1.0, 100.0, 2.0, 3.0, 4.0, 5.0], 2) == [2.0, 4.0]
    assert block_medians([3.0, 1.0], 5) == [3.0, 1.0]
    assert block_medians([1.0, 2.0, 3.0, 4.0], 1) == [2.5]
