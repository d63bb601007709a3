"""One run of ``apps.billing`` on a real worker: send, let it work, stop it with SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from support.brokers import send_all
from support.jobs import billing_env, finished, results_checksum
from support.workers import Launcher, Worker, celery_command, worker_environment


@dataclass(frozen=True)
class BillingRun:
    """How a billing run went."""

    worker: Worker
    exit_code: int
    stop_seconds: float


@dataclass(frozen=True)
class BillingSetup:
    """Where a billing worker gets its tasks and writes its results.

    Args:
        producer: a producer app on the worker's broker.
        broker_url: the worker's broker.
        results: the Redis client of the results database.
        results_url: its URL, for the worker.
        queue: the queue name.
    """

    producer: Celery
    broker_url: str
    results: Any
    results_url: str
    queue: str


def run_billing(
    launcher: Launcher, setup: BillingSetup, jobs: Sequence[tuple[str, list[Any]]], pool: str, concurrency: int,
    data_dir: Path | None, label: str = "worker", timeout: float = 240.0, acks_late: bool = False,
    while_running: Callable[[Worker], None] | None = None, bilge_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> BillingRun:
    """Send half the jobs, start the worker, send the rest, wait for all, SIGTERM, wait for exit.

    Args:
        launcher: starts the worker (and kills it in teardown).
        setup: broker, queue and results database.
        jobs: the tasks to send.
        pool: the Celery pool.
        concurrency: its size.
        data_dir: bilge's data directory; None runs the worker bare.
        label: names the worker's log file.
        timeout: seconds to wait for every job.
        acks_late: redeliver the task of a pool child that dies.
        while_running: called once all jobs are sent, while the worker runs.
        bilge_args: further ``bilge run`` options.
        extra_env: more environment variables for ``bilge run`` and the worker.
    """
    half = len(jobs) // 2
    send_all(setup.producer, jobs[:half], setup.queue)
    env = worker_environment({**billing_env(setup.broker_url, setup.results_url, setup.queue, acks_late=acks_late),
                              **(extra_env or {})})
    argv = celery_command("apps.billing", pool, concurrency, name="%s-%s" % (label, setup.queue), queue=setup.queue)
    worker = launcher.start(argv, env, label, data_dir, bilge_args)
    send_all(setup.producer, jobs[half:], setup.queue)
    if while_running is not None:
        while_running(worker)
    total = len(jobs)
    worker.wait_for(lambda: finished(setup.results) >= total and results_checksum(setup.results)[0] >= total,
                    timeout, lambda: "all %d billing tasks to finish (%d finished, %d jobs with a result)"
                    % (total, finished(setup.results), results_checksum(setup.results)[0]))
    stopping = time.monotonic()
    code = worker.terminate(timeout=60)
    return BillingRun(worker=worker, exit_code=code, stop_seconds=time.monotonic() - stopping)
