"""`bilge snapshot` against a live prefork worker on Redis, through each agent's control socket."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from support.brokers import producer_app, send_all, unique_queue
from support.jobs import billing_env, billing_jobs, executions, finished
from support.workers import BILGE, Launcher, celery_command, worker_environment

from bilge import live

pytestmark = pytest.mark.integration

TASKS = 2400


def bilge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BILGE, *args], env=env, capture_output=True, text=True, timeout=120)


def ask(path: str, raw: bytes) -> dict[str, Any]:
    """The agent's raw answer to bytes sent as they are (bad requests included)."""
    answer: dict[str, Any] = json.loads(live.exchange(path, raw, timeout=20))
    return answer


def test_snapshot_names_the_growing_type_and_its_holder_in_each_child_while_tasks_run(
    launcher: Launcher, redis_db: Any, artifacts: Path
) -> None:
    """A 2-child prefork worker under `bilge run` serves 2400 billing tasks (one leaks into a module dict);
    `bilge snapshot --all --data-dir` twice while they run: the main process and both children answer, the
    second snapshot of a child shows growth since the first and names `apps.billing._STATEMENT_ARCHIVE` as a
    holder; malformed and oversized requests get an error and the agent keeps answering; the socket is 0600
    in a 0700 directory; every task runs exactly once; `bilge report` shows the snapshots afterwards."""
    sockets = tempfile.mkdtemp(prefix="bilge-sock-")  # short: a unix socket's path holds 107 bytes
    os.chmod(sockets, 0o700)
    queue = unique_queue("snap")
    env = worker_environment({**billing_env(redis_db.url, redis_db.url, queue), "BILGE_SOCKET_DIR": sockets})
    data_dir = artifacts / "data"
    worker = launcher.start(celery_command("apps.billing", "prefork", 2, name="snap-" + queue, queue=queue), env,
                            "worker", data_dir)
    send_all(producer_app(redis_db.url, queue), billing_jobs(TASKS), queue)

    def wait_finished(n: int) -> None:
        deadline = time.monotonic() + 180
        while finished(redis_db.client) < n and time.monotonic() < deadline:
            time.sleep(0.3)
        assert finished(redis_db.client) >= n, worker.log_tail()

    wait_finished(500)
    first = bilge(env, "snapshot", "--all", "--data-dir", str(data_dir), "--format", "json")
    (artifacts / "snapshot1.json").write_text(first.stdout + first.stderr)
    assert first.returncode == 0, first.stderr
    wait_finished(1500)
    second = bilge(env, "snapshot", "--all", "--data-dir", str(data_dir), "--format", "json")
    (artifacts / "snapshot2.json").write_text(second.stdout + second.stderr)
    assert second.returncode == 0, second.stderr
    answers = json.loads(second.stdout)["snapshots"]
    roles = sorted(a["status"]["role"] for a in answers)
    assert roles == ["celery-child", "celery-child", "celery-main"], roles
    children = [a for a in answers if a["status"]["role"] == "celery-child"]
    for child in children:
        summary = child["snapshot"]
        assert summary["objects"] > 10000 and summary["tasks_done"] > 0
        assert summary["compared_with"].startswith("the previous snapshot"), summary["compared_with"]
    holders = [h["path"] for child in children for h in child["snapshot"]["holders"]]
    assert any("apps.billing._STATEMENT_ARCHIVE" in path for path in holders), holders
    grown = {g["type"] for child in children for g in child["snapshot"]["growing"]}
    assert grown & {"dict", "list", "str"}, grown

    # The socket is the owner's alone; bad requests get an answer, not a dead agent.
    child_path = os.path.join(sockets, "%d.sock" % children[0]["pid"])
    assert os.stat(child_path).st_mode & 0o777 == 0o600
    assert os.stat(sockets).st_mode & 0o777 == 0o700
    assert ask(child_path, b"{not json\n")["error"] == "not a JSON request line"
    assert "unknown op" in ask(child_path, b'{"op": "exec", "args": {"code": "1"}}\n')["error"]
    assert "longer than" in ask(child_path, b"x" * (70 * 1024) + b"\n")["error"]
    assert ask(child_path, b'{"op": "status"}\n')["result"]["pid"] == children[0]["pid"]

    text = bilge({**env, "COLUMNS": "160"}, "snapshot", str(worker.celery_main().pid))
    (artifacts / "snapshot_main.txt").write_text(text.stdout + text.stderr)
    assert text.returncode == 0 and "snapshot at" in text.stdout and "celery-main" in text.stdout, text.stderr

    wait_finished(TASKS)
    assert worker.terminate() == 0, worker.log_tail()
    runs = executions(redis_db.client)
    assert len(runs) == TASKS and set(runs.values()) == {1}, "some jobs ran twice or never"
    report = bilge({**env, "COLUMNS": "160"}, "report", "--data-dir", str(data_dir))
    (artifacts / "report.txt").write_text(report.stdout)
    assert "snapshots, latest" in report.stdout, report.stdout
    as_json = json.loads(bilge(env, "report", "--data-dir", str(data_dir), "--format", "json").stdout)
    stored = [s for p in as_json["processes"] for s in p["snapshots"]]
    assert len(stored) >= 6 and all(s["objects"] > 0 for s in stored)
    # The children leave through os._exit; their sockets are gone or removed by the next --all.
    assert bilge(env, "snapshot", "--all").returncode == 5
    assert os.listdir(sockets) == []


def test_snapshot_of_a_process_without_an_agent_fails_clearly(tmp_path: Path) -> None:
    """A live process that is not under bilge, a pid that does not exist: exit 5, one line saying what to do."""
    env = {**os.environ, "BILGE_SOCKET_DIR": str(tmp_path)}
    done = bilge(env, "snapshot", str(os.getpid()))
    assert done.returncode == 5 and "has no bilge agent listening" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    gone = bilge(env, "snapshot", "4194304")
    assert gone.returncode == 5 and "no process 4194304" in gone.stderr
    assert bilge(env, "snapshot").returncode == 2
