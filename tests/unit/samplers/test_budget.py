"""Tests for bilge.samplers.budget: the CPU-time token bucket that paces the census."""

from __future__ import annotations

from bilge.samplers.budget import CpuBudget


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_starts_with_the_burst() -> None:
    """A fresh bucket allows work up to its burst at once, and no more."""
    budget = CpuBudget(share=0.01, burst=0.06, clock=FakeClock())
    assert budget.can_spend(0.06)
    assert not budget.can_spend(0.061)


def test_refills_at_share_per_second_up_to_burst() -> None:
    """After spending everything, 1% of a core refills 0.01 s per second, never above the burst."""
    clock = FakeClock()
    budget = CpuBudget(share=0.01, burst=0.06, clock=clock)
    budget.spend(0.06)
    assert not budget.can_spend(0.001)
    clock.now += 2.0
    assert budget.can_spend(0.02)
    assert not budget.can_spend(0.0201)
    clock.now += 3600.0
    assert budget.can_spend(0.06)
    assert not budget.can_spend(0.0601)


def test_overspending_is_a_debt_paid_back_over_time() -> None:
    """Work that cost more than the bucket held leaves a debt: nothing runs until it is repaid."""
    clock = FakeClock()
    budget = CpuBudget(share=0.01, burst=0.06, clock=clock)
    budget.spend(0.16)  # 0.1 s of debt
    clock.now += 9.0
    assert not budget.can_spend(0.0)
    clock.now += 1.5
    assert budget.can_spend(0.0)
