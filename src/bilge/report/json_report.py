"""The JSON report: the stable, versioned contract of ../shared/PRODUCT.md.

Top level: ``schema_version``, ``verdict``, ``kind``, ``findings`` (ranked),
``processes``. A finding carries ``task``, ``type``, ``holder``, ``location``,
``bytes_per_call``, ``hint``; fields bilge does not know yet are null.
A process carries ``cost``: bilge's own CPU and slowed task time per stage,
its budgeted runs and the budget left (additive to schema version 1).
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from bilge import __version__
from bilge.model import AgentCost, Diagnosis, Finding, ProcessDiagnosis


def finding_dict(f: Finding) -> dict[str, Any]:
    """One finding in the contract's shape."""
    return {
        "task": f.task,
        "type": f.type,
        "holder": f.holder,
        "location": f.location,
        "kind": f.kind,
        "bytes_per_call": f.bytes_per_call,
        "count_per_call": f.count_per_call,
        "hint": f.hint,
        "pids": list(f.pids),
        "evidence": list(f.evidence),
        # Empty unless captured (`bilge run --show-values`) and asked for.
        "values": list(f.values),
        "signature": f.signature,
        # null: no earlier run in this data dir was diagnosed to compare with.
        "new": f.new,
        "seen_since": f.seen_since,
    }


def process_dict(p: ProcessDiagnosis) -> dict[str, Any]:
    """One process in the contract's shape."""
    return {
        "pid": p.pid,
        "role": p.role,
        "verdict": p.verdict,
        "kind": p.kind,
        "confidence": p.confidence,
        "growth_bytes_per_task": _round(p.growth_bytes_per_task),
        "growth_bytes_per_hour": _round(p.growth_bytes_per_hour),
        "tasks_observed": p.tasks_observed,
        "tasks_excluded": p.tasks_excluded,
        "confirmed_after_tasks": p.confirmed_after_tasks,
        "confirmed_after_calls": p.confirmed_after_calls,
        "rss_start": p.rss_start,
        "rss_end": p.rss_end,
        "fds_start": p.fds_start,
        "fds_end": p.fds_end,
        "reason": p.reason,
        "findings": [finding_dict(f) for f in p.findings],
        "snapshots": [dict(s.summary, t=s.t, tasks_done=s.tasks_done, seconds=s.seconds) for s in p.snapshots],
        "allocation_sites": [
            {"file": s.file, "line": s.line, "bytes": s.size, "blocks": s.count, "owner": s.owner,
             "traceback": list(s.traceback), "task": s.task} for s in p.sites
        ],
        "cost": cost_dict(p.cost),
    }


def cost_dict(cost: AgentCost) -> dict[str, Any]:
    """bilge's own cost in one process: per stage, per budgeted run, the budget left (null if unknown)."""
    b = cost.budget
    return {
        "stages": [{"stage": c.stage, "cpu_seconds": c.cpu_seconds, "slowed_seconds": c.slowed_seconds,
                    "runs": c.runs} for c in cost.stages],
        "runs": [{"stage": r.stage, "reason": r.reason, "started": r.started, "ended": r.ended,
                  "cpu_seconds": r.cpu_seconds, "slowed_seconds": r.slowed_seconds, "outcome": r.outcome}
                 for r in cost.runs],
        "budget": None if b is None else {
            "t": b.t, "cpu_left": b.cpu_left, "cpu_limit": b.cpu_limit, "cpu_period": b.cpu_period,
            "slowed_left": b.slowed_left, "slowed_limit": b.slowed_limit, "slowed_period": b.slowed_period},
        # Rounded to the microsecond so that 0.1 + 0.2 reads as 0.3.
        "cpu_seconds_total": round(sum((c.cpu_seconds for c in cost.stages), 0.0), 6),
        "slowed_seconds_total": round(sum((c.slowed_seconds for c in cost.stages), 0.0), 6),
    }


def to_dict(d: Diagnosis) -> dict[str, Any]:
    """The whole report as plain JSON-able data."""
    return {
        "schema_version": d.schema_version,
        "tool": {"name": "bilge", "version": __version__},
        "run": {"id": d.run.id, "command": d.run.command, "started": d.run.started, "ended": d.run.ended,
                "exit_code": d.run.exit_code, "hostname": d.run.hostname},
        "verdict": d.verdict,
        "kind": d.kind,
        "confidence": d.confidence,
        "reason": d.reason,
        "findings": [finding_dict(f) for f in d.findings],
        "processes": [process_dict(p) for p in d.processes],
        "recycling": recycling_dict(d),
    }


def recycling_dict(d: Diagnosis) -> dict[str, Any] | None:
    """Recycles by bilge (with their forensic snapshots) and by Celery, and storm warnings; null if none."""
    r = d.recycling
    if r is None:
        return None
    return {
        "by_bilge": [{"pid": x.pid, "t": x.t, "reason": x.reason, "rss": x.rss,
                      "tasks_done": x.tasks_done, "status": x.status, "snapshot": json.loads(x.snapshot)}
                     for x in r.by_bilge],
        "by_celery": list(r.by_celery),
        "warnings": list(r.warnings),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class JsonReporter:
    """Writes the JSON report.

    Args:
        out: the text stream to write to.
        indent: JSON indentation (None for one line).
    """

    def __init__(self, out: TextIO, indent: int | None = 2) -> None:
        self.out = out
        self.indent = indent

    def render(self, diagnosis: Diagnosis) -> None:
        """Write the report followed by a newline."""
        json.dump(to_dict(diagnosis), self.out, indent=self.indent)
        self.out.write("\n")
