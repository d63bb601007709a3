#!/usr/bin/env python3
"""Detection speed: how many leaky calls bilge needs to confirm a leak.

For each leak size, runs a real prefork worker (-c 2) under ``bilge run`` on
Redis with three interleaved tasks (the leaky one ~1/3 of the calls), then
reads ``confirmed_after_tasks``/``confirmed_after_calls`` per child from
``bilge report --format json``. Size 0 is the benign control (must not be a
leak).

    .venv/bin/python benchmarks/detection.py --sizes 0,256,1024,4096 --tasks 3000
    .venv/bin/python benchmarks/detection.py --sizes 0,200,1024,4096 --repeat 5   # repeatability
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BILGE = os.path.join(os.path.dirname(sys.executable), "bilge")


def run_one(size, tasks, broker):
    import redis
    from celery import Celery

    client = redis.Redis.from_url(broker)
    client.flushdb()
    producer = Celery("detect", broker=broker)
    rng = random.Random(size)
    for i in range(tasks):
        producer.send_task(rng.choice(("detect.record_event", "detect.checksum", "detect.render")), args=[i])
    work = tempfile.mkdtemp(prefix="bilge-detect-")
    data = os.path.join(work, "data")
    env = dict(os.environ, DETECT_BROKER_URL=broker, DETECT_LEAK_BYTES=str(size),
               PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(os.path.join(work, "worker.log"), "wb")
    worker = subprocess.Popen([BILGE, "run", "--data-dir", data, "--", sys.executable, "-m", "celery", "-A",
                               "detection_app", "worker", "-P", "prefork", "-c", "2", "--loglevel=WARNING",
                               "--without-gossip", "--without-mingle", "--without-heartbeat"],
                              cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            # Celery's Redis transport keeps the queue in a list named after it.
            if client.llen("celery") == 0 and _recorded(data) >= tasks:
                break
            time.sleep(0.5)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
        log.close()
    report = json.loads(subprocess.run([BILGE, "report", "--data-dir", data, "--format", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    if not os.environ.get("DETECT_KEEP"):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("kept", work, file=sys.stderr)
    children = [p for p in report["processes"] if p["tasks_observed"]]
    top = report["findings"][0] if report["findings"] else {}
    return {"leak_bytes_per_call": size, "verdict": report["verdict"], "kind": report["kind"],
            "task": top.get("task"), "type": top.get("type"),
            "children": [{"pid": p["pid"], "verdict": p["verdict"], "tasks": p["tasks_observed"],
                          "confirmed_after_tasks": p["confirmed_after_tasks"],
                          "confirmed_after_calls": p["confirmed_after_calls"]} for p in children]}


def _recorded(data):
    import sqlite3

    try:
        conn = sqlite3.connect(os.path.join(data, "bilge.db"), timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,256,1024,4096")
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--repeat", type=int, default=1, help="run every size this many times (sizes interleaved)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "detection.json"))
    args = ap.parse_args()
    rows = []
    for run in range(1, args.repeat + 1):
        for s in args.sizes.split(","):
            rows.append(dict(run_one(int(s), args.tasks, args.broker), run=run))
    print("| run | leak B/call | verdict | task | type | per child: confirmed after tasks (leaky calls) |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["leak_bytes_per_call"], r["run"])):
        kids = "; ".join("%s (%s)" % (c["confirmed_after_tasks"], c["confirmed_after_calls"]) for c in r["children"])
        print("| %d | %d | %s | %s | %s | %s |" % (r["run"], r["leak_bytes_per_call"], r["verdict"], r["task"],
                                                  r["type"], kids))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"tasks": args.tasks, "repeat": args.repeat, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
