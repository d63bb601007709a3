"""The agent's budget and ledger, on a fake clock: the limits hold over any period, costs add up per stage."""

from __future__ import annotations

import pytest

from bilge.agent.budget import MAX_RUNS, Budget, Ledger, Meter
from bilge.model import StageRun


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _greedy(budget: Budget, clock: FakeClock, step: float, seconds: float, cpu: float, slowed: float
            ) -> list[tuple[float, float, float]]:
    """Spend whenever the budget affords a piece of work; (time, cpu, slowed) of every piece spent."""
    spent = []
    end = clock.now + seconds
    while clock.now < end:
        if budget.affords(cpu, slowed):
            budget.charge(cpu, slowed)
            spent.append((clock.now, cpu, slowed))
        clock.now += step
    return spent


def _most_in_any(spent: list[tuple[float, float, float]], period: float, index: int) -> float:
    """The most spent (column ``index``) within any period of ``period`` seconds."""
    return max(sum(s[index] for s in spent if start <= s[0] < start + period) for start, *_ in spent)


def test_slowed_time_never_exceeds_its_limit_in_any_hour() -> None:
    """A stage that spends slowed time whenever it can gets at most 1 s in any hour, over three hours."""
    clock = FakeClock()
    budget = Budget(cpu_share=1.0, slowed_per_hour=1.0, clock=clock)
    spent = _greedy(budget, clock, step=1.0, seconds=3 * 3600, cpu=0.0, slowed=0.05)
    assert _most_in_any(spent, 3600.0, 2) <= 1.0 + 1e-9
    # ...and it does get to spend: about half the limit per hour in the long run, plus the first burst.
    assert sum(s[2] for s in spent) == pytest.approx(0.5 + 3 * 0.5, abs=0.06)


def test_cpu_never_exceeds_its_share_over_any_period() -> None:
    """1 % over any 10 minutes: at most 6 s of CPU in any 600 s window, however the work is timed."""
    clock = FakeClock()
    budget = Budget(cpu_share=0.01, cpu_period=600.0, clock=clock)
    spent = _greedy(budget, clock, step=0.5, seconds=3600, cpu=0.2, slowed=0.0)
    assert _most_in_any(spent, 600.0, 1) <= 6.0 + 1e-9


def test_an_overrun_is_a_debt_paid_by_waiting() -> None:
    """Work that cost more than expected leaves the bucket negative: nothing else is afforded until it refills."""
    clock = FakeClock()
    budget = Budget(slowed_per_hour=1.0, clock=clock)
    assert budget.affords(0.0, 0.5)
    budget.charge(0.0, 2.0)  # expected 0.5, cost 2.0
    assert budget.slowed_left() == 0.0
    assert not budget.affords(0.0, 0.01)
    clock.now += 3600 * 4  # 2 s of debt... refilled at 0.5 s per hour, capped at 0.5 s
    assert budget.affords(0.0, 0.5)


def test_a_zero_budget_affords_only_free_work() -> None:
    """With no slowed-time allowance nothing that slows tasks is afforded; free work still is."""
    budget = Budget(slowed_per_hour=0.0, clock=FakeClock())
    assert not budget.affords(0.0, 0.001)
    assert budget.affords(0.0, 0.0)


def test_state_reports_what_is_left_and_the_limits() -> None:
    """The stored budget state: what is left now and each limit with its period."""
    clock = FakeClock()
    budget = Budget(cpu_share=0.01, cpu_period=600.0, slowed_per_hour=1.0, clock=clock)
    budget.charge(1.0, 0.25)
    state = budget.state(t=5.0)
    assert (state.t, state.cpu_limit, state.cpu_period, state.slowed_limit, state.slowed_period) == (
        5.0, 6.0, 600.0, 1.0, 3600.0)
    assert state.cpu_left == pytest.approx(2.0) and state.slowed_left == pytest.approx(0.25)


def test_ledger_adds_up_per_stage_and_keeps_runs_until_drained() -> None:
    """Totals add per stage (runs included); recorded runs come out once, in order."""
    ledger = Ledger()
    ledger.add("census", 0.1)
    ledger.add("census", 0.2)
    first = StageRun("allocation-window", "opened: why", 1.0, 2.0, 0.05, 0.04, "done")
    second = StageRun("holder-search", "after the window", 2.0, 2.5, 0.1, 0.0, "done")
    ledger.record(first)
    ledger.record(second)
    totals = {c.stage: c for c in ledger.totals()}
    assert (totals["census"].cpu_seconds, totals["census"].runs) == (pytest.approx(0.3), 2)
    assert (totals["allocation-window"].slowed_seconds, totals["allocation-window"].runs) == (0.04, 1)
    assert ledger.drain_runs() == [first, second]
    assert ledger.drain_runs() == []


def test_ledger_runs_are_bounded() -> None:
    """Past MAX_RUNS undrained runs, new ones are counted as dropped; totals still include them."""
    ledger = Ledger()
    for i in range(MAX_RUNS + 5):
        ledger.record(StageRun("recount", "r", float(i), float(i), 0.001, 0.0, "done"))
    assert len(ledger.drain_runs()) == MAX_RUNS
    assert ledger.dropped_runs == 5
    assert ledger.totals()[0].runs == MAX_RUNS + 5


def test_meter_measures_cpu_and_wall_with_injected_clocks() -> None:
    """The meter reads its clocks at entry and exit."""
    cpu, wall = FakeClock(), FakeClock()
    with Meter(cpu_clock=cpu, wall_clock=wall) as meter:
        cpu.now += 0.25
        wall.now += 1.0
    assert (meter.cpu, meter.started, meter.ended) == (0.25, 1000.0, 1001.0)


def test_a_debt_in_one_bucket_refuses_only_work_that_spends_from_it() -> None:
    """Slowed tasks overspent: more tracing waits, but a CPU-only holder search still runs; and the reverse."""
    clock = FakeClock()
    budget = Budget(cpu_share=0.01, slowed_per_hour=1.0, clock=clock)
    budget.charge(0.0, 5.0)
    assert not budget.affords(0.0, 0.01)
    assert budget.affords(0.1)
    budget.charge(10.0)
    assert not budget.affords(0.1)


def test_a_reservation_given_back_restores_the_tokens_up_to_capacity() -> None:
    """Reserving the expected cost and settling the real one (a negative charge) never exceeds the capacity."""
    clock = FakeClock()
    budget = Budget(slowed_per_hour=1.0, clock=clock)
    budget.charge(0.0, 0.2)  # reserved
    budget.charge(0.0, -0.15)  # it cost 0.05
    assert budget.slowed_left() == pytest.approx(0.45)
    budget.charge(0.0, -5.0)
    assert budget.slowed_left() == pytest.approx(0.5)
