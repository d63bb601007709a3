"""Tests for bilge.top: rows from agents' status answers, rates over the readings kept, sorting, task growth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bilge import live, top
from bilge.errors import AgentUnreachableError
from bilge.store.writer import StoreWriter

DATA = "/data"


def status(pid: int, rss: int, tasks: int, role: str = "celery-child", **extra: Any) -> dict[str, Any]:
    answer = {"pid": pid, "role": role, "data_dir": DATA, "rss": rss, "uss": rss // 2, "fds": 9, "tasks_done": tasks,
              "suspect": {"rss": False, "heap": False}, "explain": {"windows_opened": 0}, "growing_types": [],
              "holders": [], "sites": [], "recycle": None}
    answer.update(extra)
    return answer


class Agents:
    """Fake agents: pid -> the status each answers next (or an error)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: dict[int, Any] = {}
        monkeypatch.setattr(live, "discover", lambda: [live.LiveAgent(pid, "/x/%d.sock" % pid)
                                                       for pid in sorted(self.answers)])
        monkeypatch.setattr(live, "request", self.request)
        monkeypatch.setattr(top, "_command", lambda pid: "celery worker")

    def request(self, agent: live.LiveAgent, op: str, args: Any = None, timeout: float = 0) -> dict[str, Any]:
        answer = self.answers[agent.pid]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


def test_rates_need_enough_span_then_come_from_the_first_and_latest_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per task once MIN_SPAN_TASKS tasks ran, per hour once MIN_SPAN_SECONDS passed, tasks/s from the start."""
    agents = Agents(monkeypatch)
    now = [0.0]
    watcher = top.Watcher(bare=False, clock=lambda: now[0])
    agents.answers[7] = status(7, 100_000_000, 0)
    (first,) = watcher.poll()
    assert (first.growth_per_task, first.growth_per_hour, first.tasks_per_second) == (None, None, None)
    now[0] = 5.0
    agents.answers[7] = status(7, 100_000_000 + 40 * 1000, 40)
    (early,) = watcher.poll()
    assert early.tasks_per_second == 8.0 and early.growth_per_task is None and early.growth_per_hour is None
    now[0] = 20.0
    agents.answers[7] = status(7, 100_000_000 + 200 * 1000, 200)
    (later,) = watcher.poll()
    assert later.growth_per_task == 1000.0 and later.growth_per_hour == pytest.approx(200_000 / 20 * 3600)
    assert later.rss_history == (100_000_000, 100_040_000, 100_200_000) and later.uss == 50_100_000


@pytest.mark.parametrize("extra, tasks, role, verdict", [
    ({}, 10, "celery-child", top.WARMING_UP),
    ({}, 10_000, "celery-child", top.STEADY),
    ({}, 0, "celery-main", top.STEADY),
    ({"suspect": {"rss": True, "heap": False}}, 10, "celery-child", top.GROWING),
    ({"explain": {"windows_opened": 1}}, 10_000, "celery-child", top.GROWING),
])
def test_verdict_so_far_is_the_agents_live_judgement(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any],
                                                     tasks: int, role: str, verdict: str) -> None:
    agents = Agents(monkeypatch)
    agents.answers[3] = status(3, 1, tasks, role, **extra)
    assert top.Watcher(bare=False).poll()[0].verdict == verdict


def test_findings_data_dir_filter_and_an_agent_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Holders and sites become findings; --data-dir keeps only its agents; a silent agent is a row saying so."""
    agents = Agents(monkeypatch)
    agents.answers[1] = status(1, 1, 1, holders=[{"type": "shop.Order", "path": "shop.CACHE[...]"}],
                               sites=[{"file": "shop.py", "line": 9, "bytes": 100}], growing_types=["shop.Order"])
    agents.answers[2] = status(2, 1, 1, data_dir="/elsewhere")
    agents.answers[4] = AgentUnreachableError("process 4's agent did not answer within 2 s")
    rows = {r.pid: r for r in top.Watcher(bare=False).poll()}
    assert rows[1].findings == ("held: shop.Order ← shop.CACHE[...]", "allocated: shop.py:9")
    assert rows[1].growing_type == "shop.Order"
    assert rows[4].verdict == top.NOT_ANSWERING and "did not answer" in rows[4].findings[0]
    assert [r.pid for r in top.Watcher(DATA, bare=False).poll()] == [1]


def test_ordered_by_each_sort_ties_by_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    agents = Agents(monkeypatch)
    watcher = top.Watcher(bare=False)
    agents.answers.update({5: status(5, 300, 0), 6: status(6, 900, 0), 2: status(2, 900, 0)})
    rows = watcher.poll()
    assert [r.pid for r in top.ordered(rows, "rss")] == [2, 6, 5]
    assert [r.pid for r in top.ordered(rows, "pid")] == [2, 5, 6]
    assert [r.pid for r in top.ordered(rows, "growth")] == [2, 5, 6]  # no rates yet: all tie


@pytest.mark.parametrize("cmdline, worker", [
    (["/venv/bin/python", "-m", "celery", "-A", "proj", "worker", "-c", "2"], True),
    (["/venv/bin/celery", "-A", "proj", "worker"], True),
    (["/venv/bin/python", "/venv/bin/bilge", "run", "--", "celery", "-A", "proj", "worker"], False),
    (["/venv/bin/celery", "-A", "proj", "beat"], False),
])
def test_what_counts_as_a_celery_worker_process(cmdline: list[str], worker: bool) -> None:
    assert top._is_celery_worker(cmdline) is worker  # noqa: SLF001 - the rule itself is under test


def test_task_growth_reads_the_latest_process_with_the_pid(store: tuple[str, int], tmp_path: Path) -> None:
    """Per task name: calls and mean change per call, most heap blocks first; a missing store gives []."""
    data_dir, run_id = store
    writer = StoreWriter(data_dir, run_id)
    try:
        process_id = writer.register_process(42, 1, None, "celery-child", "celery worker")
        rows = [(i, "shop.leaky" if i % 2 else "shop.fine", 0.0, 1.0, 1000, 1000 + (4096 if i % 2 else 0), 10,
                 10 + (30 if i % 2 else 1), 0, 0, None, None) for i in range(1, 11)]
        writer.flush(process_id, [], rows, [], None, [])
    finally:
        writer.close()
    growth = top.task_growth(data_dir, 42)
    assert [(g.name, g.calls, g.rss_per_call, g.blocks_per_call) for g in growth] == [
        ("shop.leaky", 5, 4096.0, 30.0), ("shop.fine", 5, 0.0, 1.0)]
    assert top.task_growth(str(tmp_path / "nothing"), 42) == []
    assert top.task_growth(data_dir, 43) == []
