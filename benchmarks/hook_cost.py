"""What bilge's per-task hooks cost a real task, measured in one process with the hooks on and off in turns.

A worker-to-worker comparison on this 2-vCPU VM moves by several percent
between runs; the hooks' cost is a few percent of a 1 ms task. Here one
process runs the workload's own task bodies (``workload_app.py``, the three
shapes) with a live agent (its thread, census and flushes running), in
blocks of B tasks that alternate between "hooks off" (the task alone) and
"hooks on" (``task_started``/``task_finished`` around it, as the Celery
signals call them). Each "on" block is paired with the "off" block before
it, so both see the same machine state; the cost is the median of the
pairs' differences in the task thread's CPU time per task. A second "off"
variant (A/A control) shows the noise floor.

Young and old are reported separately: the agent reads memory after every
task of a process's first ``FULL_READ_TASKS`` tasks, then after one task in
about N (``bilge.agent.watch``).

    .venv/bin/python benchmarks/hook_cost.py                      # every shape, ~2 min
    .venv/bin/python benchmarks/hook_cost.py --shapes short --out results/hook_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = ("short", "alloc", "bigheap")
NAMES = ("workload.a", "workload.b", "workload.c")


def measure(shape: str, block: int, cycles: int) -> dict:
    """Run ``cycles`` of (off, on, off-again) blocks; returns per-phase medians of the paired differences."""
    os.environ["BENCH_SHAPE"] = shape
    sys.path.insert(0, HERE)
    import workload_app

    from bilge.agent import _runtime
    from bilge.agent.watch import FULL_READ_TASKS
    from bilge.config import AgentConfig
    from bilge.store import sqlite as store

    work = {"short": workload_app.work_short, "alloc": workload_app.work_alloc,
            "bigheap": workload_app.work_bigheap}[shape]
    data_dir = tempfile.mkdtemp(prefix="bilge-hooks-")
    agent = _runtime.start(AgentConfig(data_dir=data_dir, run_id=store.start_run(data_dir, "hook_cost")))
    agent.set_role("celery-child")
    rows: list[dict] = []
    k = 0
    for cycle in range(cycles):
        times = {}
        for variant in ("off", "on", "off2"):
            t0 = time.thread_time()
            for _ in range(block):
                k += 1
                if variant == "on":
                    agent.task_started(k, NAMES[k % 3])
                work(k)
                if variant == "on":
                    agent.task_finished(k)
            times[variant] = (time.thread_time() - t0) / block
        rows.append({"cycle": cycle, "young": agent.tasks_done <= FULL_READ_TASKS, **times,
                     "read_every": agent.watch.read_every})
    agent.stop()
    out: dict = {"shape": shape, "block": block, "cycles": cycles, "heap_blocks": sys.getallocatedblocks(),
                 "agent_tasks": agent.tasks_done, "reported_hook_seconds": round(agent.hook_seconds, 4)}
    for phase, keep in (("young", True), ("old", False)):
        sel = [r for r in rows if r["young"] is keep]
        if not sel:
            continue
        base = statistics.median(r["off"] for r in sel)
        on = statistics.median(r["on"] - r["off"] for r in sel)
        aa = statistics.median(r["off2"] - r["off"] for r in sel)
        out[phase] = {"pairs": len(sel), "task_us": round(base * 1e6, 1), "hooks_us": round(on * 1e6, 1),
                      "hooks_share": round(on / base, 4), "a_a_us": round(aa * 1e6, 1),
                      "read_every": sel[-1]["read_every"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--block", type=int, default=0, help="tasks per block (default: ~0.3 s of work)")
    ap.add_argument("--tasks", type=int, default=9000, help="hooked tasks in all (young phase: the first 3000)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    results = []
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            print("unknown shape %r (one of %s)" % (shape, ", ".join(SHAPES)), file=sys.stderr)
            return 2
        block = args.block or {"short": 200, "alloc": 60, "bigheap": 60}[shape]
        # Each shape in its own process: a fresh agent, a young process.
        import subprocess

        code = ("import json, sys; sys.path.insert(0, %r); import hook_cost; "
                "print(json.dumps(hook_cost.measure(%r, %d, %d)))" % (HERE, shape, block, args.tasks // block))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        for phase in ("young", "old"):
            if phase in result:
                r = result[phase]
                print("%-8s %-5s task %7.1f us  hooks %+6.1f us (%5.2f %%)  A/A %+5.1f us  pairs %d  read 1 in %d"
                      % (shape, phase, r["task_us"], r["hooks_us"], 100 * r["hooks_share"], r["a_a_us"], r["pairs"],
                         r["read_every"]))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}, fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
