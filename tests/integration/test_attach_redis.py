"""`bilge attach` to a bare prefork worker under load on Redis, and to processes in every awkward state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.brokers import producer_app, send_all, unique_queue
from support.jobs import billing_env, billing_jobs, executions, finished
from support.workers import BILGE, Launcher, celery_command, worker_environment

pytestmark = pytest.mark.integration

# Published at a steady pace while bilge attaches (an idle child runs the
# payload only once it runs Python again: the worker must stay busy).
TASKS = 8000
PACE = 400  # tasks a second


def bilge(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BILGE, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(sys.version_info[:2] < (3, 10), reason="bilge supports 3.10 and later")
def test_attach_to_a_bare_prefork_worker_under_load_finds_the_leak_and_loses_no_task(
    launcher: Launcher, redis_db: Any, artifacts: Path
) -> None:
    """A 2-child prefork worker started without bilge serves 8000 billing tasks published at
    400/s; after 400, `bilge attach` its
    main pid: the parent and both children get an agent (within 5 s each), the store then holds their tasks;
    every task runs exactly once; `bilge report` says leak in billing.render_statement; `bilge detach` stops
    the agents and the worker serves on."""
    sockets = tempfile.mkdtemp(prefix="bilge-att-")
    os.chmod(sockets, 0o700)
    queue = unique_queue("attach")
    env = worker_environment({**billing_env(redis_db.url, redis_db.url, queue), "BILGE_SOCKET_DIR": sockets})
    worker = launcher.start(celery_command("apps.billing", "prefork", 2, name="att-" + queue, queue=queue), env,
                            "worker", None)
    jobs = billing_jobs(TASKS)

    def publish() -> None:
        app = producer_app(redis_db.url, queue)
        for start in range(0, TASKS, PACE // 10):
            send_all(app, jobs[start:start + PACE // 10], queue)
            time.sleep(0.1)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    deadline = time.monotonic() + 120
    while finished(redis_db.client) < 400 and time.monotonic() < deadline:
        time.sleep(0.1)
    main = worker.celery_main().pid
    data_dir = artifacts / "data"
    done = bilge(env, "attach", str(main), "--data-dir", str(data_dir))
    (artifacts / "attach.txt").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("attached ")]
    assert len(lines) == 3 and "(celery-main)" in lines[0], done.stdout
    assert all(float(line.split(" in ")[1].split()[0]) <= 5.0 for line in lines), lines
    at_attach = finished(redis_db.client)

    publisher.join(120)
    deadline = time.monotonic() + 180
    while finished(redis_db.client) < TASKS and time.monotonic() < deadline:
        time.sleep(0.3)
    assert finished(redis_db.client) == TASKS, worker.log_tail()
    runs = executions(redis_db.client)
    assert len(runs) == TASKS and set(runs.values()) == {1}, "some jobs ran twice or never"
    status = json.loads(bilge(env, "snapshot", str(main), "--census-only", "--format", "json").stdout)
    assert status["snapshots"][0]["status"]["role"] == "celery-main"

    detached = bilge(env, "detach", str(main))
    assert detached.returncode == 0 and detached.stdout.count("detached") == 3, detached.stdout + detached.stderr
    assert worker.terminate() == 0, worker.log_tail()
    report = json.loads(bilge(env, "report", "--data-dir", str(data_dir), "--format", "json").stdout)
    (artifacts / "report.json").write_text(json.dumps(report, indent=2))
    children = [p for p in report["processes"] if p["role"] == "celery-child"]
    assert len(children) == 2 and sum(p["tasks_observed"] for p in children) >= (TASKS - at_attach) * 0.9
    assert report["verdict"] == "leak", report["reason"]
    assert report["findings"][0]["task"] == "billing.render_statement", report["findings"]
    assert report["findings"][0]["type"] in ("dict", "list", "str"), report["findings"]


TARGETS = {
    "spinning": "while True:\n    sum(range(1000))\n",
    "threads": ("import threading, time\n"
                "def spin():\n    while True:\n        sum(range(1000))\n"
                "for _ in range(3):\n    threading.Thread(target=spin, daemon=True).start()\n"
                "while True:\n    time.sleep(0.01)\n"),
    "gil-in-c": "data = list(range(2_000_000, 0, -1))\nwhile True:\n    sorted(data)\n",
    "idle-in-read": "import os\nr, w = os.pipe()\nos.read(r, 1)\n",
}


@pytest.mark.skipif(sys.version_info[:2] < (3, 10), reason="bilge supports 3.10 and later")
@pytest.mark.parametrize("kind", list(TARGETS))
def test_attach_in_each_state_attaches_or_refuses_cleanly_and_the_process_lives(kind: str, tmp_path: Path) -> None:
    """Busy in Python, several busy threads, the GIL held in long C calls: attached, the agent answers, detach
    works. Blocked in read() for ever: refused with the reason (exit 6, no traceback). The target lives on in
    every case and prints its heartbeat after."""
    sockets = tempfile.mkdtemp(prefix="bilge-att-")
    os.chmod(sockets, 0o700)
    script = tmp_path / "target.py"
    script.write_text(textwrap.dedent(TARGETS[kind]))
    target = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "BILGE_SOCKET_DIR": sockets})
    try:
        time.sleep(0.5)
        env = {**os.environ, "BILGE_SOCKET_DIR": sockets}
        done = bilge(env, "attach", str(target.pid), "--data-dir", str(tmp_path / "data"))
        assert target.poll() is None, "the target died"
        assert "Traceback" not in done.stderr
        if kind == "idle-in-read":
            assert done.returncode == 6 and "never ran Python code" in done.stderr, done.stderr
        else:
            assert done.returncode == 0, done.stderr
            assert bilge(env, "snapshot", str(target.pid), "--census-only").returncode == 0
            assert bilge(env, "detach", str(target.pid)).returncode == 0
        time.sleep(0.5)
        assert target.poll() is None, "the target died"
    finally:
        target.kill()
        target.wait()


def test_attach_refuses_what_it_cannot_attach(tmp_path: Path) -> None:
    """No such process; a process that is not Python: a one-line reason and exit 6; bilge itself untouched."""
    gone = bilge(dict(os.environ), "attach", "4194304", "--data-dir", str(tmp_path))
    assert gone.returncode == 6 and "no process 4194304" in gone.stderr and "Traceback" not in gone.stderr
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        not_python = bilge(dict(os.environ), "attach", str(sleeper.pid), "--data-dir", str(tmp_path))
        assert not_python.returncode == 6 and "does not run Python" in not_python.stderr, not_python.stderr
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.skipif(sys.version_info[:2] < (3, 10), reason="bilge supports 3.10 and later")
def test_an_idle_process_is_armed_and_its_agent_starts_when_it_next_runs_python(tmp_path: Path) -> None:
    """Blocked in read() during the attach: with --arm 60 the command says "armed" (exit 0); once the process
    gets its input and runs Python again, its agent answers on its socket."""
    sockets = tempfile.mkdtemp(prefix="bilge-att-")
    os.chmod(sockets, 0o700)
    script = tmp_path / "waiter.py"
    script.write_text("import sys, time\nsys.stdin.buffer.read(1)\nwhile True:\n    time.sleep(0.05)\n")
    env = {**os.environ, "BILGE_SOCKET_DIR": sockets}
    target = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, env=env)
    try:
        time.sleep(0.5)
        done = bilge(env, "attach", str(target.pid), "--data-dir", str(tmp_path / "data"), "--arm", "60")
        assert done.returncode == 0 and "armed %d" % target.pid in done.stdout, done.stdout + done.stderr
        assert not os.path.exists(os.path.join(sockets, "%d.sock" % target.pid))
        assert target.stdin is not None
        target.stdin.write(b"!")
        target.stdin.flush()
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(sockets, "%d.sock" % target.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        status = bilge(env, "snapshot", str(target.pid), "--census-only")
        assert status.returncode == 0, status.stderr
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()
        if target.stdin is not None:
            target.stdin.close()
