"""Tests for bilge.report.terminal: the rich terminal report, sparklines and byte formatting."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from rich.console import Console

from bilge.model import (
    INCONCLUSIVE,
    LEAK,
    STAGE_ALLOCATION_WINDOW,
    STAGE_CENSUS,
    STAGE_FD_SCAN,
    STAGE_FLUSH,
    STAGE_HOLDER_SEARCH,
    STAGE_WATCH,
    AgentCost,
    Diagnosis,
    Finding,
    ProcessDiagnosis,
    RunInfo,
    StageCost,
    StageRun,
)
from bilge.report.terminal import TerminalReporter, cost_line, human_bytes, sparkline

RUN = RunInfo(id=3, started=1000.0, ended=1600.0, command="celery -A shop worker", exit_code=0, hostname="box")


def render(d: Diagnosis, width: int = 120) -> str:
    """The report as plain text at ``width`` (120) columns."""
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    TerminalReporter(console).render(d)
    return console.export_text()


def leak() -> Diagnosis:
    """A leak in shop.search, growing shop.Order objects, in one child."""
    finding = Finding(task="shop.search", type="shop.Order", kind="python-objects", bytes_per_call=4096.0,
                      count_per_call=1.0, hint="Each call of shop.search leaves ~1 shop.Order objects alive.",
                      pids=(101,))
    child = ProcessDiagnosis(pid=101, role="celery-child", verdict=LEAK, kind="python-objects", confidence=0.9999,
                             growth_bytes_per_task=1536.0, growth_bytes_per_hour=5 * 2**20, tasks_observed=1500,
                             confirmed_after_tasks=210, confirmed_after_calls=70, rss_start=60 * 2**20,
                             rss_end=62 * 2**20, reason="memory grows steadily", findings=(finding,),
                             rss_series=tuple((float(i), 60 * 2**20 + 4096 * i) for i in range(100)))
    return Diagnosis(run=RUN, verdict=LEAK, kind="python-objects", confidence=0.9999, findings=(finding,),
                     processes=(child,), reason="1 of 1 processes leak")


def test_leak_report_names_verdict_task_type_and_numbers() -> None:
    """The leak report shows the verdict, kind, confidence, task, type, hint and the child's rates."""
    text = render(leak())
    assert "bilge report — run 3" in text
    assert "Verdict: LEAK  kind: python-objects  confidence: 100.0%" in text
    assert "Leaking task: shop.search" in text
    assert "Growing type: shop.Order" in text
    assert "Each call of shop.search leaves ~1 shop.Order objects alive." in text
    assert "Findings (most important first)" in text
    assert "4.0 KiB" in text
    assert ("● 101 celery-child LEAK  1500 tasks  RSS 60.0 MiB → 62.0 MiB  +1.5 KiB/task  +5.0 MiB/h  "
            "confirmed after 210 tasks (70") in text
    assert "calls)" in text  # wrapped: the process line is wider than 120 columns
    assert "▁" in text and "█" in text  # the RSS sparkline


def test_inconclusive_report_gives_the_reason_and_no_confidence() -> None:
    """An inconclusive run shows the reason instead of findings, and no confidence figure."""
    child = ProcessDiagnosis(pid=7, role="main", verdict=INCONCLUSIVE, kind=None, confidence=0.2,
                             growth_bytes_per_task=None, growth_bytes_per_hour=12.0, tasks_observed=0,
                             confirmed_after_tasks=None, confirmed_after_calls=None, rss_start=4096, rss_end=8192,
                             reason="only 12 samples observed; at least 600 are needed")
    d = Diagnosis(run=RUN, verdict=INCONCLUSIVE, kind=None, confidence=0.0, findings=(), processes=(child,),
                  reason="pid 7: only 12 samples observed; at least 600 are needed")
    text = render(d)
    assert "Verdict: INCONCLUSIVE" in text
    assert "confidence" not in text
    assert "pid 7: only 12 samples observed; at least 600 are needed" in text
    assert "Findings" not in text
    assert "● 7 main INCONCLUSIVE  0 tasks  RSS 4.0 KiB → 8.0 KiB" in text
    assert "/h" not in text  # rates are shown only for a leak


