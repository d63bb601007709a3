"""Health and Prometheus metrics over HTTP, served by ``bilge run --http``.

The server runs in the ``bilge run`` supervisor, never inside the worker:
the agent stays standard-library only and the worker's processes pay
nothing for scrapes. Every process of the worker (main process and each
prefork child) writes its readings to the shared store, so one endpoint
covers them all, and prefork is safe by construction (no per-process
metric files to merge).

- ``GET /health``: the health JSON (``analysis.health``); HTTP 200 when
  healthy or degraded, 503 when failing.
- ``GET /metrics``: Prometheus text format, one series per live process,
  labelled ``hostname``, ``pid``, ``role``; bilge's own cost in each
  process as counters per ``stage`` and the budget it has left as gauges.

The run is re-read at most every ``READ_EVERY`` seconds and re-diagnosed
at most every ``DIAGNOSE_EVERY`` seconds, whatever the scrape rate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bilge.errors import BilgeError, ServeError
from bilge.model import LEAK, Diagnosis, ProcessData, RunData
from bilge.store import sqlite as store

READ_EVERY = 5.0
DIAGNOSE_EVERY = 30.0
VERDICTS = ("leak", "no-leak", "inconclusive")


class RunView:
    """The latest run of a data dir, re-read and re-diagnosed at bounded rates."""

    def __init__(self, data_dir: str, hard_limit: int | None, horizon: float) -> None:
        self.data_dir = data_dir
        self.hard_limit = hard_limit
        self.horizon = horizon
        self._lock = threading.Lock()
        self._run: tuple[float, RunData] | None = None
        self._diagnosis: tuple[float, Diagnosis] | None = None

    def run(self) -> RunData:
        with self._lock:
            now = time.monotonic()
            if self._run is None or now - self._run[0] > READ_EVERY:
                self._run = (now, store.load_run(self.data_dir))
            return self._run[1]

    def diagnosis(self) -> Diagnosis:
        from bilge.analysis import diagnose

        run = self.run()
        with self._lock:
            now = time.monotonic()
            if self._diagnosis is None or now - self._diagnosis[0] > DIAGNOSE_EVERY:
                self._diagnosis = (now, diagnose(run))
            return self._diagnosis[1]

    def health(self) -> dict[str, Any]:
        from bilge.analysis.health import assess

        return asdict(assess(self.run(), self.diagnosis(), self.hard_limit, self.horizon))


class StoreCollector(Collector):
    """Prometheus metrics of every live process of the run."""

    def __init__(self, view: RunView) -> None:
        self.view = view

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        run = self.view.run()
        diagnosis = {(d.pid, d.role): d for d in self.view.diagnosis().processes}
        labels = ["hostname", "pid", "role"]
        rss = GaugeMetricFamily("bilge_process_rss_bytes", "Resident set size (current, not peak).", labels=labels)
        uss = GaugeMetricFamily("bilge_process_uss_bytes", "Unique set size (memory only this process holds).",
                                labels=labels)
        heap = GaugeMetricFamily("bilge_process_python_heap_blocks", "Blocks held by Python's object allocator.",
                                 labels=labels)
        growth = GaugeMetricFamily("bilge_process_growth_bytes_per_hour",
                                   "Memory growth rate after warm-up (the verdict's trend).", labels=labels)
        verdict = GaugeMetricFamily("bilge_process_verdict", "1 for the process's current verdict.",
                                    labels=labels + ["verdict"])
        tasks = CounterMetricFamily("bilge_process_tasks_observed", "Tasks this process ran.", labels=labels)
        host = run.run.hostname or ""
        live = [p for p in run.processes if p.info.ended is None]
        for p in live:
            key = [host, str(p.info.pid), p.info.role]
            last = p.samples[-1] if p.samples else None
            if last is not None and last.rss is not None:
                rss.add_metric(key, last.rss)
                if last.heap_blocks is not None:
                    heap.add_metric(key, last.heap_blocks)
            recent_uss = next((s.uss for s in reversed(p.samples) if s.uss is not None), None)
            if recent_uss is not None:
                uss.add_metric(key, recent_uss)
            tasks.add_metric(key, len(p.tasks))
            d = diagnosis.get((p.info.pid, p.info.role))
            if d is not None:
                if d.growth_bytes_per_hour is not None:
                    growth.add_metric(key, d.growth_bytes_per_hour)
                for name in VERDICTS:
                    verdict.add_metric(key + [name], 1.0 if d.verdict == name else 0.0)
        recycles = CounterMetricFamily("bilge_recycles", "Pool children recycled, by whom and why.",
                                       labels=["hostname", "by", "reason"])
        by_reason: dict[tuple[str, str], int] = {}
        for p in run.processes:
            for r in p.recycles:
                if r.status == "requested":
                    reason = r.reason.split(":", 1)[0]
                    by_reason[("bilge", reason)] = by_reason.get(("bilge", reason), 0) + 1
            if p.info.exit_code == 155:
                by_reason[("celery", "max-per-child")] = by_reason.get(("celery", "max-per-child"), 0) + 1
        for (by, reason), n in sorted(by_reason.items()):
            recycles.add_metric([host, by, reason], n)
        leaking = GaugeMetricFamily("bilge_leaking_processes", "Live processes whose verdict is leak.",
                                    labels=["hostname"])
        leaking.add_metric([host], sum(1 for p in live if getattr(diagnosis.get((p.info.pid, p.info.role)),
                                                                    "verdict", None) == LEAK))
        yield from (rss, uss, heap, growth, verdict, tasks, recycles, leaking)
        yield from _cost_metrics(live, host)


def _cost_metrics(live: Sequence[ProcessData], host: str) -> tuple[GaugeMetricFamily | CounterMetricFamily, ...]:
    """bilge's own cost per live process and stage, and the budget each has left."""
    labels = ["hostname", "pid", "role"]
    cpu = CounterMetricFamily("bilge_agent_cpu_seconds", "CPU time bilge's own work took, by stage.",
                              labels=labels + ["stage"])
    slowed = CounterMetricFamily("bilge_agent_slowed_task_seconds",
                                 "Wall time tasks took beyond their usual duration because of bilge, by stage.",
                                 labels=labels + ["stage"])
    cpu_left = GaugeMetricFamily("bilge_agent_budget_cpu_left_seconds",
                                 "CPU seconds bilge's budgeted stages may still spend (at the last flush).",
                                 labels=labels)
    slowed_left = GaugeMetricFamily("bilge_agent_budget_slowed_left_seconds",
                                    "Seconds of slowed task time bilge's budgeted stages may still add "
                                    "(at the last flush).", labels=labels)
    for p in live:
        key = [host, str(p.info.pid), p.info.role]
        for c in p.cost.stages:
            cpu.add_metric(key + [c.stage], c.cpu_seconds)
            slowed.add_metric(key + [c.stage], c.slowed_seconds)
        if p.cost.budget is not None:
            cpu_left.add_metric(key, p.cost.budget.cpu_left)
            slowed_left.add_metric(key, p.cost.budget.slowed_left)
    return cpu, slowed, cpu_left, slowed_left


