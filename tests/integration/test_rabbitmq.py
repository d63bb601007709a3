"""A prefork worker on RabbitMQ under ``bilge run``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.bilge_data import bilge_report, processes_with_role, task_counts
from support.billing_run import BillingSetup, run_billing
from support.brokers import AMQP_URL, RedisDatabase, delete_amqp_queue, producer_app, unique_queue
from support.jobs import RENDER_STATEMENT, billing_jobs, executions, sent_by_name
from support.workers import Launcher

pytestmark = pytest.mark.integration

# About 1200 tasks per child: the leak verdict has come after 580-760 tasks
# per child, so this leaves a margin without making the run long.
TASKS = 2400


@pytest.fixture
def amqp_queue() -> Iterator[str]:
    """A RabbitMQ queue name of this test's own, deleted afterwards."""
    queue = unique_queue("billing-amqp")
    try:
        yield queue
    finally:
        delete_amqp_queue(queue)


def test_rabbitmq_prefork_children_are_observed_and_the_leak_found(
    launcher: Launcher, redis_db: RedisDatabase, amqp_queue: str, artifacts: Path
) -> None:
    """2400 billing tasks through RabbitMQ to a 2-child prefork worker under ``bilge run``: each runs once, both
    children are reported with the tasks they ran, ``bilge run`` exits 0, and the verdict is leak in
    billing.render_statement."""
    jobs = billing_jobs(TASKS, seed=8)
    data_dir = artifacts / "data"
    setup = BillingSetup(producer_app(AMQP_URL, amqp_queue), AMQP_URL, redis_db.client, redis_db.url, amqp_queue)

    outcome = run_billing(launcher, setup, jobs, "prefork", 2, data_dir=data_dir)

    assert outcome.exit_code == 0, outcome.worker.log_tail()
    assert "Warm shutdown" in outcome.worker.log_text()
    assert set(executions(redis_db.client).values()) == {1} and len(executions(redis_db.client)) == len(jobs)
    assert task_counts(data_dir) == sent_by_name(jobs)
    report = bilge_report(data_dir, artifacts)
    children = processes_with_role(report, "celery-child")
    assert len(children) == 2 and all(c["tasks_observed"] > 0 for c in children), report["processes"]
    assert report["verdict"] == "leak", report["reason"]
    assert report["findings"][0]["task"] == RENDER_STATEMENT
