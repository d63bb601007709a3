"""Answer fleet queries from inside a worker: the ``bilge_status`` remote-control command. Stdlib-only.

``celery -A proj bilge status`` broadcasts ``bilge_status`` through the
broker the user already runs; every worker's main process answers from its
data dir: each live process of the worker with its role, current RSS/USS,
tasks run and the agent's own live judgement (``growing`` when its trend
test fires, ``steady`` after warm-up, ``warming-up`` before), plus the
recycles so far, and the findings (with their leak signatures) of the
latest diagnosis the ``bilge run`` supervisor recorded. Read-only, a few
indexed queries, no analysis (the main process of a worker must stay
light).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

from bilge.samplers.suspicion import MIN_TASK_READINGS
from bilge.store import schema

COMMAND = "bilge_status"
# Findings per answer: a remote-control reply travels through the broker.
MAX_FINDINGS = 20


def local_status(data_dir: str, run_id: int) -> dict[str, Any]:
    """This worker's live processes, as the store has them now."""
    conn = sqlite3.connect("file:%s?mode=ro" % os.path.join(data_dir, schema.DB_FILENAME), uri=True, timeout=2.0)
    try:
        rows = conn.execute("SELECT id, pid, role, started, suspect FROM processes WHERE run_id = ? AND ended IS NULL "
                            "ORDER BY id", (run_id,)).fetchall()
        processes = []
        for process_id, pid, role, started, suspect in rows:
            last = conn.execute("SELECT rss, fds FROM samples WHERE process_id = ? ORDER BY t DESC LIMIT 1",
                                (process_id,)).fetchone()
            uss = conn.execute("SELECT uss FROM samples WHERE process_id = ? AND uss IS NOT NULL ORDER BY t DESC "
                               "LIMIT 1", (process_id,)).fetchone()
            (tasks,) = conn.execute("SELECT COUNT(*) FROM tasks WHERE process_id = ?", (process_id,)).fetchone()
            verdict = "growing" if suspect else ("steady" if tasks >= MIN_TASK_READINGS or role == "celery-main"
                                                 else "warming-up")
            processes.append({"pid": pid, "role": role, "started": started, "rss": last[0] if last else None,
                              "uss": uss[0] if uss else None, "fds": last[1] if last else None, "tasks": tasks,
                              "verdict": verdict})
        (recycles,) = conn.execute("SELECT COUNT(*) FROM recycles r JOIN processes p ON p.id = r.process_id "
                                   "WHERE p.run_id = ? AND r.status = 'requested'", (run_id,)).fetchone()
        (celery_recycles,) = conn.execute("SELECT COUNT(*) FROM processes WHERE run_id = ? AND exit_code = 155",
                                          (run_id,)).fetchone()
        findings = _findings(conn, run_id)
    finally:
        conn.close()
    return {"bilge": 1, "run": run_id, "data_dir": data_dir, "processes": processes,
            "recycles": {"bilge": recycles, "celery": celery_recycles}, "findings": findings}


def _findings(conn: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    """The findings of the run's latest recorded diagnosis, each with when this data dir first saw it."""
    try:
        rows = conn.execute(
            "SELECT f.signature, f.task, f.type, f.kind, f.holder, f.location, f.bytes_per_call, f.processes, "
            "(SELECT MIN(g.first_seen) FROM findings g WHERE g.signature = f.signature) "
            "FROM findings f JOIN runs r ON r.id = f.run_id "
            "WHERE f.run_id = ? AND f.last_seen = r.diagnosed ORDER BY f.bytes_per_call DESC LIMIT ?",
            (run_id, MAX_FINDINGS)).fetchall()
    except sqlite3.OperationalError:
        return []  # a store older than the findings table: nothing recorded
    keys = ("signature", "task", "type", "kind", "holder", "location", "bytes_per_call", "processes", "first_seen")
    return [dict(zip(keys, row)) for row in rows]


def register(data_dir: str, run_id: int) -> bool:
    """Register ``bilge_status`` with this worker's remote-control panel (main process, Celery loaded)."""
    control = sys.modules.get("celery.worker.control")
    if control is None:
        import importlib

        control = importlib.import_module("celery.worker.control")
    if COMMAND in control.Panel.data:
        return True

    def bilge_status(state: Any, **_: Any) -> dict[str, Any]:
        """bilge: this worker's processes with memory, tasks and verdict."""
        try:
            return local_status(data_dir, run_id)
        except Exception as exc:  # noqa: BLE001 - the worker answers, whatever happened to the store
            return {"bilge": 1, "error": "%s: %s" % (type(exc).__name__, exc)}

    control.inspect_command(name=COMMAND)(bilge_status)
    return True
