"""Tests for bilge.analysis.trend: the leak / no-leak / inconclusive verdict on synthetic RSS series.

Series are RSS-like: a 60 MiB base, values in whole 4096-byte pages, Gaussian noise,
one point per task; every random draw uses a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from bilge.analysis import trend
from bilge.analysis.trend import DEFAULT_POLICY, TrendPolicy, assess, confirmed_after, evenly
from bilge.model import INCONCLUSIVE, LEAK, NO_LEAK

PAGE = 4096
BASE = 60 * 2**20
KIB = 1024
MIB = 2**20


def rss_series(
    tasks: int, growth: Callable[[np.ndarray], np.ndarray], noise: float, seed: int
) -> tuple[list[float], list[float]]:
    """(task ordinals 1..tasks, page-granular RSS = base + growth(x) + noise)."""
    rng = np.random.default_rng(seed)
    x = np.arange(1, tasks + 1, dtype=float)
    y = (BASE + growth(x) + rng.normal(0.0, noise, tasks)) // PAGE * PAGE
    return x.tolist(), y.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_leak_is_a_leak_with_the_true_slope(seed: int) -> None:
    """1 KiB per task over 1500 tasks under 64 KiB noise: LEAK, slope within ±30% of 1024 B/task."""
    x, y = rss_series(1500, lambda x: 1 * KIB * x, 64 * KIB, seed)
    result = assess(x, y)
    assert result.verdict == LEAK
    assert 0.7 * 1024 <= result.slope <= 1.3 * 1024
    assert result.p_value < DEFAULT_POLICY.alpha
    assert result.confidence == pytest.approx(1.0 - result.p_value)
    assert result.points == 1500
    assert result.window_start == 750
    assert "still growing at the end" in result.reason


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slow_leak_is_a_leak(seed: int) -> None:
    """200 B per task over 3000 tasks under 16 KiB noise (less than one page per 20 tasks): LEAK near 200 B/task."""
    x, y = rss_series(3000, lambda x: 200.0 * x, 16 * KIB, seed)
    result = assess(x, y)
    assert result.verdict == LEAK
    assert 140 <= result.slope <= 260


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warm_up_plateau_is_not_a_leak(seed: int) -> None:
    """10 KiB per task for the first 30% of 1500 tasks, flat afterwards (a cache filling up): NO_LEAK."""
    x, y = rss_series(1500, lambda x: 10 * KIB * np.minimum(x, 450), 64 * KIB, seed)
    assert y[-1] - y[0] > 4 * MIB  # it did grow a lot, only not after warm-up
    result = assess(x, y)
    assert result.verdict == NO_LEAK


def test_plateau_reached_inside_the_window_levels_off() -> None:
    """Growth that stops at 70% of the run is significant over the window but not in its tail: NO_LEAK, levelled off."""
    x, y = rss_series(1500, lambda x: 4 * KIB * np.minimum(x, 1050), 16 * KIB, 0)
    result = assess(x, y)
    assert result.verdict == NO_LEAK
    assert "levelled off" in result.reason


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_off_step_at_start_is_not_a_leak(seed: int) -> None:
    """A 20 MiB lazy import at task 5, then flat: NO_LEAK."""
    x, y = rss_series(1500, lambda x: np.where(x >= 5, 20.0 * MIB, 0.0), 64 * KIB, seed)
    result = assess(x, y)
    assert result.verdict == NO_LEAK
    assert abs(result.slope) < DEFAULT_POLICY.min_slope * 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isolated_spikes_on_a_flat_series_are_not_a_leak(seed: int) -> None:
    """2% of the points jump by +50 MiB (big transient allocations) on a flat series: NO_LEAK."""
    x, y = rss_series(1500, lambda x: 0.0 * x, 64 * KIB, seed)
    rng = np.random.default_rng(100 + seed)
    spikes = rng.choice(1500, size=30, replace=False)
    spiky = np.asarray(y)
    spiky[spikes] += 50 * MIB
    # Spikes late in the run would fool a test on raw points: put some near the end too.
    spiky[[1400, 1450, 1490]] += 50 * MIB
    result = assess(x, spiky.tolist())
    assert result.verdict == NO_LEAK


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_pure_noise_is_not_a_leak(seed: int) -> None:
    """Flat RSS with 64 KiB noise: NO_LEAK with a non-significant p-value."""
    x, y = rss_series(1500, lambda x: 0.0 * x, 64 * KIB, seed)
    result = assess(x, y)
    assert result.verdict == NO_LEAK
    assert result.p_value >= DEFAULT_POLICY.alpha
    assert result.reason.startswith("no sustained growth after warm-up")


def test_significant_but_immaterial_growth_is_not_a_leak() -> None:
    """100 B/task with almost no noise is significant, but 73 KiB over the window is below min_growth: NO_LEAK."""
    x, y = rss_series(1500, lambda x: 100.0 * x, 2 * KIB, 0)
    result = assess(x, y)
    assert result.verdict == NO_LEAK
    assert result.p_value < DEFAULT_POLICY.alpha
    assert result.reason.startswith("growth after warm-up is too small to matter")


def test_too_few_points_is_inconclusive_and_says_how_many_more() -> None:
    """With 20 points and min_points 60 the verdict is INCONCLUSIVE and needed is exactly 40."""
    x, y = rss_series(20, lambda x: 100 * KIB * x, 1.0, 0)
    result = assess(x, y)
    assert result.verdict == INCONCLUSIVE
    assert result.needed == 40
    assert result.points == 20
    assert result.reason == "only 20 tasks observed; at least 60 are needed"


def test_inconclusive_reason_names_the_unit() -> None:
    """The unit word of the reason follows the caller (samples for time series)."""
    result = assess([0.0, 1.0], [1.0, 2.0], TrendPolicy(min_points=5), unit="sample")
    assert result.reason == "only 2 samples observed; at least 5 are needed"
    assert result.needed == 3


def test_confirmed_after_for_a_2k_per_task_leak() -> None:
    """A 2 KiB/task leak under 64 KiB noise is confirmed within 400 tasks of 1500, never before min_points."""
    x, y = rss_series(1500, lambda x: 2 * KIB * x, 64 * KIB, 0)
    confirmed = confirmed_after(x, y)
    assert confirmed is not None
    assert DEFAULT_POLICY.min_points <= confirmed <= 400
    # Every later prefix is judged a leak, which is what "confirmed" promises.
    assert assess(x[:confirmed], y[:confirmed]).verdict == LEAK
    assert assess(x[: confirmed + 100], y[: confirmed + 100]).verdict == LEAK


def test_confirmed_after_is_none_for_a_plateau() -> None:
    """A warm-up plateau is never confirmed as a leak: None."""
    x, y = rss_series(1500, lambda x: 10 * KIB * np.minimum(x, 450), 64 * KIB, 0)
    assert confirmed_after(x, y) is None


def test_confirmed_after_is_none_when_the_last_prefix_is_not_a_leak() -> None:
    """A leak that stopped (so the full series is a plateau) is not confirmed even though early prefixes leaked."""
    x, y = rss_series(1500, lambda x: 4 * KIB * np.minimum(x, 600), 16 * KIB, 0)
    assert assess(x[:500], y[:500]).verdict == LEAK
    assert confirmed_after(x, y) is None


def test_as_arrays_drops_missing_values() -> None:
    """Pairs whose y is None are dropped, the rest become floats in order."""
    xs, ys = trend.as_arrays([(1, 10), (2, None), (3, 30)])
    assert xs == [1.0, 3.0]
    assert ys == [10.0, 30.0]


def test_fitted_line_of_short_and_long_series() -> None:
    """fitted_line is None below four points; otherwise its endpoints lie on the series' exact line."""
    assert trend.fitted_line([1, 2, 3], [1, 2, 3]) is None
    x = np.arange(1000, dtype=float)
    line = trend.fitted_line(x, 5.0 * x + 3)
    assert line is not None
    (x0, y0), (x1, y1) = line
    assert 0 <= x0 < 10 and 990 <= x1 < 1000
    assert y0 == pytest.approx(5.0 * x0 + 3)
    assert y1 == pytest.approx(5.0 * x1 + 3)


