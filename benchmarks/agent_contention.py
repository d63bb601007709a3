"""What the agent's own thread costs the host's task thread, in one process: plain, a baseline checkout, this one.

The agent's thread competes with the host's task thread for the GIL. Each
time it releases the GIL (an SQLite step or reset, a directory listing's
every entry, a file read), it must get it back, and a busy task thread
takes it back first, again and again: the agent waits, and every GIL
release of the task thread meanwhile wakes it for nothing (a futex wake,
an inter-processor interrupt: a VM exit on a VM). The task thread pays in
CPU for the agent's waiting, not only the agent in wall time.

Each run is a fresh process that runs the workload's task bodies
(``workload_app.py``) in a loop with a pipe write and read per task (a
prefork child's own I/O: its GIL releases), for N tasks: ``plain`` (no
agent), ``base`` (the agent of ``--base-src``, another checkout's src/) and
``this`` (the agent of this checkout), interleaved round by round. Reported:
the process's CPU per task (task thread plus agent thread), each mode's
ratio to the plain run of its round, and the agent's own account of its
stages (CPU, and the wall time of its longest run of each: waiting for the
GIL shows as wall far above CPU).

    .venv/bin/python benchmarks/agent_contention.py --base-src /tmp/base/src --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
NAMES = ("workload.a", "workload.b", "workload.c")

CHILD = r"""
import json, os, sys, tempfile, time
sys.path.insert(0, %(here)r)
os.environ["BENCH_SHAPE"] = %(shape)r
import workload_app
work = getattr(workload_app, "work_" + %(shape)r)
names = %(names)r
agent = None
if %(agent)r:
    from bilge.agent import _runtime
    from bilge.config import AgentConfig
    from bilge.store import sqlite as store
    data = tempfile.mkdtemp(prefix="bilge-contention-")
    agent = _runtime.start(AgentConfig(data_dir=data, run_id=store.start_run(data, "contention")))
    agent.set_role("celery-child")
    time.sleep(0.3)
r, w = os.pipe()
n = %(tasks)d
t0, p0 = time.thread_time(), time.process_time()
for k in range(n):
    os.write(w, b"x" * 64)
    os.read(r, 64)
    if agent is not None:
        agent.task_started(k, names[k %% 3])
    work(k)
    if agent is not None:
        agent.task_finished(k)
out = {"thread_us": (time.thread_time() - t0) / n * 1e6, "process_us": (time.process_time() - p0) / n * 1e6}
if agent is not None:
    status = agent.status()
    out["stage_cpu_s"] = status["cost_cpu_seconds"]
    out["longest_wall_s"] = status["longest_wall_seconds"]
    agent.stop()
print(json.dumps(out))
"""


def run(mode: str, shape: str, tasks: int, base_src: str) -> dict:
    env = dict(os.environ)
    src = {"plain": SRC, "base": base_src, "this": SRC}[mode]
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = CHILD % {"here": HERE, "shape": shape, "names": NAMES, "agent": mode != "plain", "tasks": tasks}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError("%s run failed:\n%s" % (mode, done.stderr[-2000:]))
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-src", required=True, help="another checkout's src/ (the baseline agent)")
    ap.add_argument("--shape", default="short", choices=("short", "alloc", "bigheap"))
    ap.add_argument("--tasks", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not os.path.isdir(os.path.join(args.base_src, "bilge")):
        print("--base-src must hold a bilge package (a checkout's src/): %s" % args.base_src, file=sys.stderr)
        return 2
    rounds = []
    for i in range(args.rounds):
        row = {mode: run(mode, args.shape, args.tasks, args.base_src) for mode in ("plain", "base", "this")}
        for mode in ("base", "this"):
            row[mode]["ratio"] = row[mode]["process_us"] / row["plain"]["process_us"]
        rounds.append(row)
        print("round %d: plain %.0f us/task, base x%.3f, this x%.3f" % (
            i + 1, row["plain"]["process_us"], row["base"]["ratio"], row["this"]["ratio"]), flush=True)
    summary = {mode: {"ratio_median": round(statistics.median(r[mode]["ratio"] for r in rounds), 4),
                      "ratios": [round(r[mode]["ratio"], 4) for r in rounds]} for mode in ("base", "this")}
    summary["this_below_base_rounds"] = sum(r["this"]["ratio"] < r["base"]["ratio"] for r in rounds)
    print(json.dumps(summary))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shape": args.shape,
                       "tasks": args.tasks, "base_src": args.base_src, "summary": summary, "rounds": rounds}, fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
