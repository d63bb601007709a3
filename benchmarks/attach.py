#!/usr/bin/env python3
"""`bilge attach` on processes in every awkward state: attached or cleanly refused, never hung, never killed.

Targets (each started fresh, attached 0.5 s after start, then detached):

- ``spin``: the main thread runs Python without pause;
- ``threads``: three threads spin, the main thread sleeps 10 ms at a time;
- ``gil-in-c``: the main thread holds the GIL in ``sorted()`` of 2M items (~0.3 s calls);
- ``sleeper``: the main thread sleeps 50 ms at a time (mostly inside ``clock_nanosleep``);
- ``idle``: the main thread is blocked in ``read()`` on stdin for good: must be *refused*
  (a memory-write attach runs only when the main thread runs Python);

on every interpreter given (``--pythons``, default every pyenv 3.10-3.13), ``--rounds`` times,
plus a real 2-child prefork Celery worker (this venv's Python) serving billing tasks from Redis at
400/s, attached (parent and children) and detached ``--celery-rounds`` times while it serves; at the
end every task must have run exactly once. After each attempt the target must still be alive and
make progress (its CPU time or its context switches grow; idle: it reads the byte we write and exits 0).

    .venv/bin/python benchmarks/attach.py --rounds 3 --celery-rounds 5

Prints a markdown table and writes benchmarks/results/attach.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from bilge import attach, live  # noqa: E402
from bilge.errors import AgentUnreachableError, AttachError  # noqa: E402
from bilge.store.sqlite import prepare_data_dir, start_run  # noqa: E402

TARGETS = {
    "spin": "while True:\n    sum(range(1000))\n",
    "threads": ("import threading, time\n"
                "def spin():\n    while True:\n        sum(range(1000))\n"
                "for _ in range(3):\n    threading.Thread(target=spin, daemon=True).start()\n"
                "while True:\n    time.sleep(0.01)\n"),
    "gil-in-c": "data = list(range(2_000_000, 0, -1))\nwhile True:\n    sorted(data)\n",
    "sleeper": "import time\nitems = []\nwhile True:\n    items.append('x' * 100)\n    time.sleep(0.05)\n",
    "idle": "import sys\nsys.exit(0 if sys.stdin.buffer.read(1) == b'!' else 3)\n",
}


def activity(pid: int) -> tuple[int, int]:
    """(CPU ticks, context switches) of the process's main thread: a sleeper switches, a spinner burns CPU."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    switches = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                switches += int(line.split()[1])
    return int(fields[11]) + int(fields[12]), switches


def one_attempt(python: str, kind: str, data_dir: str, run_id: int, work: str) -> dict[str, object]:
    script = os.path.join(work, "%s.py" % kind)
    with open(script, "w") as f:
        f.write(TARGETS[kind])
    target = subprocess.Popen([python, script], stdin=subprocess.PIPE)
    row: dict[str, object] = {"python": python, "kind": kind}
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        try:
            done = attach.attach(target.pid, data_dir, run_id)
            row.update(outcome="attached", seconds=done.seconds, tries=done.tries, how=done.how)
        except AttachError as exc:
            row.update(outcome="refused", seconds=time.monotonic() - t0, reason=str(exc))
        row["alive_after_attach"] = target.poll() is None
        if row["outcome"] == "attached":
            try:
                live.request(live.find(target.pid), "status", timeout=10)
                attach.detach(target.pid)
                row["detached"] = True
            except AgentUnreachableError as exc:
                row["detached"] = str(exc)
        time.sleep(0.3)
        if kind == "idle":
            target.stdin.write(b"!")  # type: ignore[union-attr]
            target.stdin.flush()  # type: ignore[union-attr]
            row["progress"] = target.wait(10) == 0
        else:
            cpu0, switches0 = activity(target.pid)
            time.sleep(0.5)
            cpu1, switches1 = activity(target.pid)
            row["progress"] = (cpu1 > cpu0 or switches1 > switches0) and target.poll() is None
    except Exception as exc:  # noqa: BLE001 - a benchmark row, not a crash
        row.update(outcome="error", reason="%s: %s" % (type(exc).__name__, exc))
    finally:
        if target.poll() is None:
            target.kill()
        target.wait()
    return row