def test_fitted_line_ignores_spikes() -> None:
    """Isolated +50 MiB spikes on a 1 KiB/step line do not move the fitted line off the true one."""
    x = np.arange(1500, dtype=float)
    y = BASE + 1024.0 * x
    y[::97] += 50 * MIB
    line = trend.fitted_line(x, y)
    assert line is not None
    (x0, y0), (x1, y1) = line
    assert (y1 - y0) / (x1 - x0) == pytest.approx(1024.0, rel=0.01)
    assert y0 == pytest.approx(BASE + 1024.0 * x0, abs=64 * KIB)


def _young_then_sparse(rng: np.random.Generator, creep: float, late_slope: float) -> tuple[list[float], list[float]]:
    """Memory after every task for 3000 tasks (creeping ``creep`` bytes/task), then after one task in ~40 to 20,000."""
    x = list(range(1, 3001))
    x += sorted(int(v) for v in rng.choice(np.arange(3001, 20001), size=425, replace=False))
    y = [50e6 + creep * min(t, 3000) + late_slope * max(0, t - 3000) + rng.normal(0, 20e3) for t in x]
    return [float(t) for t in x], y


def test_a_young_creep_read_densely_is_not_judged_as_the_whole_trend() -> None:
    """3000 densely read tasks creeping up, then 17,000 flat ones read 1 in 40: no leak once spread evenly.

    Counted by readings, the first 3000 tasks are 7/8 of the series and its
    "second half" is mostly the creep: the raw series is not called flat.
    """
    x, y = _young_then_sparse(np.random.default_rng(3), creep=150.0, late_slope=0.0)
    assert assess(x, y).verdict != NO_LEAK
    ex, ey = evenly(x, y)
    assert len(ex) < 1000 and ex[-1] == x[-1]
    assert assess(ex, ey).verdict == NO_LEAK


