"""Tests for bilge.agent.celery_hooks: Celery's signals drive the agent, with no worker and no broker.

Each test runs in a fresh interpreter: connecting to Celery's signals is
process-global state that must not leak into the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from bilge.store.sqlite import load_run

SCRIPT = textwrap.dedent("""
    import json, sys, time
    from bilge.agent import AgentConfig, start
    from bilge.store.sqlite import prepare_data_dir, start_run

    data_dir = prepare_data_dir(sys.argv[1])
    agent = start(AgentConfig(data_dir=data_dir, run_id=start_run(data_dir, "hooks"), sample_interval=0.02))
    assert "celery.signals" not in sys.modules  # nothing imported Celery for us
    from celery import signals  # the import hook connects bilge's handlers here

    class FakeTask:
        name = "shop.search"

    # What the solo pool does in its one process: worker_init, then worker_process_init.
    signals.worker_init.send(sender=None)
    signals.worker_process_init.send(sender=None)
    for i in range(5):
        signals.task_prerun.send(sender=FakeTask, task_id=str(i), task=FakeTask(), args=(), kwargs={})
        signals.task_postrun.send(sender=FakeTask, task_id=str(i), task=FakeTask(), args=(), kwargs={},
                                  retval=None, state="FAILURE" if i == 3 else "SUCCESS")
    signals.task_prerun.send(sender=None, task_id="anon", task=None)
    signals.task_postrun.send(sender=None, task_id="anon", state="SUCCESS")
    hooked = [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "_SignalsImportHook"]
    deadline = time.monotonic() + 10
    while agent.process_id is None and time.monotonic() < deadline:
        time.sleep(0.01)
    signals.worker_process_shutdown.send(sender=None, pid=0, exitcode=0)
    print(json.dumps({"hook_left": hooked}))
""")


def test_celery_signals_drive_the_agent(tmp_path: Path) -> None:
    """Importing Celery after the agent starts connects its signals: roles, tasks and failures are recorded."""
    script = tmp_path / "hooks.py"
    script.write_text(SCRIPT)
    data_dir = tmp_path / "data"
    done = subprocess.run([sys.executable, str(script), str(data_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"hook_left": []}  # the one-shot hook removed itself
    (proc,) = load_run(str(data_dir)).processes
    assert proc.info.role == "celery-main"  # worker_process_init outside a forked child names no pool child
    assert proc.info.ended is not None  # worker_process_shutdown flushed and stopped the agent
    assert [(t.seq, t.name, t.failed) for t in proc.tasks] == [
        (1, "shop.search", False), (2, "shop.search", False), (3, "shop.search", False), (4, "shop.search", True),
        (5, "shop.search", False), (6, "<unknown>", False)]
