"""A prefork worker on Celery's embedded ``filesystem://`` broker (no server) under ``bilge run``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.bilge_data import bilge_report, processes_with_role, run_exit_codes, task_counts, tasks_recorded
from support.brokers import FilesystemProducer
from support.jobs import catalog_jobs, sent_by_name
from support.workers import Launcher, Worker, celery_command, worker_environment

pytestmark = pytest.mark.integration

# Enough for a plateau to be told from a cache still filling in each child:
# with 2400 (~1200 a child) a loaded machine's run left one child
# "inconclusive: about 688 more tasks are needed" (its RSS still settling by
# pages while the heap was flat), which is the honest answer for that little data.
# With 3600, one fresh-clone run of 2026-12-06 of three left a child "inconclusive:
# about 119 more tasks are needed" (each child now also starts the control
# channel's thread, a few more pages early in its life).
TASKS = 4800
# The filesystem transport lists the whole queue folder on every poll: keep
# it short by sending in batches as the worker catches up.
BATCH = 300


def _wait_recorded(worker: Worker, data_dir: Path, count: int) -> None:
    worker.wait_for(lambda: tasks_recorded(data_dir) >= count, 120,
                    lambda: "%d tasks recorded (%d so far)" % (count, tasks_recorded(data_dir)))


def test_filesystem_broker_bounded_cache_is_not_a_leak(launcher: Launcher, artifacts: Path, tmp_path: Path) -> None:
    """A catalogue worker whose memory only grows while a bounded LRU cache fills and a lazy table is built
    once runs every task exactly once under ``bilge run`` on the filesystem broker, exits 0 on SIGTERM, and the
    verdict is no-leak, with no findings, for both pool children."""
    jobs = catalog_jobs(TASKS)
    data_dir = artifacts / "data"
    broker_dir = tmp_path / "broker"
    producer = FilesystemProducer(broker_dir, queue="catalog")
    env = worker_environment({"CATALOG_BROKER_DIR": str(broker_dir)})
    producer.send(jobs[:BATCH])
    worker = launcher.start(celery_command("apps.catalog", "prefork", 2, name="catalog-%s" % tmp_path.name),
                            env, "worker", data_dir)

    for start in range(BATCH, TASKS, BATCH):
        _wait_recorded(worker, data_dir, start - BATCH // 2)
        producer.send(jobs[start:start + BATCH])
    _wait_recorded(worker, data_dir, TASKS)
    code = worker.terminate()

    assert code == 0, worker.log_tail()
    assert "Warm shutdown" in worker.log_text()
    assert run_exit_codes(data_dir) == [0]
    assert task_counts(data_dir) == sent_by_name(jobs)
    report = bilge_report(data_dir, artifacts)
    children = processes_with_role(report, "celery-child")
    assert len(children) == 2 and all(c["tasks_observed"] > 0 for c in children), report["processes"]
    assert report["verdict"] == "no-leak", report["reason"]
    assert report["findings"] == []
    assert all(c["verdict"] == "no-leak" for c in children), children
