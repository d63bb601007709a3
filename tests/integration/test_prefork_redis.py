"""A prefork worker on Redis under ``bilge run``: the leak is found, and the worker runs as if bilge were absent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from support.artifacts import artifacts_dir
from support.bilge_data import (
    bilge_report,
    integrity_check,
    process_roles,
    processes_with_role,
    run_exit_codes,
    task_counts,
    tasks_recorded,
)
from support.billing_run import BillingSetup, run_billing
from support.brokers import claimed_redis_database, producer_app, send_all, unique_queue
from support.jobs import RENDER_STATEMENT, billing_jobs, executions, finished, results_checksum, sent_by_name
from support.workers import Launcher, Worker

pytestmark = pytest.mark.integration

TASKS = 3000
JOBS = billing_jobs(TASKS)


@pytest.fixture(scope="module")
def bare_checksum() -> Iterator[tuple[int, str]]:
    """The results checksum of the same jobs run by the same worker *without* bilge."""
    launcher = Launcher(artifacts_dir("bare_prefork_redis_baseline"))
    try:
        with claimed_redis_database() as db:
            queue = unique_queue("billing-bare")
            setup = BillingSetup(producer_app(db.url, queue), db.url, db.client, db.url, queue)
            outcome = run_billing(launcher, setup, JOBS, "prefork", 2, data_dir=None)
            assert outcome.exit_code == 0, outcome.worker.log_tail()
            yield results_checksum(db.client)
    finally:
        launcher.close()


def test_prefork_redis_leak_is_found_without_changing_the_work(
    bare_checksum: tuple[int, str], launcher: Launcher, redis_db: Any, artifacts: Any
) -> None:
    """Under ``bilge run``, a 2-child prefork worker on Redis runs 3000 interleaved tasks exactly once each,
    with the results of a bare run; SIGTERM to ``bilge run`` reaches the worker, which shuts down warmly with
    exit code 0; the report says leak (python-objects) in billing.render_statement, growing dicts or lists,
    and every task is recorded once in the store by the pool children."""
    queue = unique_queue("billing")
    setup = BillingSetup(producer_app(redis_db.url, queue), redis_db.url, redis_db.client, redis_db.url, queue)
    data_dir = artifacts / "data"

    outcome = run_billing(launcher, setup, JOBS, "prefork", 2, data_dir=data_dir)

    log = outcome.worker.log_text()
    assert outcome.exit_code == 0, "bilge run should exit like the worker (0):\n" + outcome.worker.log_tail()
    assert "Warm shutdown" in log and "Cold shutdown" not in log, "SIGTERM was not passed on as a warm shutdown"
    assert outcome.stop_seconds < 30, "warm shutdown took %.1f s" % outcome.stop_seconds
    assert run_exit_codes(data_dir) == [0]
    assert finished(redis_db.client) == TASKS, "tasks ran more often than sent"
    runs = executions(redis_db.client)
    assert len(runs) == TASKS and set(runs.values()) == {1}, "some jobs ran twice or never"
    assert results_checksum(redis_db.client) == bare_checksum
    assert task_counts(data_dir) == sent_by_name(JOBS), "the store should hold every task exactly once"

    report = bilge_report(data_dir, artifacts)
    assert report["schema_version"] == 1
    assert report["verdict"] == "leak", report["reason"]
    assert report["kind"] == "python-objects"
    first = report["findings"][0]
    assert first["task"] == RENDER_STATEMENT
    assert first["type"] in ("dict", "list"), first
    children = processes_with_role(report, "celery-child")
    assert len(children) == 2 and all(c["tasks_observed"] > 0 for c in children), report["processes"]
    assert any(c["verdict"] == "leak" for c in children)
    assert [p["tasks_observed"] for p in processes_with_role(report, "celery-main")] == [0]
    # Last, so the checks above still run if it fails: the report counts every task the children ran.
    assert sum(c["tasks_observed"] for c in children) == TASKS, "tasks_observed should count every recorded task"


def test_prefork_child_killed_with_sigkill_is_replaced_and_the_store_stays_readable(
    launcher: Launcher, redis_db: Any, artifacts: Any
) -> None:
    """A pool child killed with SIGKILL mid-run is replaced; with late acks every job still completes, ``bilge
    run`` exits 0, the store passes SQLite's integrity check, and ``bilge report`` lists the killed child (with
    the tasks it flushed before dying) and its replacement, and still finds the leak."""
    # billiard notices a SIGKILLed child only at its next pool check (up to
    # ~5 s), by which time a fast worker may have run every queued job: a tail
    # of jobs is sent once the replacement is up, so it is sure to get work.
    jobs = billing_jobs(4200, seed=23)
    first, tail = jobs[:3600], jobs[3600:]
    queue = unique_queue("billing-kill")
    setup = BillingSetup(producer_app(redis_db.url, queue), redis_db.url, redis_db.client, redis_db.url, queue)
    data_dir = artifacts / "data"
    killed: dict[str, int] = {}

    def kill_one_child(worker: Worker) -> None:
        worker.wait_for(lambda: tasks_recorded(data_dir) >= 300, 120, "300 tasks recorded before the kill")
        children = worker.pool_children()
        assert len(children) == 2, children
        victim = children[0]
        victim.kill()
        victim.wait(timeout=10)
        killed["pid"] = victim.pid
        worker.wait_for(lambda: len(worker.pool_children()) == 2 and victim.pid not in
                        [p.pid for p in worker.pool_children()], 60, "a replacement pool child")
        killed["replacement"] = next(p.pid for p in worker.pool_children() if p.pid != children[1].pid)
        send_all(setup.producer, tail, queue)
        worker.wait_for(lambda: finished(redis_db.client) >= len(jobs), 120, "the tail jobs to finish")

    outcome = run_billing(launcher, setup, first, "prefork", 2, data_dir=data_dir, acks_late=True,
                          while_running=kill_one_child)

    assert outcome.exit_code == 0, outcome.worker.log_tail()
    assert not psutil.pid_exists(killed["pid"])
    runs = executions(redis_db.client)
    assert len(runs) == len(jobs), "every job should complete despite the kill"
    assert sum(runs.values()) <= len(jobs) + 1, "only the killed child's task may run twice"
    assert integrity_check(data_dir) == "ok"
    roles = process_roles(data_dir)
    assert roles.get(killed["pid"]) == "celery-child" and roles.get(killed["replacement"]) == "celery-child", roles
    recorded = tasks_recorded(data_dir)
    # The killed child loses what it had not flushed yet (at most ~0.5 s of tasks).
    assert 0.8 * len(jobs) <= recorded <= len(jobs), recorded

    report = bilge_report(data_dir, artifacts)
    by_pid = {p["pid"]: p for p in report["processes"]}
    assert by_pid[killed["pid"]]["tasks_observed"] > 0, by_pid
    assert by_pid[killed["replacement"]]["tasks_observed"] > 0, by_pid
    assert report["verdict"] == "leak", report["reason"]
    assert report["findings"][0]["task"] == RENDER_STATEMENT
