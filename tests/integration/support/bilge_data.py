"""Read what ``bilge run`` recorded: the SQLite store directly, and ``bilge report`` through the CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from support.workers import BILGE

DB_NAME = "bilge.db"


def _query(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    path = data_dir / DB_NAME
    if not path.exists():
        return []
    # Read-only, so a test can never be what locks or changes the store.
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def tasks_recorded(data_dir: Path) -> int:
    """Tasks recorded in the store so far (it lags the worker by up to one flush)."""
    try:
        return int(_query(data_dir, "SELECT COUNT(*) FROM tasks")[0][0]) if (data_dir / DB_NAME).exists() else 0
    except sqlite3.OperationalError:
        return 0  # the schema is not created yet


def task_counts(data_dir: Path) -> Counter[str]:
    """Recorded tasks by task name."""
    return Counter(dict(_query(data_dir, "SELECT name, COUNT(*) FROM tasks GROUP BY name")))


def run_exit_codes(data_dir: Path) -> list[int | None]:
    """The exit code ``bilge run`` stored for each run, in run order."""
    return [row[0] for row in _query(data_dir, "SELECT exit_code FROM runs ORDER BY id")]


def process_roles(data_dir: Path) -> dict[int, str]:
    """Role of every recorded process, by pid."""
    return dict(_query(data_dir, "SELECT pid, role FROM processes"))


def integrity_check(data_dir: Path) -> str:
    """SQLite's ``PRAGMA integrity_check`` of the store: ``ok`` when sound."""
    return "; ".join(str(row[0]) for row in _query(data_dir, "PRAGMA integrity_check"))


def bilge_report(data_dir: Path, artifacts: Path) -> dict[str, Any]:
    """Run ``bilge report`` (JSON, then text) in a subprocess, save both, return the parsed JSON.

    Args:
        data_dir: the data directory given to ``bilge run``.
        artifacts: where ``report.json`` and ``report.txt`` go.
    """
    outputs = {}
    for fmt in ("json", "text"):
        done = subprocess.run([*BILGE, "report", "--data-dir", str(data_dir), "--format", fmt],
                              capture_output=True, text=True, timeout=120)
        (artifacts / ("report.%s" % ("json" if fmt == "json" else "txt"))).write_text(done.stdout + done.stderr)
        assert done.returncode == 0, "bilge report --format %s exited %d:\n%s" % (fmt, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        outputs[fmt] = done.stdout
    report: dict[str, Any] = json.loads(outputs["json"])
    return report


def processes_with_role(report: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """The report's processes of one role."""
    return [p for p in report["processes"] if p["role"] == role]
