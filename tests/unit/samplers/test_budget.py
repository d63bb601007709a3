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
    """A fresh bucket allows work up to its burst at once, and no more once part of it is spent."""
    budget = CpuBudget(share=0.01, burst=0.06, clock=FakeClock())
    assert budget.can_spend(0.06)
    budget.spend(0.01)
    assert budget.can_spend(0.0499)
    assert not budget.can_spend(0.051)


def test_work_dearer_than_the_burst_waits_for_a_full_bucket_and_leaves_a_debt() -> None:
    """A census of a million objects (0.2 s) against an 0.06 s burst still runs, at the average share."""
    clock = FakeClock()
    budget = CpuBudget(share=0.01, burst=0.06, clock=clock)
    runs = 0
    for _ in range(1000):  # 1000 s
        clock.now += 1.0
        if budget.can_spend(0.2):
            budget.spend(0.2)
            runs += 1
    assert 40 <= runs <= 51  # 1 % of 1000 s is 10 s of CPU: 50 runs at most, plus the first burst's


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
    budget.spend(0.001)
    assert not budget.can_spend(0.0591)


def test_overspending_is_a_debt_paid_back_over_time() -> None:
    """Work that cost more than the bucket held leaves a debt: nothing runs until it is repaid."""
    clock = FakeClock()
    budget = CpuBudget(share=0.01, burst=0.06, clock=clock)
    budget.spend(0.16)  # 0.1 s of debt
    clock.now += 9.0
    assert not budget.can_spend(0.0)
    clock.now += 1.5
    assert budget.can_spend(0.0)


def test_a_pace_below_one_accrues_that_part_of_the_share() -> None:
    """At a quarter pace 1 % of a core refills 0.0025 s per second."""
    clock = FakeClock()
    budget = CpuBudget(share=0.01, burst=0.06, clock=clock, pace=lambda: 0.25)
    budget.spend(0.06)
    clock.now += 4.0
    assert budget.can_spend(0.0099)
    assert not budget.can_spend(0.0101)
