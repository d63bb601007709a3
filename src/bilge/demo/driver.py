"""Drive a worker under ``bilge run``: start it, send tasks, wait, stop it (the demo, ``bilge guard --worker``)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from bilge.store import sqlite as store

MIX = (("shop.render_invoice", 1), ("shop.score_customer", 1), ("shop.geo_lookup", 1), ("shop.resize_image", 1))


@dataclass(frozen=True)
class DemoRun:
    """Where a demo run left its data and how it went."""

    data_dir: str
    tasks_sent: int
    tasks_done: int
    worker_exit_code: int | None
    seconds: float


def _task_args(name: str, i: int, rng: random.Random) -> list[int]:
    if name == "shop.render_invoice":
        return [100000 + i, rng.randint(10, 30)]
    if name == "shop.score_customer":
        return [rng.randint(1, 40)]
    if name == "shop.geo_lookup":
        return [rng.randint(1000, 99999)]
    return [rng.choice((256, 512, 2048))]


def tasks_done(data_dir: str) -> int:
    """Tasks recorded so far in the store (lags the worker by one flush)."""
    try:
        conn = sqlite3.connect(store.db_path(data_dir), timeout=5)
        try:
            row = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()
        finally:
            conn.close()
        return int(row[0])
    except sqlite3.Error:
        return 0


def run_demo(
    total: int = 3000, workdir: str | None = None, progress: Callable[[int, int], None] | None = None,
    timeout: float = 240.0, seed: int = 7,
) -> DemoRun:
    """Run the demo end to end and return where its data is.

    Args:
        total: tasks to send.
        workdir: a directory for the data and the broker (default: a new temp dir).
        progress: called with (done, total) while tasks run.
        timeout: give up waiting for the tasks after this many seconds.
        seed: seed of the task mix.
    """
    workdir = workdir or tempfile.mkdtemp(prefix="bilge-demo-")
    broker_dir = os.path.join(workdir, "broker")
    os.makedirs(workdir, exist_ok=True)
    os.environ["BILGE_DEMO_BROKER_DIR"] = broker_dir
    from bilge.demo import app as demo_app

    outbox = os.path.join(broker_dir, "outbox")
    queue = os.path.join(broker_dir, "queue")
    producer = demo_app.make_app(outbox=outbox)
    rng = random.Random(seed)
    names = [n for n, w in MIX for _ in range(w)]

    def send(i: int) -> None:
        name = rng.choice(names)
        producer.send_task(name, args=_task_args(name, i, rng))

    return drive_worker(["bilge.demo.app"], workdir, send, total, timeout=timeout, progress=progress,
                        env=dict(os.environ), after_send=lambda: _deliver(outbox, queue))


def drive_worker(
    app_args: list[str], workdir: str, send: Callable[[int], None], total: int, timeout: float = 240.0,
    progress: Callable[[int, int], None] | None = None, env: dict[str, str] | None = None,
    after_send: Callable[[], None] | None = None, concurrency: int = 2,
) -> DemoRun:
    """Start a prefork worker under ``bilge run``, send ``total`` tasks, wait for them, stop it.

    Args:
        app_args: what follows ``celery -A`` (the app, and ``-b URL`` to override its broker).
        workdir: the worker's log and bilge's data dir (``data``) go here.
        send: sends the i-th task.
        total: tasks to send.
        timeout: give up waiting for the tasks after this many seconds.
        progress: called with (done, total) while tasks run.
        env: the worker's environment.
        after_send: called after each batch of sends (the demo delivers its files).
        concurrency: pool children.
    """
    data_dir = os.path.join(workdir, "data")
    started = time.time()
    log = open(os.path.join(workdir, "worker.log"), "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "bilge", "run", "--data-dir", data_dir, "--", sys.executable, "-m", "celery",
         "-A", *app_args, "worker", "-P", "prefork", "-c", str(concurrency), "--loglevel=WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    sent = done = 0
    try:
        deadline = time.time() + timeout
        while done < total and time.time() < deadline:
            if worker.poll() is not None:
                break
            # Keep the queue short: the filesystem transport lists the whole
            # folder on every poll.
            while sent < total and sent - done < 400:
                send(sent)
                sent += 1
            if after_send:
                after_send()
            time.sleep(0.25)
            done = tasks_done(data_dir) if os.path.exists(store.db_path(data_dir)) else 0
            if progress:
                progress(done, total)
    finally:
        code = _stop(worker)
        log.close()
    return DemoRun(data_dir=data_dir, tasks_sent=sent, tasks_done=tasks_done(data_dir), worker_exit_code=code,
                   seconds=time.time() - started)


def _deliver(outbox: str, queue: str) -> None:
    """Move finished message files into the queue, atomically, oldest first."""
    for name in sorted(os.listdir(outbox)):
        os.rename(os.path.join(outbox, name), os.path.join(queue, name))


def _stop(worker: subprocess.Popen[bytes]) -> int | None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
    return worker.returncode
