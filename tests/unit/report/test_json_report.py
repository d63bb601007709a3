"""Tests for bilge.report.json_report: the JSON contract of the report."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from bilge import __version__
from bilge.model import (
    LEAK,
    NO_LEAK,
    STAGE_ALLOCATION_WINDOW,
    STAGE_CENSUS,
    AgentCost,
    BudgetState,
    Diagnosis,
    Finding,
    ProcessDiagnosis,
    RunInfo,
    StageCost,
    StageRun,
)
from bilge.report.json_report import JsonReporter

RUN = RunInfo(id=3, started=1000.0, ended=1600.0, command="celery -A shop worker", exit_code=0, hostname="box")

FINDING = Finding(task="shop.search", type="shop.Order", kind="python-objects", bytes_per_call=4096.04,
                  count_per_call=1.0, hint="Each call of shop.search leaves ~1 shop.Order objects alive.",
                  pids=(101, 102), evidence=("shop.Order: +500 objects, +32000 bytes over the window",))


def leaking_child(pid: int) -> ProcessDiagnosis:
    """A leaking pool child as the analysis would describe it."""
    return ProcessDiagnosis(pid=pid, role="celery-child", verdict=LEAK, kind="python-objects", confidence=0.999999,
                            growth_bytes_per_task=1365.3333, growth_bytes_per_hour=4915200.04,
                            tasks_observed=1500, confirmed_after_tasks=210, confirmed_after_calls=70,
                            rss_start=60 * 2**20, rss_end=62 * 2**20, reason="memory grows steadily",
                            findings=(FINDING,), rss_series=((0.0, 1), (1.0, 2)), fds_start=12, fds_end=12)


def diagnosis() -> Diagnosis:
    """A leak found in two children, with a supervising main process that does not leak."""
    main = ProcessDiagnosis(pid=100, role="celery-main", verdict=NO_LEAK, kind=None, confidence=0.5,
                            growth_bytes_per_task=None, growth_bytes_per_hour=None, tasks_observed=0,
                            confirmed_after_tasks=None, confirmed_after_calls=None, rss_start=None, rss_end=None,
                            reason="flat")
    return Diagnosis(run=RUN, verdict=LEAK, kind="python-objects", confidence=0.999999, findings=(FINDING,),
                     processes=(main, leaking_child(101), leaking_child(102)), reason="2 of 3 processes leak")


def rendered(d: Diagnosis, indent: int | None = 2) -> tuple[str, dict]:  # type: ignore[type-arg]
    """The reporter's raw output and its parsed JSON."""
    out = io.StringIO()
    JsonReporter(out, indent=indent).render(d)
    return out.getvalue(), json.loads(out.getvalue())


def test_top_level_contract() -> None:
    """The report carries schema_version, verdict, kind, findings and processes, plus tool and run."""
    _, report = rendered(diagnosis())
    assert report["schema_version"] == 1
    assert report["verdict"] == "leak"
    assert report["kind"] == "python-objects"
    assert report["confidence"] == 0.999999
    assert report["reason"] == "2 of 3 processes leak"
    assert report["tool"] == {"name": "bilge", "version": __version__}
    assert report["run"] == {"id": 3, "command": "celery -A shop worker", "started": 1000.0, "ended": 1600.0,
                             "exit_code": 0, "hostname": "box"}
    assert len(report["findings"]) == 1
    assert len(report["processes"]) == 3


def test_finding_contract_with_unknown_fields_null() -> None:
    """A finding has task, type, holder, location, bytes_per_call and hint; unknown holder/location are null."""
    _, report = rendered(diagnosis())
    finding = report["findings"][0]
    assert finding == {
        "task": "shop.search", "type": "shop.Order", "holder": None, "location": None, "kind": "python-objects",
        "bytes_per_call": 4096.04, "count_per_call": 1.0,
        "hint": "Each call of shop.search leaves ~1 shop.Order objects alive.", "pids": [101, 102],
        "evidence": ["shop.Order: +500 objects, +32000 bytes over the window"], "values": [],
        "signature": None, "new": None, "seen_since": None,
    }


def test_process_contract() -> None:
    """Each process carries pid, role, verdict, kind, rates (rounded to 0.1), confidence, tasks and confirmation."""
    _, report = rendered(diagnosis())
    main, child, _ = report["processes"]
    expected_keys = {"pid", "role", "verdict", "kind", "growth_bytes_per_task", "growth_bytes_per_hour",
                     "confidence", "tasks_observed", "confirmed_after_tasks"}
    assert expected_keys <= set(child)
    assert {k: child[k] for k in expected_keys} == {
        "pid": 101, "role": "celery-child", "verdict": "leak", "kind": "python-objects",
        "growth_bytes_per_task": 1365.3, "growth_bytes_per_hour": 4915200.0, "confidence": 0.999999,
        "tasks_observed": 1500, "confirmed_after_tasks": 210,
    }
    assert child["confirmed_after_calls"] == 70
    assert (child["rss_start"], child["rss_end"], child["fds_start"], child["fds_end"]) == (
        60 * 2**20, 62 * 2**20, 12, 12)
    assert child["findings"][0]["task"] == "shop.search"
    assert {k: main[k] for k in expected_keys} == {
        "pid": 100, "role": "celery-main", "verdict": "no-leak", "kind": None, "growth_bytes_per_task": None,
        "growth_bytes_per_hour": None, "confidence": 0.5, "tasks_observed": 0, "confirmed_after_tasks": None,
    }