@pytest.mark.parametrize(("values", "expected"), [
    ([], ""),
    ([5.0], "▁"),
    ([3.0, 3.0, 3.0], "▁▁▁"),
    ([0, 1, 2, 3, 4, 5, 6, 7], "▁▂▃▄▅▆▇█"),
    ([7, 0, 7], "█▁█"),
    ([0, 10], "▁█"),
    ([0, 5, 10], "▁▅█"),
])
def test_sparkline_exact(values: list[float], expected: str) -> None:
    """Values map linearly (rounded) onto the eight bar heights; flat series are the lowest bar."""
    assert sparkline(values) == expected


def test_sparkline_resamples_to_width() -> None:
    """A series longer than width is resampled to width points (0, 10, ..., 90), then scaled over their range."""
    line = sparkline(list(range(100)), width=10)
    assert line == "▁▂▃▃▄▅▆▆▇█"


@pytest.mark.parametrize(("value", "expected"), [
    (None, "—"),
    (0, "0 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (1536, "1.5 KiB"),
    (-2048, "-2.0 KiB"),
    (5 * 2**20, "5.0 MiB"),
    (1.25 * 2**30, "1.2 GiB"),
    (3 * 2**40, "3072.0 GiB"),
    (-0.4, "-0 B"),
])
def test_human_bytes_exact(value: float | None, expected: str) -> None:
    """Bytes below 1 KiB are whole; larger sizes get one decimal in KiB, MiB or GiB (never beyond)."""
    assert human_bytes(value) == expected


COST = AgentCost(
    stages=(StageCost(STAGE_WATCH, 0.0, 0.0, 0), StageCost(STAGE_CENSUS, 0.3, 0.0, 5),
            StageCost(STAGE_FLUSH, 0.002, 0.0, 40), StageCost(STAGE_ALLOCATION_WINDOW, 0.1, 0.08, 2),
            StageCost(STAGE_HOLDER_SEARCH, 0.02, 0.0, 1)),
    runs=(StageRun(STAGE_ALLOCATION_WINDOW, "opened: rss grows", 10.0, 10.1, 0.01, 0.0, "done"),
          StageRun(STAGE_ALLOCATION_WINDOW, "episode: one shop.a task measured (2 traced), 6 frames", 10.0, 12.0,
                   0.04, 0.03, "done"),
          StageRun(STAGE_HOLDER_SEARCH, "shop.Order grows", 13.0, 13.1, 0.02, 0.0, "found"),
          StageRun(STAGE_ALLOCATION_WINDOW, "episode: one shop.a task measured (2 traced), 6 frames", 20.0, 22.0,
                   0.05, 0.05, "done")))


def test_cost_line_lists_costly_stages_first_slowed_time_and_runs() -> None:
    """Stages that cost nothing are left out, the rest costliest first (tiny ones '<0.01'); why explain opened;
    budgeted runs counted by kind."""
    assert cost_line(COST) == (
        "bilge cost: 0.42 s CPU (census 0.30, allocation-window 0.10, holder-search 0.02, flush <0.01), "
        "tasks slowed 0.08 s; explain opened: rss grows; 2 episodes, 1 holder-search")
    again = replace(COST, runs=COST.runs + (StageRun(STAGE_HOLDER_SEARCH, "again", 30.0, 30.1, 0.02, 0.0, "found"),))
    assert cost_line(again).endswith("; 2 episodes, 2 holder-searches")


def test_cost_line_without_slowed_time_or_runs() -> None:
    """Without slowed tasks or budgeted runs the line stops after the CPU breakdown."""
    cost = AgentCost(stages=(StageCost(STAGE_WATCH, 1.25, 0.0, 600), StageCost(STAGE_FD_SCAN, 0.0, 0.0, 0)))
    assert cost_line(cost) == "bilge cost: 1.25 s CPU (watch 1.25)"


def test_cost_line_is_empty_without_cost() -> None:
    """A process from a store without cost (older bilge), or whose stages all cost nothing, gets no line."""
    assert cost_line(AgentCost()) == ""
    assert cost_line(AgentCost(stages=(StageCost(STAGE_WATCH, 0.0, 0.0, 0),))) == ""


def test_process_shows_its_cost_wrapped_to_80_columns() -> None:
    """The cost line follows the process's sparkline, indented, wrapped by rich within 80 columns."""
    d = leak()
    text = render(replace(d, processes=(replace(d.processes[0], cost=COST),)), width=80)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  bilge cost:"))
    assert "▁" in lines[start - 1]  # right after the sparkline
    assert all(len(line) <= 80 for line in lines)
    assert " ".join(line.strip() for line in lines[start:]) == cost_line(COST)


def test_process_without_cost_has_no_cost_line() -> None:
    """The leak report of a process with no stored cost says nothing about bilge's cost."""
    assert "bilge cost" not in render(leak())


def test_finding_paths_are_never_broken_at_80_columns() -> None:
    """The holder and the location each have a line of their own: at 80 columns both read whole, as the demo's
    do (a table column once folded them mid-name: ``/tmp/x/src/bi`` / ``lge/demo/app.py:6`` / ``8``)."""
    holder = "bilge.demo.app.OrderEnricher._recent_orders_by_customer[...]"
    finding = replace(leak().findings[0], type="dict", holder=holder, location="/venv/lib/python3.11/site-packages/"
                      "bilge/demo/app.py:68", values=("'order-17'",))
    text = render(replace(leak(), findings=(finding,)), width=80)
    assert " 1. dict  4.0 KiB/call  1 object/call" in text
    assert "held by      " + holder in text
    assert "allocated at bilge/demo/app.py:68" in text
    assert "values       'order-17'" in text
    two = (finding, replace(finding, task="shop.other", type="list", holder=None, location=None, values=()))
    text = render(replace(leak(), findings=two), width=80)
    assert " 1. dict  task shop.search  4.0 KiB/call" in text and " 2. list  task shop.other" in text


SNAPSHOT = {"t": 1000.0, "tasks_done": 900, "objects": 71243, "seconds": 0.17,
            "compared_with": "the previous snapshot (645 tasks and 1 s earlier)",
            "growing": [{"type": "list", "count": 3271, "change": 259}, {"type": "dict", "count": 7504, "change": 217}],
            "holders": [{"type": "dict", "path": "apps.billing._STATEMENT_ARCHIVE[...]", "root_kind": "module-global",
                         "container": "dict", "length": 322, "targets": 809}],
            "holders_complete": True, "holders_note": ""}


def test_a_process_shows_its_latest_snapshot_what_grew_and_who_holds_it() -> None:
    """Under the process: how many snapshots, the latest one's growth since the one before, its holders."""
    from bilge.model import Snapshot

    d = leak()
    older = Snapshot(900.0, 200, 0.1, {"objects": 1, "holders": []})
    text = render(replace(d, processes=(replace(d.processes[0], snapshots=(older, Snapshot(1000.0, 900, 0.17,
                                                                                           SNAPSHOT))),)))
    assert "2 snapshots, latest at" in text and "after 900 tasks: 71,243 objects, taken in 0.17 s" in text
    assert "grew since the previous snapshot (645 tasks and 1 s earlier): list +259 (3,271), dict +217" in text
    assert "held: dict ← apps.billing._STATEMENT_ARCHIVE[...] <dict of 322> (module-global)" in text


def test_a_first_snapshot_lists_the_most_numerous_types() -> None:
    """With nothing to compare with: the most numerous types, and why no holders were searched."""
    from bilge.report.terminal import snapshot_lines

    first = {"t": 1.0, "tasks_done": 0, "objects": 10, "seconds": 0.0, "compared_with": None,
             "top": [{"type": "function", "count": 6, "change": None}], "holders": [],
             "holders_note": "the first snapshot of a young process: no counts to compare with yet"}
    text = "\n".join(line.plain for line in snapshot_lines(first))
    assert "most objects: function 6" in text and "holders: the first snapshot" in text
