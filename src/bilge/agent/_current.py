"""The agent of this process, if any: one slot both the scheduler and the Celery hooks read. Stdlib-only.

Kept apart so that ``celery_hooks`` can find the agent without importing
the scheduler (which imports ``celery_hooks`` to connect them).

The slot is emptied in a forked child by an at-fork hook registered when
this module is imported, so before the scheduler's own (after-fork hooks
run in the order they were registered): the scheduler's hook then puts the
child's agent, and every read in between sees none. A read is one global
load: the task hooks read it twice a task, and ``os.getpid()`` (a system
call) there cost ~0.2 % of a 1 ms task's CPU.
"""

from __future__ import annotations

import os
from typing import Any

_agent: Any = None
_inherited: Any = None


def get() -> Any:
    """The agent running in this process (None in a child forked without one)."""
    return _agent


def put(agent: Any) -> None:
    """Make ``agent`` this process's agent (None: no agent)."""
    global _agent, _inherited
    _agent, _inherited = agent, None


def inherited() -> Any:
    """The agent a forked child inherited from its parent (for the fork hooks only)."""
    return _inherited


def _forked() -> None:
    global _agent, _inherited
    _agent, _inherited = None, _agent


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
