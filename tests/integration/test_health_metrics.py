"""Health and Prometheus metrics of a running prefork worker on Redis, scraped over HTTP; `bilge check` exit codes."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.billing_run import BillingSetup, run_billing
from support.brokers import producer_app, unique_queue
from support.jobs import billing_jobs
from support.net import free_port
from support.workers import BILGE, Launcher, Worker

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, list[Any]]:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def bilge_check(data_dir: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BILGE, "check", "--data-dir", str(data_dir), *args], capture_output=True, text=True,
                          timeout=120)


def test_running_worker_serves_metrics_per_process_and_health(launcher: Launcher, redis_db: Any,
                                                              artifacts: Any) -> None:
    """While a leaking 2-child prefork worker runs: /metrics has RSS, USS, heap, fds, gc and tasks for the main
    process and both children, labelled by hostname, role and slot (pids only on bilge_process_info); /health
    answers JSON; `bilge check` says degraded (5), and failing (6) against a hard limit the children are about
    to reach; after the run, failing (worker gone)."""
    queue = unique_queue("metrics")
    setup = BillingSetup(producer_app(redis_db.url, queue), redis_db.url, redis_db.client, redis_db.url, queue)
    data_dir = artifacts / "data"
    port = free_port()
    seen: dict[str, Any] = {}

    def while_running(worker: Worker) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            metrics = scrape(port)
            roles = {s.labels["role"] for s in metrics.get("process_resident_memory_bytes", [])}
            tasks = [s for s in metrics.get("bilge_process_tasks", []) if s.name.endswith("_total")]
            if {"celery-main", "celery-child"} <= roles and sum(s.value for s in tasks) >= 1500:
                seen["metrics"] = metrics
                break
            time.sleep(0.5)
        seen["health"] = health(port)
        seen["check"] = bilge_check(data_dir)
        seen["check_limit"] = bilge_check(data_dir, "--hard-limit", "1MiB", "--format", "json")

    outcome = run_billing(launcher, setup, billing_jobs(6000), "prefork", 2, data_dir=data_dir,
                          while_running=while_running, bilge_args=["--http", "127.0.0.1:%d" % port], timeout=300)
    assert outcome.exit_code == 0, outcome.worker.log_tail()

    metrics = seen.get("metrics")
    assert metrics, "the worker's processes never all showed up in /metrics"
    rss = metrics["process_resident_memory_bytes"]
    children = [s for s in rss if s.labels["role"] == "celery-child"]
    assert len(children) == 2 and all(s.value > 10 * 2**20 for s in rss)
    # A child's slot is its index in the pool; the pid is only on the info series.
    assert sorted(s.labels["slot"] for s in children) == ["0", "1"], children
    assert [s.labels["slot"] for s in rss if s.labels["role"] == "celery-main"] == ["main"]
    assert all(s.labels["hostname"] and "pid" not in s.labels for s in rss)
    info = metrics["bilge_process_info"]
    assert len(info) == 3 and all(s.labels["pid"].isdigit() for s in info)
    slots = {(s.labels["role"], s.labels["slot"]) for s in rss}
    assert {(s.labels["role"], s.labels["slot"]) for s in metrics["bilge_process_unique_memory_bytes"]} <= slots
    assert metrics["bilge_process_python_heap_blocks"] and metrics["process_open_fds"]
    gc_runs = [s for s in metrics["python_gc_collections"] if s.name.endswith("_total")]
    assert {s.labels["generation"] for s in gc_runs} == {"0", "1", "2"}
    assert any(s.value > 0 for s in gc_runs if s.labels["role"] == "celery-child")
    verdicts = metrics["bilge_process_verdict"]
    assert all(s.labels["verdict"] in ("leak", "no-leak", "inconclusive") for s in verdicts)

    code, answer = seen["health"]
    assert code in (200, 503) and answer["status"] in ("healthy", "degraded", "failing")
    # By 1500 tasks the children's leak (~2 KB per task) is confirmed; no limit is in sight by default.
    assert seen["check"].returncode == 5, seen["check"].stdout + seen["check"].stderr
    assert seen["check"].stdout.startswith("degraded: ")
    limited = seen["check_limit"]
    assert limited.returncode == 6 and json.loads(limited.stdout)["status"] == "failing", limited.stdout

    after = bilge_check(data_dir)
    assert after.returncode == 6 and after.stdout.startswith("failing: the run ended"), after.stdout
