"""The agent's explain stage failing halfway never reaches the host: errors are recorded, tracing is stopped."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest

from bilge.agent import Agent, AgentConfig, _runtime
from bilge.samplers import holders as holder_sampler
from bilge.samplers.allocations import AllocationWindow
from bilge.store.sqlite import load_run


class AlwaysSuspect:
    """A suspicion that fires at once, so the explain stage runs without a real leak."""

    def add(self, value: float | None) -> None:
        pass

    def gap(self) -> None:
        pass

    def suspect(self) -> bool:
        return True

    def growth_per_reading(self) -> float:
        return 0.0


def _agent(store: tuple[str, int]) -> Agent:
    agent = Agent(AgentConfig(data_dir=store[0], run_id=store[1], sample_interval=0.02, census_min_interval=0.05))
    agent._suspicion = AlwaysSuspect()  # type: ignore[assignment]
    agent._baseline = {}
    return agent


def _drive(agent: Agent, tasks: int) -> None:
    for i in range(tasks):
        agent.task_started(i, "shop.task")
        agent.task_finished(i)


@pytest.fixture(autouse=True)
def _no_tracing_left() -> None:
    yield
    if tracemalloc.is_tracing():
        tracemalloc.stop()
        pytest.fail("tracemalloc was left running")


def test_a_window_that_fails_while_polled_is_stopped_and_recorded(
    store: tuple[str, int], monkeypatch: pytest.MonkeyPatch, wait_for: Callable[..., bool]
) -> None:
    """AllocationWindow.poll raising: tracing stops, the error is stored, tasks keep being recorded."""

    polled: list[int] = []

    def broken_poll(self: AllocationWindow) -> None:
        polled.append(1)
        raise RuntimeError("snapshot compare exploded")

    monkeypatch.setattr(AllocationWindow, "poll", broken_poll)
    agent = _agent(store)
    agent.start()
    try:
        assert wait_for(lambda: agent._window.active or agent._windows_opened > 0)
        _drive(agent, 50)
        # The window may finish its snapshots (and stop tracing) in the last
        # task, before the agent thread polls it: wait for the poll too.
        assert wait_for(lambda: polled and not tracemalloc.is_tracing())
    finally:
        agent.stop()
        agent._writer.close()
    (proc,) = load_run(store[0]).processes
    assert any(e.startswith("window: RuntimeError: snapshot compare exploded") for e in proc.errors), proc.errors
    assert len(proc.tasks) == 50


def test_a_holder_search_that_raises_is_contained(
    store: tuple[str, int], monkeypatch: pytest.MonkeyPatch, wait_for: Callable[..., bool]
) -> None:
    """find_holders raising (it never should): the agent records it and goes on sampling and recording tasks."""

    def broken(*_: object, **__: object) -> None:
        raise MemoryError("holder index")

    monkeypatch.setattr(holder_sampler, "find_holders", broken)
    monkeypatch.setattr(_runtime, "MIN_HOLDER_GROWTH", 0)
    agent = _agent(store)
    agent._window.warmup_tasks, agent._window.window_tasks = 1, 2
    agent.start()
    try:
        assert wait_for(lambda: agent._window.active)
        _drive(agent, 10)
        assert wait_for(lambda: agent._holder_searches > 0)
        _drive(agent, 10)
    finally:
        agent.stop()
        agent._writer.close()
    (proc,) = load_run(store[0]).processes
    assert any(e.startswith("holders: MemoryError: holder index") for e in proc.errors), proc.errors
    assert len(proc.tasks) == 20
    assert [w.status for w in proc.windows] == ["done"]
