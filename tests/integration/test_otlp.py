"""`bilge run --otlp URL` pushes the metrics of a real prefork worker to an OTLP/HTTP receiver.

The receiver is an HTTP server that speaks OTLP/HTTP as a collector does:
``POST /v1/metrics`` with an ``ExportMetricsServiceRequest`` in protobuf,
parsed with the OpenTelemetry protocol's own classes, answered with an
``ExportMetricsServiceResponse``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.brokers import producer_app, send_all, unique_queue
from support.jobs import billing_env, billing_jobs
from support.workers import Launcher, celery_command, worker_environment

pytestmark = pytest.mark.integration


class Receiver:
    """Every data point received: (metric name, attributes, value), and the resources' attributes."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

        self.points: list[tuple[str, dict[str, str], float]] = []
        self.resources: list[dict[str, str]] = []
        self.content_types: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.content_types.add(self.headers["Content-Type"])
                request = metrics_service_pb2.ExportMetricsServiceRequest()
                request.ParseFromString(body)
                receiver.take(request)
                answer = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/metrics" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/v1/metrics" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, request: Any) -> None:
        for rm in request.resource_metrics:
            self.resources.append({a.key: a.value.string_value for a in rm.resource.attributes})
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    data = metric.gauge if metric.HasField("gauge") else metric.sum
                    for p in data.data_points:
                        value = p.as_double if p.HasField("as_double") else p.as_int
                        self.points.append((metric.name, {a.key: a.value.string_value for a in p.attributes},
                                            float(value)))

    def names(self) -> set[str]:
        return {name for name, _, _ in self.points}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def test_otlp_export_of_a_prefork_worker(launcher: Launcher, redis_db: Any, artifacts: Path,
                                         receiver: Receiver) -> None:
    """Every second the supervisor pushes RSS per process (role and slot attributes), gc counters by generation,
    verdicts and bilge's own cost, with service.name and host.name on the resource."""
    queue = unique_queue("otlp")
    env = worker_environment(billing_env(redis_db.url, redis_db.url, queue))
    worker = launcher.start(celery_command("apps.billing", "prefork", 2, name="otlp-" + queue, queue=queue), env,
                            "worker", artifacts / "data", bilge_args=["--otlp", receiver.url, "--otlp-interval", "1"])
    send_all(producer_app(redis_db.url, queue), billing_jobs(2000, seed=5), queue)

    def exported() -> bool:
        roles = {attrs.get("role") for name, attrs, _ in receiver.points if name == "process_resident_memory_bytes"}
        return {"celery-main", "celery-child"} <= roles and "bilge_process_verdict" in receiver.names()

    worker.wait_for(exported, 90, lambda: "OTLP points (got %s)" % sorted(receiver.names()), interval=0.5)
    time.sleep(1.5)
    (artifacts / "names.txt").write_text("\n".join(sorted(receiver.names())))
    assert receiver.content_types == {"application/x-protobuf"}
    assert receiver.resources[0]["service.name"] == "bilge" and receiver.resources[0]["host.name"]
    rss = [(attrs, v) for name, attrs, v in receiver.points if name == "process_resident_memory_bytes"]
    assert all(v > 10 * 2**20 and set(attrs) == {"hostname", "role", "slot"} for attrs, v in rss)
    assert {a["slot"] for a, _ in rss if a["role"] == "celery-child"} == {"0", "1"}
    gc_runs = [attrs for name, attrs, _ in receiver.points if name == "python_gc_collections"]
    assert {a["generation"] for a in gc_runs} == {"0", "1", "2"}
    assert {"bilge_agent_cpu_seconds", "bilge_recycles", "bilge_process_tasks"} <= receiver.names()
    assert worker.terminate() == 0
