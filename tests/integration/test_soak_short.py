"""The soak's short variant (benchmarks/soak.py --tasks 3000): its correctness half, in CI.

A 4-child prefork worker under ``bilge run --recycle --http`` runs the soak's
mix (a leak, warm-ups, big transients, failing-and-retried tasks) with
``acks_late``: every job completes exactly once, the agents contain no
error, and ``/metrics`` and ``bilge report`` answer at the end. The figures
(overhead, memory, store growth) are the long run's: benchmarks/results/soak.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.brokers import claimed_redis_database

pytestmark = pytest.mark.integration

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_the_short_soak_completes_every_job_once_without_agent_errors(redis_db: Any, artifacts: Path) -> None:
    out = artifacts / "soak.json"
    with claimed_redis_database() as broker:  # the soak flushes both databases it is given
        done = subprocess.run([sys.executable, str(SOAK), "--tasks", "3000", "--no-plain", "--broker", broker.url,
                               "--results", redis_db.url, "--timeout", "600", "--out", str(out)],
                              capture_output=True, text=True, timeout=900)
    (artifacts / "soak.txt").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert (run["completed_once"], run["completed_twice_or_more"], run["never_completed"]) == (3000, 0, 0)
    assert run["flaky_executions"] == 500  # 300 flaky jobs, a third of them failing twice first
    assert run["agent_errors"] == [] and run["exit_code"] == 0 and run["report_exit"] == 0
    assert run["metrics_bytes"] > 0 and len(run["children"]) >= 4