def test_series_stay_out_of_the_json() -> None:
    """The raw RSS series used by the terminal sparkline is not part of the JSON contract."""
    text, report = rendered(diagnosis())
    assert "rss_series" not in text
    assert "rss_series" not in report["processes"][1]


def test_indent_none_writes_one_line() -> None:
    """With indent=None the report is one line followed by a newline."""
    text, _ = rendered(diagnosis(), indent=None)
    assert text.endswith("\n")
    assert text.count("\n") == 1


def test_values_are_hidden_unless_asked_for() -> None:
    """Captured values reach the JSON only when the report keeps them; hide_values strips every copy."""
    from bilge.report import redaction

    shown = replace(FINDING, values=("'inv-1': Invoice(number=1)",))
    d = replace(diagnosis(), findings=(shown,), processes=(replace(leaking_child(101), findings=(shown,)),))
    assert redaction.has_values(d)
    _, report = rendered(d)
    assert report["findings"][0]["values"] == ["'inv-1': Invoice(number=1)"]
    hidden = redaction.hide_values(d)
    assert not redaction.has_values(hidden)
    text, report = rendered(hidden)
    assert report["findings"][0]["values"] == [] and "inv-1" not in text


def test_process_cost_by_stage_run_and_budget() -> None:
    """A process's cost lists each stage's totals, each budgeted run, the budget left and the summed totals."""
    cost = AgentCost(
        stages=(StageCost(STAGE_CENSUS, 0.2, 0.0, 4), StageCost(STAGE_ALLOCATION_WINDOW, 0.1, 0.08, 2)),
        runs=(StageRun(STAGE_ALLOCATION_WINDOW, "rss grows", 1100.0, 1102.0, 0.04, 0.03, "done"),
              StageRun(STAGE_ALLOCATION_WINDOW, "heap blocks grow", 1200.0, 1203.0, 0.06, 0.05, "out of budget")),
        budget=BudgetState(t=1203.5, cpu_left=2.9, cpu_limit=6.0, cpu_period=600.0, slowed_left=0.42,
                           slowed_limit=1.0, slowed_period=3600.0))
    d = replace(diagnosis(), processes=(replace(leaking_child(101), cost=cost),))
    _, report = rendered(d)
    assert report["processes"][0]["cost"] == {
        "stages": [{"stage": "census", "cpu_seconds": 0.2, "slowed_seconds": 0.0, "runs": 4},
                   {"stage": "allocation-window", "cpu_seconds": 0.1, "slowed_seconds": 0.08, "runs": 2}],
        "runs": [{"stage": "allocation-window", "reason": "rss grows", "started": 1100.0, "ended": 1102.0,
                  "cpu_seconds": 0.04, "slowed_seconds": 0.03, "outcome": "done"},
                 {"stage": "allocation-window", "reason": "heap blocks grow", "started": 1200.0, "ended": 1203.0,
                  "cpu_seconds": 0.06, "slowed_seconds": 0.05, "outcome": "out of budget"}],
        "budget": {"t": 1203.5, "cpu_left": 2.9, "cpu_limit": 6.0, "cpu_period": 600.0, "slowed_left": 0.42,
                   "slowed_limit": 1.0, "slowed_period": 3600.0},
        "cpu_seconds_total": 0.3,
        "slowed_seconds_total": 0.08,
    }


def test_process_without_cost_has_an_empty_cost() -> None:
    """A process whose store holds no cost (an older bilge) still has the cost key: empty lists, null budget, zeros."""
    _, report = rendered(diagnosis())
    assert report["processes"][0]["cost"] == {"stages": [], "runs": [], "budget": None, "cpu_seconds_total": 0.0,
                                              "slowed_seconds_total": 0.0}


def test_a_process_carries_its_snapshots() -> None:
    """Each stored snapshot: the agent's summary plus when, after how many tasks and how long it took."""
    from dataclasses import replace

    from bilge.model import Snapshot
    from bilge.report.json_report import process_dict

    base = process_dict(leaking_child(101))
    assert base["snapshots"] == []
    snap = process_dict(replace(leaking_child(101), snapshots=(Snapshot(5.0, 7, 0.3, {"objects": 9}),)))
    assert snap["snapshots"] == [{"objects": 9, "t": 5.0, "tasks_done": 7, "seconds": 0.3}]
