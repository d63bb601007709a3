"""`celery -A apps.billing bilge status` against three worker nodes and one without bilge, on Redis and RabbitMQ."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.brokers import AMQP_URL, producer_app, send_all, unique_queue
from support.jobs import billing_env, billing_jobs, finished
from support.workers import Launcher, celery_command, worker_environment

pytestmark = pytest.mark.integration


def celery_bilge(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "apps.billing", "bilge", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_status_lists_every_node_with_processes_verdict_and_memory(
    broker: str, launcher: Launcher, redis_db: Any, artifacts: Path
) -> None:
    """Three workers under bilge run and one bare worker share a queue; `celery bilge status` lists the three
    with their main process and pool children (role, verdict, RSS, tasks), and the bare one as not answering;
    exit code 1 because one node gave no bilge answer."""
    url = redis_db.url if broker == "redis" else AMQP_URL
    queue = unique_queue("fleet")
    env = worker_environment({**billing_env(url, redis_db.url, queue), "WORKER_REMOTE_CONTROL": "1"})
    names = ["fleet%d-%s" % (i, queue) for i in range(3)]
    for i, name in enumerate(names):
        launcher.start(celery_command("apps.billing", "prefork", 1, name=name, queue=queue), env, name,
                       artifacts / ("data%d" % i))
    bare = "bare-%s" % queue
    launcher.start(celery_command("apps.billing", "prefork", 1, name=bare, queue=queue), env, bare, None)
    send_all(producer_app(url, queue), billing_jobs(600), queue)
    deadline = time.monotonic() + 120
    while finished(redis_db.client) < 600 and time.monotonic() < deadline:
        time.sleep(0.5)

    ours = {"%s@" % n for n in names}
    nodes: dict[str, Any] = {}
    for _ in range(20):  # workers come up at different speeds
        done = celery_bilge(env, "status", "--format", "json", "--timeout", "3")
        nodes = {k: v for k, v in json.loads(done.stdout or "{}").get("nodes", {}).items()
                 if k.split("@")[0] + "@" in ours | {bare + "@"}}
        if len(nodes) == 4 and all(v["status"] == "ok" for k, v in nodes.items() if not k.startswith(bare)):
            break
        time.sleep(1)
    (artifacts / "status.json").write_text(json.dumps(nodes, indent=2))
    assert len(nodes) == 4, nodes
    assert done.returncode == 1, done.stderr
    for node, info in nodes.items():
        if node.startswith(bare):
            assert info["status"].startswith("no bilge answer") and info["processes"] == []
            continue
        assert info["status"] == "ok", info
        roles = sorted(p["role"] for p in info["processes"])
        assert roles == ["celery-child", "celery-main"], info
        for p in info["processes"]:
            assert p["rss"] > 10 * 2**20 and p["verdict"] in ("growing", "steady", "warming-up")
    assert sum(p["tasks"] for info in nodes.values() for p in info["processes"]) > 0

    text = celery_bilge({**env, "COLUMNS": "200"}, "status", "--timeout", "3")
    assert "bilge fleet status" in text.stdout and "no bilge answer" in text.stdout and "celery-child" in text.stdout


def test_status_with_an_unreachable_broker_or_no_workers_fails_clearly(tmp_path: Path, redis_db: Any) -> None:
    """A dead broker port: exit 8 and a one-line reason; a live broker with no workers: exit 9."""
    dead = worker_environment({**billing_env("redis://127.0.0.1:1/0", redis_db.url, "none")})
    done = celery_bilge(dead, "status", "--timeout", "1")
    assert done.returncode == 8 and "cannot reach the broker at redis://" in done.stderr, done.stderr
    assert "127.0.0.1:1/0" in done.stderr and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
    empty = worker_environment({**billing_env(redis_db.url, redis_db.url, unique_queue("empty"))})
    done = celery_bilge(empty, "status", "--timeout", "1")
    assert done.returncode == 9 and "no worker answered within 1.0 s" in done.stderr, done.stderr
