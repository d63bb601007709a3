"""``bilge guard`` on the billing app: eager in-process and on a real prefork worker through Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.brokers import RedisDatabase, unique_queue
from support.jobs import billing_env

pytestmark = pytest.mark.integration

INTEGRATION_DIR = Path(__file__).resolve().parent


def guard(args: list[str], env: dict[str, str], artifacts: Path,
          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "bilge", "guard", "-A", "apps.billing", *args], capture_output=True,
                          text=True, cwd=INTEGRATION_DIR, timeout=timeout,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("BILGE_")}, **env})
    (artifacts / "guard.out").write_text(done.stdout)
    (artifacts / "guard.err").write_text(done.stderr)
    return done


def statement_calls(path: Path, count: int) -> Path:
    with path.open("w") as f:
        for job in range(count):
            f.write(json.dumps([job, 1000 + job % 4000, 16 + job % 8]) + "\n")
    return path


def test_eager_guard_names_the_leak_and_passes_the_benign_task(redis_db: RedisDatabase, artifacts: Path) -> None:
    """Eager mode runs the task through Celery's tracer in-process: the leaking task exits 1 with its holder and
    line; a benign task of the same app exits 0."""
    env = billing_env(redis_db.url, redis_db.url, unique_queue("guard-eager"))
    calls = statement_calls(artifacts / "calls.jsonl", 2000)

    leaking = guard(["--task", "billing.render_statement", "--args-file", str(calls), "--format", "json"], env,
                    artifacts)

    assert leaking.returncode == 1, leaking.stderr
    report = json.loads(leaking.stdout)
    assert report["verdict"] == "leak" and report["confirmed_after_calls"] <= 300
    finding = report["report"]["findings"][0]
    assert finding["holder"].startswith("apps.billing._STATEMENT_ARCHIVE[...]")
    # The statement's lines or the archive entry that keeps them.
    source = (INTEGRATION_DIR / "apps" / "billing.py").read_text().splitlines()
    lines = [i for i, text in enumerate(source, 1) if "body = [" in text or "_STATEMENT_ARCHIVE[number] =" in text]
    assert finding["location"].rsplit("/", 1)[-1] in ["billing.py:%d" % i for i in lines], finding["location"]
    benign = guard(["--task", "billing.convert_currency", "--args-json", "[7, 12345, \"SEK\"]"], env, artifacts)
    assert benign.returncode == 0, benign.stdout + benign.stderr
    assert "no-leak" in benign.stdout


def test_worker_guard_runs_the_calls_on_a_prefork_worker(redis_db: RedisDatabase, artifacts: Path) -> None:
    """--worker sends the calls to a real prefork worker under `bilge run` through Redis and exits 1 with
    `bilge report`'s diagnosis, which names the task."""
    env = billing_env(redis_db.url, redis_db.url, unique_queue("guard-worker"))
    calls = statement_calls(artifacts / "calls.jsonl", 1600)

    done = guard(["--task", "billing.render_statement", "--args-file", str(calls), "--calls", "1600", "--worker",
                  "--broker", redis_db.url, "--workdir", str(artifacts / "work"), "--format", "json"], env, artifacts)

    assert done.returncode == 1, done.stdout[-2000:] + done.stderr
    report = json.loads(done.stdout)
    assert report["mode"] == "worker" and report["calls"] >= 1600
    assert report["report"]["verdict"] == "leak", report["report"]["reason"]
    assert report["report"]["findings"][0]["task"] == "billing.render_statement"
    children = [p for p in report["report"]["processes"] if p["role"] == "celery-child"]
    assert len(children) == 2 and sum(p["tasks_observed"] for p in children) >= 1600
