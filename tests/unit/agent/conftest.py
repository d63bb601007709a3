"""Fakes shared by the agent's tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bilge.agent import Agent


class SuspectAfter:
    """A suspicion that fires once the agent has run ``tasks`` tasks, its level rising ``per_task`` per task."""

    def __init__(self, agent: Agent, tasks: int, per_task: float = 0.0) -> None:
        self.agent, self.tasks, self.per_task = agent, tasks, per_task

    def add(self, value: float | None, at: float | None = None) -> None:
        pass

    def gap(self) -> None:
        pass

    def suspect(self) -> bool:
        return self.agent.tasks_done >= self.tasks

    def level(self) -> float:
        return self.agent.tasks_done * self.per_task

    def growth_per_reading(self) -> float:
        return self.per_task


@pytest.fixture
def suspect_after() -> type[SuspectAfter]:
    """The fake suspicion class: ``suspect_after(agent, tasks, per_task)``."""
    return SuspectAfter


def run_tasks(agent: Agent, task: Callable[[int], object], tasks: int, name: str = "shop.render_invoice",
              every: int = 20, until: Callable[[], bool] = lambda: False) -> int:
    """Run ``tasks`` tasks through the agent's hooks (or until ``until()``), ticking it every ``every``.

    Returns how many tasks ran. The agent runs no thread: ``tick()`` is its loop.
    """
    for i in range(tasks):
        agent.task_started(i, name)
        task(i)
        agent.task_finished(i)
        if i % every == every - 1:
            agent.tick()
            if until():
                return i + 1
    return tasks


@pytest.fixture
def drive() -> Callable[..., int]:
    """``run_tasks``: tasks through an agent's hooks, ticking it as its thread would."""
    return run_tasks