def celery_attempts(rounds: int, data_dir: str, run_id: int) -> dict[str, object]:
    import redis
    from support.brokers import producer_app, send_all
    from support.jobs import billing_env, billing_jobs, executions, finished

    db = 13
    url = "redis://127.0.0.1:6379/%d" % db
    client = redis.Redis.from_url(url)
    client.flushdb()
    queue = "attach-bench"
    env = {**os.environ, **billing_env(url, url, queue),
           "PYTHONPATH": os.path.join(ROOT, "tests", "integration")}
    env = {k: v for k, v in env.items() if not k.startswith("BILGE_")}
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "apps.billing", "worker", "-P", "prefork",
                               "-c", "2", "--loglevel=WARNING", "--without-gossip", "--without-mingle",
                               "--without-heartbeat", "-Q", queue], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    total = 400 * (8 * rounds + 10)
    jobs = billing_jobs(total)
    stop = threading.Event()

    def publish() -> None:
        app = producer_app(url, queue)
        for start in range(0, total, 40):
            send_all(app, jobs[start:start + 40], queue)
            time.sleep(0.1)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    rows: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + 60
        while finished(client) < 400 and time.monotonic() < deadline:
            time.sleep(0.1)
        import psutil

        main = psutil.Process(worker.pid)
        for _ in range(rounds):
            children = [c.pid for c in main.children()]
            for pid, role in [(worker.pid, "celery-main")] + [(c, "celery-child") for c in children]:
                try:
                    done = attach.attach(pid, data_dir, run_id, role)
                    rows.append({"python": "celery prefork", "kind": role, "outcome": "attached",
                                 "seconds": done.seconds, "tries": done.tries, "how": done.how})
                except AttachError as exc:
                    rows.append({"python": "celery prefork", "kind": role, "outcome": "refused",
                                 "reason": str(exc)})
            time.sleep(1.0)
            for pid in [worker.pid] + children:
                try:
                    attach.detach(pid)
                except AgentUnreachableError:
                    pass
            time.sleep(1.0)
        publisher.join(300)
        deadline = time.monotonic() + 120
        while finished(client) < total and time.monotonic() < deadline:
            time.sleep(0.3)
        runs = executions(client)
        lost = total - len(runs)
        twice = sum(1 for n in runs.values() if n > 1)
    finally:
        stop.set()
        os.killpg(worker.pid, 15)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
        client.flushdb()
    return {"rows": rows, "tasks": total, "lost": lost, "ran_twice": twice}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_pythons = sorted(glob.glob("/root/.pyenv/versions/3.1[0-3].*/bin/python3"))
    parser.add_argument("--pythons", nargs="+", default=default_pythons)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--celery-rounds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "attach.json"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bilge-attach-bench-")
    data_dir = prepare_data_dir(os.path.join(work, "data"))
    run_id = start_run(data_dir, "benchmarks/attach.py")
    rows = []
    for rnd in range(args.rounds):
        for python in args.pythons:
            for kind in TARGETS:
                row = one_attempt(python, kind, data_dir, run_id, work)
                row["round"] = rnd
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    celery = celery_attempts(args.celery_rounds, data_dir, run_id)
    rows += celery["rows"]  # type: ignore[arg-type]
    shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "attach", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": platform.platform(), "cpus": os.cpu_count(), "gdb": shutil.which("gdb"),
              "rows": rows, "celery": {k: v for k, v in celery.items() if k != "rows"}}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print("| target | python | attempts | attached | refused | errors | target alive and progressing after "
          "| seconds to attach: median / max |")
    print("|---|---|---|---|---|---|---|---|")
    cells: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in rows:
        version = str(row["python"]).split("/versions/")[-1].split("/")[0]
        cells.setdefault((str(row["kind"]), version), []).append(row)
    for (kind, version), group in cells.items():
        seconds = [float(r["seconds"]) for r in group if r.get("outcome") == "attached"]  # type: ignore[arg-type]
        alive = [r for r in group if r.get("progress", True) and r.get("alive_after_attach", True)]
        print("| %s | %s | %d | %d | %d | %d | %d/%d | %s |" % (
            kind, version, len(group), sum(r.get("outcome") == "attached" for r in group),
            sum(r.get("outcome") == "refused" for r in group), sum(r.get("outcome") == "error" for r in group),
            len(alive), len(group),
            "%.2f / %.2f s" % (statistics.median(seconds), max(seconds)) if seconds else "—"))
    c = result["celery"]
    print("\nCelery prefork under load: %d tasks, %d lost, %d ran twice." % (c["tasks"], c["lost"], c["ran_twice"]))


if __name__ == "__main__":
    main()
