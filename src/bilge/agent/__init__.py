"""The in-process agent: samples the process it lives in, always and cheaply.

Stdlib-only (a test proves it): it is imported inside users' workers by the
``bilge run`` bootstrap. Public entry points:

- ``start_from_environment()``: what the bootstrap calls; a no-op unless
  ``BILGE_DATA_DIR`` and ``BILGE_RUN_ID`` are set.
- ``current()``: the running agent of this process, if any.
"""

from bilge.agent._runtime import Agent, AgentConfig, current, start, start_from_environment

__all__ = ["Agent", "AgentConfig", "current", "start", "start_from_environment"]
