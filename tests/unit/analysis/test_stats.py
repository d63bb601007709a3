"""Tests for bilge.analysis.stats: block medians, Theil-Sen, Mann-Kendall."""

from __future__ import annotations

import numpy as np
import pytest

from bilge.analysis.stats import block_medians, mann_kendall, theil_sen


def test_block_medians_returns_short_series_unchanged() -> None:
    """A series no longer than max_points comes back point for point, as floats."""
    bx, by = block_medians([1, 2, 3], [10, 20, 30], max_points=3)
    assert bx.tolist() == [1.0, 2.0, 3.0]
    assert by.tolist() == [10.0, 20.0, 30.0]


def test_block_medians_takes_the_median_of_each_block() -> None:
    """Ten points in two blocks become the median of each block, so one spike per block disappears."""
    x = list(range(10))
    y = [1, 1, 1000, 1, 1, 5, 5, 5, -999, 5]
    bx, by = block_medians(x, y, max_points=2)
    assert bx.tolist() == [2.0, 7.0]
    assert by.tolist() == [1.0, 5.0]


def test_block_medians_never_exceeds_max_points() -> None:
    """A long series is reduced to exactly max_points blocks."""
    bx, by = block_medians(np.arange(1001), np.arange(1001), max_points=120)
    assert len(bx) == len(by) == 120


def test_theil_sen_exact_on_a_line() -> None:
    """On points of an exact line the estimate is the line's slope."""
    x = np.arange(50, dtype=float)
    assert theil_sen(x, 3.5 * x + 7) == pytest.approx(3.5)


def test_theil_sen_ignores_a_fifth_of_arbitrary_outliers() -> None:
    """Replacing 20% of the points of a 1 KB/step line with huge values barely moves the slope."""
    rng = np.random.default_rng(11)
    x = np.arange(200, dtype=float)
    y = 60 * 2**20 + 1024.0 * x
    bad = rng.choice(200, size=40, replace=False)
    y[bad] += rng.choice([-1, 1], size=40) * 50 * 2**20
    least_squares = np.polyfit(x, y, 1)[0]
    assert theil_sen(x, y) == pytest.approx(1024.0, rel=0.02)
    # The outliers do move least squares far away, so the test is not vacuous.
    assert abs(least_squares - 1024.0) > 0.5 * 1024.0


def test_theil_sen_degenerate_inputs_give_zero() -> None:
    """One point, or points that all share the same x, have no slope: 0.0."""
    assert theil_sen([1.0], [5.0]) == 0.0
    assert theil_sen([2.0, 2.0, 2.0], [1.0, 5.0, 9.0]) == 0.0


def test_theil_sen_skips_pairs_with_equal_x() -> None:
    """Pairs at the same x are left out instead of dividing by zero."""
    assert theil_sen([0.0, 0.0, 1.0, 2.0], [0.0, 100.0, 2.0, 4.0]) == pytest.approx(2.0)


def test_mann_kendall_small_p_for_an_increasing_series() -> None:
    """A noisy increasing series gives a positive z and a tiny one-sided p-value."""
    rng = np.random.default_rng(1)
    y = np.arange(100) * 10.0 + rng.normal(0, 20, 100)
    z, p = mann_kendall(y)
    assert z > 5
    assert p < 1e-6


def test_mann_kendall_strictly_increasing_exact_value() -> None:
    """Six strictly rising points: S=15, var=28.33, continuity-corrected z=14/sqrt(var)=2.63, p=0.0043 (< 0.01)."""
    z, p = mann_kendall([1, 2, 3, 4, 5, 6])
    assert z == pytest.approx(14 / np.sqrt(6 * 5 * 17 / 18))
    assert p == pytest.approx(0.004267, abs=1e-6)


def test_mann_kendall_p_is_large_for_flat_noise() -> None:
    """Pure noise shows no increasing trend: p stays well above any significance level."""
    rng = np.random.default_rng(2)
    _, p = mann_kendall(rng.normal(0, 1, 200))
    assert p > 0.05


def test_mann_kendall_p_above_half_for_a_decreasing_series() -> None:
    """The test is one-sided: a decreasing series has z < 0 and p > 0.5."""
    z, p = mann_kendall(np.arange(50, 0, -1, dtype=float))
    assert z < 0
    assert p > 0.99


def test_mann_kendall_constant_series_is_p_half_or_more() -> None:
    """A constant series (all ties) has no trend: p is at least 0.5."""
    z, p = mann_kendall([7.0] * 20)
    assert z == 0.0
    assert p >= 0.5


def test_mann_kendall_too_short_is_not_significant() -> None:
    """Fewer than four points cannot show a trend: (0, 1)."""
    assert mann_kendall([1.0, 2.0, 3.0]) == (0.0, 1.0)


def test_mann_kendall_tie_correction_lowers_the_variance() -> None:
    """Ties (page-granular RSS) shrink the variance, so the same S gives a larger z than without ties."""
    with_ties = [0, 0, 1, 1, 2, 2, 3, 3]
    without = [0, 0.1, 1, 1.1, 2, 2.1, 3, 3.1]
    z_ties, _ = mann_kendall(with_ties)
    z_plain, _ = mann_kendall(without)
    # S is 24 with ties against 28 without, yet the tie-corrected z is not far below.
    n = 8
    var_ties = (n * (n - 1) * (2 * n + 5) - 4 * (2 * 1 * 9)) / 18
    assert z_ties == pytest.approx((24 - 1) / np.sqrt(var_ties))
    assert z_plain == pytest.approx((28 - 1) / np.sqrt(n * (n - 1) * (2 * n + 5) / 18))


def test_binomial_at_most_is_the_exact_lower_tail() -> None:
    from math import comb

    from bilge.analysis.stats import binomial_at_most

    assert abs(binomial_at_most(3, 10, 0.5) - sum(comb(10, i) for i in range(4)) / 1024) < 1e-12
    assert binomial_at_most(10, 10, 0.3) == 1.0 and binomial_at_most(-1, 10, 0.3) == 0.0
    assert binomial_at_most(0, 5, 0.0) == 1.0 and binomial_at_most(4, 5, 1.0) == 0.0
    assert 0 < binomial_at_most(40, 2000, 0.5) < 1e-300 or binomial_at_most(40, 2000, 0.5) == 0.0  # no overflow
