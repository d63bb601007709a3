"""The recycling policy, size parsing, cgroup limits and the billiard sentinel, without a worker."""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path

import pytest

from bilge.agent.recycle import RecyclePolicy, cgroup_memory_limit, parse_size, request_child_exit

MIB = 1 << 20
ON = RecyclePolicy(enabled=True, soft_limit=300 * MIB, horizon=600.0, min_tasks=100)


def test_growing_child_over_the_soft_limit_is_recycled() -> None:
    reason = ON.decide(400 * MIB, True, 0.0, 500, None)
    assert reason is not None and reason.startswith("soft-limit: RSS 400 MiB >= 300 MiB")


def test_no_recycle_without_growth_below_min_tasks_or_when_disabled() -> None:
    assert ON.decide(900 * MIB, False, 1e6, 500, 1000 * MIB) is None  # big but flat: Celery's storm case
    assert ON.decide(900 * MIB, True, 1e6, 99, 1000 * MIB) is None
    assert RecyclePolicy().decide(900 * MIB, True, 1e6, 5000, 1000 * MIB) is None
    assert ON.decide(None, True, 1e6, 500, 1000 * MIB) is None


def test_forecast_recycles_a_fast_grower_under_the_soft_limit() -> None:
    """200 MiB left at 512 KiB/s is 400 s away, inside the 600 s horizon; at 1 KiB/s it is days away."""
    reason = ON.decide(100 * MIB, True, 512 * 1024, 500, 300 * MIB)
    assert reason is not None and reason.startswith("forecast: 300 MiB limit reached in 400 s")
    assert ON.decide(100 * MIB, True, 1024, 500, 300 * MIB) is None


def test_sizes() -> None:
    assert parse_size("512MiB") == 512 * MIB
    assert parse_size("2G") == 2 << 30
    assert parse_size("1.5 GiB") == int(1.5 * (1 << 30))
    assert parse_size("800000") == 800000
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_policy_from_environment_keeps_defaults_on_bad_values() -> None:
    policy = RecyclePolicy.from_environment({"BILGE_RECYCLE": "1", "BILGE_RECYCLE_SOFT_LIMIT": "64M",
                                             "BILGE_RECYCLE_HORIZON": "soon", "BILGE_RECYCLE_MIN_INTERVAL": "5"})
    assert (policy.enabled, policy.soft_limit, policy.horizon, policy.min_interval) == (True, 64 * MIB, 3600.0, 5.0)
    assert not RecyclePolicy.from_environment({}).enabled


def test_cgroup_v2_and_v1_limits(tmp_path: Path) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/worker.slice\n")
    (tmp_path / "sys/fs/cgroup/worker.slice").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/worker.slice/memory.max").write_text("1073741824\n")
    assert cgroup_memory_limit(str(tmp_path)) == 1 << 30
    (tmp_path / "sys/fs/cgroup/worker.slice/memory.max").write_text("max\n")
    assert cgroup_memory_limit(str(tmp_path)) is None
    (tmp_path / "proc/self/cgroup").write_text("4:memory:/docker/abc\n")
    (tmp_path / "sys/fs/cgroup/memory/docker/abc").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes").write_text("536870912\n")
    assert cgroup_memory_limit(str(tmp_path)) == 512 * MIB
    assert cgroup_memory_limit(str(tmp_path / "nowhere")) is None


def test_request_child_exit_sets_the_sentinel_or_says_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = threading.Event()
    worker = types.SimpleNamespace(_shutdown=sentinel)
    fake = types.ModuleType("billiard.process")
    fake.current_process = lambda: types.SimpleNamespace(_target=worker)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "billiard.process", fake)
    assert request_child_exit() is None and sentinel.is_set()
    worker._shutdown = None
    assert "worker_pool_restarts" in (request_child_exit() or "")
    monkeypatch.delitem(sys.modules, "billiard.process")
    assert request_child_exit() == "not a billiard pool child"
