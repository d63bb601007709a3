#!/usr/bin/env python3
"""How many series a recycling worker costs Prometheus: ``prometheus_tsdb_head_series`` over a long run.

A real prefork worker (``detection_app``, -c 2, Redis) under ``bilge run --http --recycle`` with a low
soft limit, fed a steady ``--rate`` of tasks (one in three keeps ``--leak`` bytes), so its children are
recycled every few minutes; a real Prometheus (Debian's package) scrapes it every ``--scrape`` seconds.
Every minute the benchmark reads, through Prometheus's HTTP API, the series it holds for job ``bilge``
(``count({job="bilge"})``), the head's total (``prometheus_tsdb_head_series``, Prometheus scraping
itself too) and the recycles so far. A bounded design shows series flat after the first minutes
while recycles keep coming: a child's successor takes its slot, so only ``bilge_process_info`` (which
carries the pid) gains a series per recycle.

    .venv/bin/python benchmarks/cardinality.py --minutes 60

Prints a table and writes benchmarks/results/cardinality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import detect_worker
from detect_worker import HERE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prom_query(port: int, expr: str) -> float | None:
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": expr}))
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            result = json.loads(response.read())["data"]["result"]
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else 0.0


def feed(broker: str, rate: float, stop: threading.Event) -> None:
    """Send ``rate`` tasks a second, in batches every second, until stopped."""
    from celery import Celery

    producer = Celery("detect", broker=broker)
    i = 0
    with producer.connection_for_write() as conn:
        while not stop.wait(1.0):
            for _ in range(int(rate)):
                producer.send_task(detect_worker.TASKS[i % 3], args=[i], connection=conn)
                i += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=60.0, help="tasks per second")
    ap.add_argument("--leak", type=int, default=32768, help="bytes one task in three keeps")
    ap.add_argument("--soft-limit", default="120MiB", help="bilge's recycle soft limit")
    ap.add_argument("--scrape", type=float, default=5.0, help="Prometheus scrape interval, seconds")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cardinality.json"))
    args = ap.parse_args()
    if shutil.which("prometheus") is None:
        sys.exit("prometheus is not installed: apt-get install prometheus")

    work = tempfile.mkdtemp(prefix="bilge-cardinality-")
    data = os.path.join(work, "data")
    http, prom = free_port(), free_port()
    config = os.path.join(work, "prometheus.yml")
    with open(config, "w") as f:
        f.write("global:\n  scrape_interval: %gs\nscrape_configs:\n"
                "  - job_name: bilge\n    static_configs:\n      - targets: ['127.0.0.1:%d']\n"
                "  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:%d']\n"
                % (args.scrape, http, prom))
    prometheus = subprocess.Popen(["prometheus", "--config.file=" + config, "--storage.tsdb.path=" + work + "/tsdb",
                                   "--web.listen-address=127.0.0.1:%d" % prom, "--log.level=warn"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    detect_worker.queue(args.broker, 0, 1)
    stop = threading.Event()
    rows = []
    bilge_args = ["--http", "127.0.0.1:%d" % http, "--recycle", "--recycle-soft-limit", args.soft_limit,
                  "--recycle-min-interval", "0", "--recycle-min-tasks", "200"]
    try:
        with detect_worker.worker(args.broker, data, {"DETECT_LEAK_BYTES": str(args.leak)}, bilge_args):
            feeder = threading.Thread(target=feed, args=(args.broker, args.rate, stop), daemon=True)
            feeder.start()
            started = time.monotonic()
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(60)
                row = {"minute": round((time.monotonic() - started) / 60, 1),
                       "bilge_series": prom_query(prom, 'count({job="bilge"})'),
                       "head_series": prom_query(prom, 'prometheus_tsdb_head_series{job="prometheus"}'),
                       "info_series": prom_query(prom, 'count(last_over_time(bilge_process_info[1h]))'),
                       "recycles": (detect_worker.query(data, "SELECT COUNT(*) FROM recycles WHERE status = "
                                                        "'requested'") or [(None,)])[0][0],
                       "tasks": (detect_worker.query(data, "SELECT COUNT(*) FROM tasks") or [(None,)])[0][0]}
                rows.append(row)
                print(row, flush=True)
            stop.set()
    finally:
        stop.set()
        prometheus.terminate()
        prometheus.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    result = {"args": vars(args), "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print("\n| minute | series (job bilge) | head series | info series seen in 1 h | recycles | tasks |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| %(minute)s | %(bilge_series)s | %(head_series)s | %(info_series)s | %(recycles)s | %(tasks)s |" % r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
