#!/usr/bin/env python3
"""bilge's leak-aware recycling against Celery's ``worker_max_memory_per_child``.

Two workloads on a real prefork worker (-c 2) on Redis (``detection_app``):

- ``leaky``: one task in three keeps LEAK bytes (default 16 KiB) per call;
- ``large-parent``: no leak, but the main process touches PARENT MiB
  (default 150) before forking, so every child starts with it resident.

Three policies, each under ``bilge run`` (which records every process, its
exit code and every task in all modes, so they are counted the same way):

- ``none``: no recycling;
- ``celery``: ``--max-memory-per-child`` = LIMIT (Celery compares the
  child's peak RSS after each task);
- ``bilge``: ``bilge run --recycle --recycle-soft-limit LIMIT``.

LIMIT is set per workload from a fresh child's RSS (measured in the
``none`` run): fresh + HEADROOM MiB for ``leaky``; for ``large-parent`` a
limit just under a fresh child (the recycle-storm case). Metrics: recycles
(children that left with billiard's recycle code 155, or recycled by
bilge), tasks served, throughput (tasks/s, first start to last end), peak
RSS of any child and of the whole worker tree (psutil, every 0.2 s).

    .venv/bin/python benchmarks/recycling.py --tasks 4000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading

import detect_worker
import psutil
from detect_worker import HERE


def run_one(workload: str, policy: str, limit_mib: int | None, args: argparse.Namespace) -> dict:
    detect_worker.queue(args.broker, args.tasks, 7)
    work = tempfile.mkdtemp(prefix="bilge-recycling-")
    data = os.path.join(work, "data")
    env = {"DETECT_LEAK_BYTES": str(args.leak if workload == "leaky" else 0),
           "DETECT_PARENT_MB": str(args.parent if workload == "large-parent" else 0)}
    bilge_args = ["--no-explain"]
    celery_args = []
    if policy == "bilge":
        # No time-based rate limit, as Celery has none; one child at a time still holds.
        bilge_args += ["--recycle", "--recycle-soft-limit", "%dMiB" % limit_mib, "--recycle-min-interval", "0"]
    elif policy == "celery":
        celery_args = ["--max-memory-per-child", str(limit_mib * 1024)]
    peak = {"child": 0, "tree": 0}
    stop = threading.Event()
    with detect_worker.worker(args.broker, data, env, bilge_args, celery_args) as proc:
        sampler = threading.Thread(target=_sample_peaks, args=(proc.pid, peak, stop), daemon=True)
        sampler.start()
        try:
            detect_worker.wait_done(args.broker, data, args.tasks, args.timeout)
        finally:
            stop.set()
    first, last, served = detect_worker.query(data, "SELECT MIN(started), MAX(ended), COUNT(*) FROM tasks")[0]
    celery_recycles = detect_worker.query(data, "SELECT COUNT(*) FROM processes WHERE exit_code = 155")[0][0]
    bilge_recycles = detect_worker.query(data, "SELECT COUNT(*) FROM recycles WHERE status = 'requested'")[0][0]
    fresh = detect_worker.query(data, "SELECT s.rss FROM samples s JOIN processes p ON p.id = s.process_id "
                         "WHERE p.parent_id IS NOT NULL ORDER BY s.t LIMIT 1")
    children = detect_worker.query(data, "SELECT COUNT(*) FROM processes WHERE parent_id IS NOT NULL")[0][0]
    snapshots = detect_worker.query(data, "SELECT snapshot FROM recycles")
    evidence = [json.loads(s) for (s,) in snapshots] if bilge_recycles else []
    shutil.rmtree(work, ignore_errors=True)
    return {"workload": workload, "policy": policy, "limit_mib": limit_mib, "tasks_sent": args.tasks,
            "tasks_served": served, "throughput": served / (last - first) if served else 0.0,
            "recycles": celery_recycles + bilge_recycles, "children_started": children,
            "fresh_child_rss_mib": round(fresh[0][0] / 2**20, 1) if fresh else None,
            "peak_child_rss_mib": round(peak["child"] / 2**20, 1), "peak_tree_rss_mib": round(peak["tree"] / 2**20, 1),
            "bilge_recycle_evidence": [{k: e[k] for k in ("reason", "tasks_done", "growth_bytes_per_task")}
                                       for e in evidence]}


def _sample_peaks(pid: int, peak: dict, stop: threading.Event) -> None:
    root = psutil.Process(pid)
    while not stop.wait(0.2):
        try:
            procs = root.children(recursive=True)
            rss = [p.memory_info().rss for p in procs if "celery" in " ".join(p.cmdline())]
        except psutil.Error:
            continue
        if rss:
            peak["child"] = max(peak["child"], *rss)
            peak["tree"] = max(peak["tree"], sum(rss))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=4000)
    ap.add_argument("--leak", type=int, default=16384)
    ap.add_argument("--parent", type=int, default=150, help="MiB the large parent touches before forking")
    ap.add_argument("--headroom", type=int, default=15, help="MiB over a fresh child for the leaky workload's limit")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "recycling.json"))
    ap.add_argument("--workloads", default="leaky,large-parent")
    args = ap.parse_args()
    rows = []
    for workload in args.workloads.split(","):
        base = run_one(workload, "none", None, args)
        rows.append(base)
        fresh = base["fresh_child_rss_mib"] or 50
        # Leaky: some room over a fresh child. Large parent: just under a fresh child, as a user who sized the
        # limit from a small parent would have it; Celery's peak-RSS check then fires after every task.
        limit = int(fresh + args.headroom) if workload == "leaky" else int(fresh - 5)
        for policy in ("celery", "bilge"):
            rows.append(run_one(workload, policy, limit, args))
            print(json.dumps(rows[-1]), file=sys.stderr)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"tasks": args.tasks, "leak_bytes": args.leak, "parent_mib": args.parent, "runs": rows}, fh,
                  indent=2)
    print("| workload | policy | limit MiB | recycles | children started | tasks served | tasks/s | "
          "peak child MiB | peak tree MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %s | %s | %d | %d | %d/%d | %.0f | %.1f | %.1f |" % (
            r["workload"], r["policy"], r["limit_mib"] or "—", r["recycles"], r["children_started"], r["tasks_served"],
            r["tasks_sent"], r["throughput"], r["peak_child_rss_mib"], r["peak_tree_rss_mib"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
