"""The soak's worker: mixed tasks, one of them leaking, each success counted in Redis.

- ``soak.leaky`` keeps ``SOAK_LEAK_BYTES`` (default 1024) in a module list: the leak.
- ``soak.warm`` fills a bounded LRU cache (5,000 entries of ~1 KB): warm-up growth, then a plateau.
- ``soak.transient`` builds and drops ~8 MB of objects: a big transient.
- ``soak.flaky`` fails its first two tries of every third job and is retried (``autoretry_for``).
- ``soak.plain`` does a little arithmetic.

Every task counts its successful completion per job in the ``completed``
hash (``HINCRBY``), the jobs each pool child completed in ``per_pid``, and
its executions in ``executions``, on the results Redis (``SOAK_RESULTS_URL``): a job completed exactly once has 1 in
``completed``, whatever its retries. Broker: ``SOAK_BROKER_URL``;
``acks_late`` is on, so a recycled or killed child's task is redelivered.
"""

from __future__ import annotations

import functools
import os

import redis
from celery import Celery

app = Celery("soak", broker=os.environ.get("SOAK_BROKER_URL", "redis://127.0.0.1:6379/12"))
app.conf.update(task_ignore_result=True, task_acks_late=True, task_reject_on_worker_lost=True,
                worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)
TASKS = ("soak.leaky", "soak.warm", "soak.transient", "soak.flaky", "soak.plain")
# How often each task is sent, per 20 jobs (the soak's mix).
MIX = {"soak.leaky": 2, "soak.warm": 5, "soak.transient": 1, "soak.flaky": 2, "soak.plain": 10}
LEAK_BYTES = int(os.environ.get("SOAK_LEAK_BYTES", "1024"))
_kept: list[bytes] = []
_results: redis.Redis | None = None


def _count(job: int) -> int:
    global _results
    if _results is None:
        _results = redis.Redis.from_url(os.environ["SOAK_RESULTS_URL"])
    pipe = _results.pipeline(transaction=False)
    pipe.hincrby("completed", str(job), 1)
    pipe.hincrby("per_pid", str(os.getpid()), 1)
    pipe.execute()
    return job


def _executed(job: int) -> None:
    global _results
    if _results is None:
        _results = redis.Redis.from_url(os.environ["SOAK_RESULTS_URL"])
    _results.hincrby("executions", str(job), 1)


@app.task(name="soak.leaky")
def leaky(job: int) -> int:
    _kept.append(b"%d" % job + bytes(max(0, LEAK_BYTES - 40)))
    return _count(job)


@functools.lru_cache(maxsize=5000)
def _profile(key: int) -> str:
    return ("profile %d " % key) * 80


@app.task(name="soak.warm")
def warm(job: int) -> int:
    _profile((job * 7919) % 20000)
    return _count(job)


@app.task(name="soak.transient")
def transient(job: int) -> int:
    rows = [{"row": i, "name": "r%d" % i} for i in range(40000)]
    rows.sort(key=lambda r: r["name"])
    del rows
    return _count(job)


class Flaky(Exception):
    """A failure the task is retried for."""


@app.task(name="soak.flaky", bind=True, autoretry_for=(Flaky,), max_retries=3, default_retry_delay=0)
def flaky(self, job: int) -> int:  # type: ignore[no-untyped-def]
    _executed(job)
    if job % 3 == 0 and self.request.retries < 2:
        raise Flaky("try %d of job %d" % (self.request.retries, job))
    return _count(job)


@app.task(name="soak.plain")
def plain(job: int) -> int:
    sum(i * i for i in range(200))
    return _count(job)
