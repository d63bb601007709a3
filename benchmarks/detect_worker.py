"""A real prefork worker of ``detection_app`` under ``bilge run``, for the benchmarks that need one.

Shared by window_cost.py and recycling.py: queue the three tasks, start the
worker (its own session, so a stuck shutdown can be killed as a group),
wait until every queued task is recorded in the store, stop it warmly.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
BILGE = os.path.join(os.path.dirname(sys.executable), "bilge")
TASKS = ("detect.record_event", "detect.checksum", "detect.render")


def queue(broker: str, tasks: int, seed: int) -> None:
    """Empty the broker's database and queue ``tasks`` of the three tasks in a seeded random order."""
    import redis
    from celery import Celery

    redis.Redis.from_url(broker).flushdb()
    producer = Celery("detect", broker=broker)
    rng = random.Random(seed)
    with producer.connection_for_write() as conn:
        for i in range(tasks):
            producer.send_task(rng.choice(TASKS), args=[i], connection=conn)


def query(data: str, sql: str) -> list[tuple]:
    """Rows of ``sql`` on the run's store; none while it cannot be read yet."""
    try:
        conn = sqlite3.connect(os.path.join(data, "bilge.db"), timeout=10)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []


@contextmanager
def worker(broker: str, data: str, env: Mapping[str, str], bilge_args: Sequence[str] = (),
           celery_args: Sequence[str] = ()) -> Iterator[subprocess.Popen]:
    """``bilge run --data-dir DATA BILGE_ARGS -- celery ... worker -P prefork -c 2 CELERY_ARGS``, stopped on exit."""
    full_env = dict(os.environ, DETECT_BROKER_URL=broker, **env,
                    PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(os.path.join(os.path.dirname(data), "worker.log"), "wb") as log:
        proc = subprocess.Popen([BILGE, "run", "--data-dir", data, *bilge_args, "--", sys.executable, "-m", "celery",
                                 "-A", "detection_app", "worker", "-P", "prefork", "-c", "2", "--loglevel=WARNING",
                                 "--without-gossip", "--without-mingle", "--without-heartbeat", *celery_args],
                                cwd=HERE, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_done(broker: str, data: str, tasks: int, timeout: float) -> None:
    """Until the queue is empty and the store holds ``tasks`` task rows (or ``timeout`` seconds)."""
    import redis

    client = redis.Redis.from_url(broker)
    deadline = time.time() + timeout
    while time.time() < deadline:
        # Celery's Redis transport keeps the queue in a list named after it.
        if client.llen("celery") == 0 and (query(data, "SELECT COUNT(*) FROM tasks") or [(0,)])[0][0] >= tasks:
            return
        time.sleep(0.5)