class MonitorServer:
    """``/health`` and ``/metrics`` on one address, in a daemon thread.

    Raises:
        ServeError: the address cannot be bound (in use, not local, no permission).
    """

    def __init__(self, data_dir: str, host: str, port: int, hard_limit: int | None = None,
                 horizon: float = 3600.0) -> None:
        view = RunView(data_dir, hard_limit, horizon)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(view))
        handler = _handler(view, registry)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ServeError("cannot serve health and metrics on %s:%d: %s; pick a free port with --http HOST:PORT"
                             % (host, port, exc.strerror or exc)) from exc
        self._server.daemon_threads = True
        bound_host, bound_port = self._server.server_address[:2]
        self.address = "%s:%d" % (str(bound_host), int(bound_port))
        self._thread = threading.Thread(target=self._server.serve_forever, name="bilge-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(view: RunView, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
            try:
                if self.path.split("?")[0] == "/health":
                    health = view.health()
                    self._send(503 if health["status"] == "failing" else 200, "application/json",
                               json.dumps(health).encode())
                elif self.path.split("?")[0] == "/metrics":
                    self._send(200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry))
                else:
                    self._send(404, "text/plain", b"bilge serves /health and /metrics\n")
            except BilgeError as exc:
                # No run recorded yet, a store being created: say so, do not crash the server.
                self._send(503, "application/json", json.dumps({"status": "unknown", "reason": str(exc)}).encode())

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # scrapes every few seconds would flood the worker's log

    return Handler
