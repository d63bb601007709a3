#!/usr/bin/env python3
"""What the explain stage costs: tracemalloc windows and holder searches in a leaking worker.

A real prefork worker (-c 2) under ``bilge run`` on Redis runs N tasks of
``detection_app`` (three interleaved tasks, one keeps LEAK bytes per call,
so both children turn suspect and open a window). Two modes, interleaved
over rounds, same queue contents:

- ``explain``: bilge as shipped;
- ``no-explain``: ``bilge run --no-explain`` (watching and the verdict only).

Measured from each run's store (bilge records every task with its start
and end in both modes) and from ``bilge report``:

- throughput = tasks / (last task end - first task start); the amortised
  overhead of the explain stage is median(no-explain) / median(explain) - 1;
- per window (explain mode): how long it stayed open, how many tasks ran in
  it, and their mean duration against the same process's tasks outside any
  window (the traced-task slowdown); holder searches: count and wall time;
- the direct estimate: the extra task time spent inside windows and holder
  searches, as a share of the run's capacity (both children, first task
  start to last task end).

    .venv/bin/python benchmarks/window_cost.py --tasks 20000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile

import detect_worker
from detect_worker import BILGE, HERE

MODES = ("explain", "no-explain")


def run_one(mode: str, tasks: int, leak: int, broker: str, seed: int) -> dict:
    detect_worker.queue(broker, tasks, seed)
    work = tempfile.mkdtemp(prefix="bilge-window-cost-")
    data = os.path.join(work, "data")
    switch = ["--no-explain"] if mode == "no-explain" else []
    with detect_worker.worker(broker, data, {"DETECT_LEAK_BYTES": str(leak)}, switch):
        detect_worker.wait_done(broker, data, tasks, 900)
    report = json.loads(subprocess.run([BILGE, "report", "--data-dir", data, "--format", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    result = {"mode": mode, **_measure(os.path.join(data, "bilge.db")), "verdict": report["verdict"],
              "task": (report["findings"] or [{}])[0].get("task"),
              "location": (report["findings"] or [{}])[0].get("location")}
    shutil.rmtree(work, ignore_errors=True)
    return result


def _measure(db: str) -> dict:
    conn = sqlite3.connect(db)
    try:
        tasks = conn.execute("SELECT process_id, started, ended FROM tasks ORDER BY process_id, started").fetchall()
        windows = conn.execute("SELECT process_id, started, ended, tasks, status FROM windows").fetchall()
        searches = conn.execute("SELECT DISTINCT process_id, started, t FROM holders").fetchall()
    finally:
        conn.close()
    first, last = min(t[1] for t in tasks), max(t[2] for t in tasks)
    # The run's capacity: two pool children for its whole length.
    busy = 2 * (last - first)
    per_window = []
    extra = 0.0
    for pid, w0, w1, _tasks, status in windows:
        inside = [t[2] - t[1] for t in tasks if t[0] == pid and w0 <= t[1] < w1]
        outside = [t[2] - t[1] for t in tasks if t[0] == pid and not (w0 <= t[1] < w1)]
        base = statistics.mean(outside) if outside else 0.0
        slow = statistics.mean(inside) / base if inside and base else None
        extra += sum(inside) - base * len(inside)
        per_window.append({"open_s": round(w1 - w0, 3), "tasks": len(inside), "status": status,
                           "traced_task_slowdown": round(slow, 2) if slow else None})
    search_s = [round(t1 - t0, 3) for _, t0, t1 in searches]
    return {"tasks": len(tasks), "throughput": len(tasks) / (last - first), "windows": per_window,
            "holder_searches_s": search_s,
            # Window tasks' extra time plus the searches' wall time (the GIL is held through a search, so
            # the child's task waits for it), over both children's time.
            "direct_share": (extra + sum(search_s)) / busy if busy else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--leak", type=int, default=4096, help="bytes kept per call of the leaky task")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "window_cost.json"))
    args = ap.parse_args()
    runs = []
    for r in range(args.rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            run = run_one(mode, args.tasks, args.leak, args.broker, seed=r)
            print("round %d %-10s %6.0f tasks/s windows=%s searches=%s direct=%.4f" % (
                r, mode, run["throughput"], run["windows"], run["holder_searches_s"], run["direct_share"] or 0),
                file=sys.stderr)
            runs.append(run)
    median = {m: statistics.median(x["throughput"] for x in runs if x["mode"] == m) for m in MODES}
    windows = [w for x in runs if x["mode"] == "explain" for w in x["windows"]]
    summary = {
        "tasks": args.tasks, "rounds": args.rounds, "leak_bytes": args.leak,
        "throughput_median": median,
        "amortised_overhead": median["no-explain"] / median["explain"] - 1,
        "direct_share_median": statistics.median(x["direct_share"] for x in runs if x["mode"] == "explain"),
        "window_open_s": [w["open_s"] for w in windows],
        "traced_task_slowdown": [w["traced_task_slowdown"] for w in windows],
        "runs": runs,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(summary, fh, indent=2)
    print("| mode | median tasks/s |\n|---|---|")
    for m in MODES:
        print("| %s | %.0f |" % (m, median[m]))
    print("\namortised overhead of the explain stage (throughput ratio - 1): %+.2f%%" % (
        100 * summary["amortised_overhead"]))
    print("direct estimate (extra task time in windows + searches / capacity): %.3f%%" % (
        100 * summary["direct_share_median"]))
    print("windows: open %s s; traced tasks %s x slower" % (summary["window_open_s"], summary["traced_task_slowdown"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