def test_a_leak_read_one_task_in_n_is_still_a_leak_and_an_even_series_is_unchanged() -> None:
    """Growth that goes on through the sparse phase stays a leak; a series read after every task comes back as is."""
    x, y = _young_then_sparse(np.random.default_rng(4), creep=0.0, late_slope=100.0)
    assert assess(*evenly(x, y)).verdict == LEAK
    even_x = [float(t) for t in range(1, 2001)]
    even_y = [float(t) for t in range(2000)]
    assert evenly(even_x, even_y) == (even_x, even_y)


def test_a_slow_heap_trend_is_judged_by_what_it_costs_in_a_day_at_the_task_rate() -> None:
    """3 heap blocks per task, ~2,250 over the judged half (under the old 4000-block floor): a leak at 300 tasks
    per second (~79 MiB a day), too small to matter at 0.05 tasks per second (~0.8 MiB a day)."""
    from bilge.analysis.diagnose import HEAP_POLICY

    rng = np.random.default_rng(3)
    x = np.arange(1, 1501, dtype=float)
    # Heap blocks: exact counts, a few blocks of jitter from the task's own transients.
    y = 180_000 + 3 * x + rng.integers(-3, 4, 1500)
    busy = assess(x, y, HEAP_POLICY, rate=300.0)
    assert busy.verdict == LEAK, busy.reason
    assert "a day at the observed 300 tasks per second" in busy.reason
    idle = assess(x, y, HEAP_POLICY, rate=0.05)
    assert idle.verdict == NO_LEAK
    assert idle.reason.startswith("growth after warm-up is too small to matter: ~")
    assert "under 16.0 MiB a day" in idle.reason
    # A flat heap with the same jitter is no leak at any rate.
    flat = 180_000 + rng.integers(-3, 4, 1500)
    assert assess(x, flat, HEAP_POLICY, rate=300.0).verdict == NO_LEAK
