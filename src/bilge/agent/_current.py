"""The agent of this process, if any: one slot both the scheduler and the Celery hooks read. Stdlib-only.

Kept apart so that ``celery_hooks`` can find the agent without importing
the scheduler (which imports ``celery_hooks`` to connect them).
"""

from __future__ import annotations

import os
from typing import Any

_agent: Any = None
_pid = 0


def get() -> Any:
    """The agent running in this process (None in a child forked without one)."""
    return _agent if _agent is not None and _pid == os.getpid() else None


def put(agent: Any) -> None:
    """Make ``agent`` this process's agent (None: no agent)."""
    global _agent, _pid
    _agent, _pid = agent, os.getpid()


def inherited() -> Any:
    """The agent a forked child inherited from its parent (for the fork hooks only)."""
    return _agent
