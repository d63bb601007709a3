"""The agent's explain stage failing halfway never reaches the host: errors are recorded, tracing is stopped."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bilge.agent import Agent, AgentConfig
from bilge.model import STAGE_HOLDER_SEARCH
from bilge.samplers import holders as holder_sampler
from bilge.samplers.sampled_allocations import SampledAllocations
from bilge.store.memory import MemoryStore


def _agent(suspect_after: Callable[..., Any]) -> tuple[Agent, MemoryStore]:
    """An agent on an in-memory store whose suspicion fires at once, memory rising with every task."""
    store = MemoryStore()
    agent = Agent(AgentConfig(data_dir="unused", run_id=1, census_min_interval=0.0, census_budget=1.0), store=store)
    agent.register()
    agent.watch.rss_suspicion = suspect_after(agent, 0, 1000.0)
    agent.watch.heap_suspicion = suspect_after(agent, 0, 1000.0)
    return agent, store


def _leaky(i: int) -> None:
    _KEPT.append(Order(i))


class Order:
    def __init__(self, number: int) -> None:
        self.number = number


_KEPT: list[Order] = []


@pytest.fixture(autouse=True)
def _no_tracing_left() -> Iterator[None]:
    yield
    _KEPT.clear()
    if tracemalloc.is_tracing():
        tracemalloc.stop()
        pytest.fail("tracemalloc was left running")


def test_a_window_that_fails_while_polled_is_stopped_and_recorded(
    monkeypatch: pytest.MonkeyPatch, suspect_after: Callable[..., Any], drive: Callable[..., int]
) -> None:
    """The window's poll raising: tracing stops, the error is stored, tasks keep being recorded."""

    def broken_poll(self: SampledAllocations) -> None:
        raise RuntimeError("snapshot compare exploded")

    monkeypatch.setattr(SampledAllocations, "poll", broken_poll)
    agent, store = _agent(suspect_after)
    ran = drive(agent, _leaky, 3000, "shop.task", 10, until=lambda: agent.explain.windows_opened > 0)
    drive(agent, _leaky, 50, "shop.task", 10)
    agent.stop()
    assert not tracemalloc.is_tracing()
    assert any(e[1:] == ("window", "RuntimeError: snapshot compare exploded") for e in store.errors), store.errors
    assert len(store.tasks) == ran + 50


def test_a_holder_search_that_raises_is_contained(
    monkeypatch: pytest.MonkeyPatch, suspect_after: Callable[..., Any], drive: Callable[..., int]
) -> None:
    """find_holders raising (it never should): the agent records it and goes on sampling and recording tasks."""

    def broken(*_: object, **__: object) -> None:
        raise MemoryError("holder index")

    monkeypatch.setattr(holder_sampler, "find_holders", broken)
    agent, store = _agent(suspect_after)
    ran = drive(agent, _leaky, 5000, "shop.task", 10, until=lambda: agent.explain.holder_searches > 0)
    drive(agent, _leaky, 20, "shop.task", 10)
    agent.stop()
    assert any(e[1:] == ("window", "MemoryError: holder index") for e in store.errors), store.errors
    assert len(store.tasks) == ran + 20
    assert [w.status for w in store.windows] == ["done"]
    runs = [r for r in store.stage_runs if r.stage == STAGE_HOLDER_SEARCH]
    assert runs and runs[0].outcome == "failed: MemoryError"
