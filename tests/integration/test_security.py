"""Values stay private: a secret that every leaking object holds appears in nothing bilge writes or serves.

The billing worker archives each statement under a key that holds a
secret, with the secret in a field too (``BILLING_SECRET``). Under a
default ``bilge run --http`` the secret must appear nowhere: not in the
store's files, the report (JSON, text, HTML), ``bilge check``, ``/``,
``/metrics``, ``/health``, ``celery bilge status --findings`` or ``bilge
snapshot``. The control run (``--show-values``) proves the search can find
it: there the secret reaches ``bilge report --show-values``, and still
nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.brokers import producer_app, send_all, unique_queue
from support.jobs import RENDER_STATEMENT, billing_env, billing_jobs
from support.net import free_port
from support.workers import BILGE, Launcher, celery_command, worker_environment

pytestmark = pytest.mark.integration


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        return str(response.read().decode())


def run_cli(*args: str, env: dict[str, str] | None = None) -> str:
    """What the command printed: its output, then what it said on stderr."""
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=180, env=env)
    return done.stdout + "\n--- stderr ---\n" + done.stderr


def outputs_of_a_run(launcher: Launcher, redis_db: Any, artifacts: Path, name: str, secret: str,
                     bilge_args: list[str]) -> tuple[dict[str, str], Path]:
    """Everything bilge writes or serves about a leaking worker whose leak holds ``secret``, by where it came from."""
    port = free_port()
    queue = unique_queue("secret-" + name)
    env = worker_environment({**billing_env(redis_db.url, redis_db.url, queue), "BILLING_SECRET": secret,
                              "WORKER_REMOTE_CONTROL": "1"})
    data = artifacts / ("data-" + name)
    node = "%s-%s" % (name, queue)
    worker = launcher.start(celery_command("apps.billing", "prefork", 2, name=node, queue=queue), env, name, data,
                            bilge_args=["--http", "127.0.0.1:%d" % port, *bilge_args])
    send_all(producer_app(redis_db.url, queue), billing_jobs(4000, seed=9), queue)
    base = "http://127.0.0.1:%d" % port

    def found() -> bool:
        try:
            return RENDER_STATEMENT in get(base + "/metrics") and "bilge_finding_info{" in get(base + "/metrics")
        except OSError:
            return False

    worker.wait_for(found, 180, "a finding in /metrics", interval=2)
    out = {path: get(base + path) for path in ("/metrics", "/", "/?part=main", "/health")}
    celery = [sys.executable, "-m", "celery", "-A", "apps.billing", "bilge", "status", "--findings", "--timeout", "5"]
    out["celery bilge status --findings"] = run_cli(*celery, env=env)
    out["celery bilge status --findings --format json"] = run_cli(*celery, "--format", "json", env=env)
    for fmt in ("json", "text"):
        out["bilge snapshot --format " + fmt] = run_cli(*BILGE, "snapshot", "--all", "--data-dir", str(data),
                                                        "--format", fmt)
    assert worker.terminate() == 0
    for fmt in ("json", "text", "html"):
        out["bilge report --format " + fmt] = run_cli(*BILGE, "report", "--data-dir", str(data), "--format", fmt)
    out["bilge check"] = run_cli(*BILGE, "check", "--data-dir", str(data), "--format", "json")
    report = json.loads(out["bilge report --format json"].split("\n--- stderr ---\n")[0])
    assert report["findings"] and report["findings"][0]["task"] == RENDER_STATEMENT, report["findings"]
    assert "_STATEMENT_ARCHIVE" in (report["findings"][0]["holder"] or "")
    (artifacts / ("outputs-%s.json" % name)).write_text(json.dumps(out, indent=1))
    return out, data


def test_a_secret_in_the_leaking_objects_appears_in_no_output(launcher: Launcher, redis_db: Any,
                                                              artifacts: Path) -> None:
    secret = "sk-live-" + uuid.uuid4().hex
    out, data = outputs_of_a_run(launcher, redis_db, artifacts, "default", secret, [])
    assert len(out) == 12
    assert [where for where, text in out.items() if secret in text] == []
    files = sorted(p for p in data.iterdir() if p.is_file())
    assert files and [p.name for p in files if secret.encode() in p.read_bytes()] == []

    # Control: captured with --show-values, the secret reaches `bilge report --show-values` and nothing else.
    time.sleep(1)
    shown, data = outputs_of_a_run(launcher, redis_db, artifacts, "shown", secret, ["--show-values"])
    assert [where for where, text in shown.items() if secret in text] == []
    revealed = run_cli(*BILGE, "report", "--data-dir", str(data), "--show-values", "--format", "json")
    assert secret in revealed, "the control run never captured the secret: the search proves nothing"
