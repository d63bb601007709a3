"""The run's wall clock: continuous from its anchor whatever the system's wall clock does."""

from __future__ import annotations

import time

import pytest

from bilge.config import CLOCK_ANCHOR, AgentConfig
from bilge.samplers import wallclock


def test_time_counts_from_the_anchor_by_the_monotonic_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = wallclock.here()
    try:
        wallclock.anchor((1_000_000.0, 50.0))
        monkeypatch.setattr(time, "monotonic", lambda: 80.5)
        monkeypatch.setattr(time, "time", lambda: 1.0)  # the system's wall clock stepped back to 1970
        assert wallclock.now() == 1_000_030.5
        wallclock.anchor(None)  # None keeps the anchor
        assert wallclock.here() == (1_000_000.0, 50.0)
    finally:
        wallclock.anchor(saved)


def test_the_anchor_travels_to_every_process_of_a_run() -> None:
    config = AgentConfig.for_run("/data", 3, {}, clock_anchor=(1796612000.25, 1234.5))
    env = config.to_environment()
    assert env[CLOCK_ANCHOR] == "1796612000.25:1234.5"
    read = AgentConfig.from_environment(env)
    assert read is not None and read.clock_anchor == (1796612000.25, 1234.5) and read == config
    stale = AgentConfig.for_run("/data", 4, env)  # an outer run's anchor is not inherited
    assert stale.clock_anchor is None and CLOCK_ANCHOR not in stale.to_environment(env)
    for bad in ("", "nonsense", "1:nan", "1"):
        parsed = AgentConfig.from_environment({**env, CLOCK_ANCHOR: bad})
        assert parsed is not None and parsed.clock_anchor is None
