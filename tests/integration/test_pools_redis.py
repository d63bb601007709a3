"""The solo and threads pools on Redis under ``bilge run``: tasks are recorded in the process that runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.bilge_data import bilge_report, processes_with_role, task_counts
from support.billing_run import BillingSetup, run_billing
from support.brokers import RedisDatabase, producer_app, unique_queue
from support.jobs import RENDER_STATEMENT, billing_jobs, executions, sent_by_name
from support.workers import Launcher

pytestmark = pytest.mark.integration


def _setup(redis_db: RedisDatabase, prefix: str) -> BillingSetup:
    queue = unique_queue(prefix)
    return BillingSetup(producer_app(redis_db.url, queue), redis_db.url, redis_db.client, redis_db.url, queue)


def test_solo_pool_leak_is_found_in_the_main_process(
    launcher: Launcher, redis_db: RedisDatabase, artifacts: Path
) -> None:
    """With ``-P solo`` the main process runs every task: the store holds each once and the report shows them
    in that process (role celery-main),
    the verdict is leak and the leaking task is billing.render_statement; ``bilge run`` exits 0."""
    jobs = billing_jobs(1500, seed=3)
    data_dir = artifacts / "data"

    outcome = run_billing(launcher, _setup(redis_db, "billing-solo"), jobs, "solo", 1, data_dir=data_dir)

    assert outcome.exit_code == 0, outcome.worker.log_tail()
    assert set(executions(redis_db.client).values()) == {1}
    assert task_counts(data_dir) == sent_by_name(jobs)
    report = bilge_report(data_dir, artifacts)
    main = processes_with_role(report, "celery-main")
    assert len(main) == 1 and main[0]["tasks_observed"] > 0, report["processes"]
    assert report["verdict"] == "leak", report["reason"]
    assert main[0]["verdict"] == "leak"
    assert report["findings"][0]["task"] == RENDER_STATEMENT


def test_threads_pool_tasks_are_sampled_and_recorded(
    launcher: Launcher, redis_db: RedisDatabase, artifacts: Path
) -> None:
    """With ``-P threads -c 2`` both pool threads' tasks are recorded once each, all in the main process; the report
    is valid JSON with a verdict among the three, and if it says leak names no task but billing.render_statement."""
    jobs = billing_jobs(900, seed=4)
    data_dir = artifacts / "data"

    outcome = run_billing(launcher, _setup(redis_db, "billing-threads"), jobs, "threads", 2, data_dir=data_dir)

    assert outcome.exit_code == 0, outcome.worker.log_tail()
    assert set(executions(redis_db.client).values()) == {1}
    assert task_counts(data_dir) == sent_by_name(jobs)
    report = bilge_report(data_dir, artifacts)
    observed = [p for p in report["processes"] if p["tasks_observed"] > 0]
    assert [p["role"] for p in observed] == ["celery-main"], report["processes"]
    assert observed[0]["rss_start"] and observed[0]["rss_end"], "the process was never sampled"
    assert report["verdict"] in ("leak", "no-leak", "inconclusive")
    if report["verdict"] == "leak":
        # Two tasks run at once in one process, so their memory deltas overlap: bilge may not attribute the
        # growth to one task (task null, about one run in four), but a task it names must be the right one.
        assert report["findings"][0]["task"] in (RENDER_STATEMENT, None), report["findings"][0]
