"""Fakes shared by the agent's tests."""

from __future__ import annotations

import pytest

from bilge.agent import Agent


class SuspectAfter:
    """A suspicion that fires once the agent has run ``tasks`` tasks, its level rising ``per_task`` per task."""

    def __init__(self, agent: Agent, tasks: int, per_task: float = 0.0) -> None:
        self.agent, self.tasks, self.per_task = agent, tasks, per_task

    def add(self, value: float | None) -> None:
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
