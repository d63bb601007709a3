"""bilge enabled from the Celery app's configuration (no `bilge run`): a bare prefork worker on Redis is recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.bilge_data import bilge_report, run_exit_codes, tasks_recorded
from support.billing_run import BillingSetup, run_billing
from support.brokers import producer_app, unique_queue
from support.jobs import billing_jobs, executions
from support.workers import Launcher

pytestmark = pytest.mark.integration


def test_enable_from_configuration_records_main_process_children_and_every_task(
    launcher: Launcher, redis_db: Any, artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bilge.celery_config.enable(app)` with `bilge_data_dir` set: a plain `celery worker -P prefork -c 2` records a
    run (ended at shutdown), its main process and both children by role, and all 900 tasks exactly once."""
    queue = unique_queue("config")
    setup = BillingSetup(producer_app(redis_db.url, queue), redis_db.url, redis_db.client, redis_db.url, queue)
    data_dir = artifacts / "data"
    monkeypatch.setenv("BILLING_BILGE_DATA_DIR", str(data_dir))  # worker_environment copies os.environ
    outcome = run_billing(launcher, setup, billing_jobs(900), "prefork", 2, data_dir=None)
    assert outcome.exit_code == 0, outcome.worker.log_tail()
    assert set(executions(redis_db.client).values()) == {1}
    assert tasks_recorded(data_dir) == 900
    assert run_exit_codes(data_dir) == [0]
    report = bilge_report(data_dir, artifacts)
    roles = sorted(p["role"] for p in report["processes"])
    assert roles == ["celery-child", "celery-child", "celery-main"], roles
