#!/usr/bin/env python3
"""The soak: a prefork worker under ``bilge run --recycle --http`` through a long mixed workload, then the
same workload without bilge.

``soak_app`` (-c 4, Redis, ``acks_late``): one leaky task among warm-ups, big transients, failing-and-retried
tasks and plain ones; the leaky children are recycled at ``--soft-limit``. All jobs are queued first; each
run is timed from the worker's start to the last job's completion. Reported:

- exactly once: every job id completed once (``completed`` hash), whatever its retries and recycles;
- agent errors (the store's ``errors`` table), recycles, bilge's own CPU by stage;
- per pool child: RSS at its first and last sample, the leaky task's calls it ran, and its RSS growth
  beyond what those calls were fed (``SOAK_LEAK_BYTES`` each): what the agent, the allocator and the other
  tasks added;
- the store's size and its growth per hour of the run;
- at the end, while the worker still runs: ``/metrics`` and ``bilge report --format json`` response times;
- throughput against the plain run of the same jobs (``--no-plain`` skips it).

    .venv/bin/python benchmarks/soak.py --tasks 100000
    .venv/bin/python benchmarks/soak.py --tasks 3000 --out /tmp/soak.json   # the short variant

Writes benchmarks/results/soak.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
BILGE = os.path.join(os.path.dirname(sys.executable), "bilge")


def jobs(count: int) -> list[tuple[str, int]]:
    """``count`` jobs in a fixed interleaving of ``soak_app.MIX``."""
    from soak_app import MIX

    cycle = [name for name, n in MIX.items() for _ in range(n)]
    # Spread each name over the cycle instead of running it in blocks.
    cycle = [cycle[(i * 7) % len(cycle)] for i in range(len(cycle))]
    return [(cycle[i % len(cycle)], i) for i in range(count)]


def publish(broker: str, work: list[tuple[str, int]]) -> None:
    from celery import Celery

    producer = Celery("soak", broker=broker)
    with producer.connection_for_write() as conn:
        for name, job in work:
            producer.send_task(name, args=[job], connection=conn)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def store_size(data: str) -> int:
    return sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data) if f.startswith("bilge.db"))


def query(data: str, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect("file:%s?mode=ro" % os.path.join(data, "bilge.db"), uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def run(args: argparse.Namespace, work: list[tuple[str, int]], under_bilge: bool, folder: str) -> dict[str, Any]:
    import redis

    broker = redis.Redis.from_url(args.broker)
    results = redis.Redis.from_url(args.results)
    broker.flushdb()
    results.flushdb()
    publish(args.broker, work)
    env = dict(os.environ, SOAK_BROKER_URL=args.broker, SOAK_RESULTS_URL=args.results,
               SOAK_LEAK_BYTES=str(args.leak), PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    celery = [sys.executable, "-m", "celery", "-A", "soak_app", "worker", "-P", "prefork", "-c",
              str(args.concurrency), "--loglevel=WARNING", "--without-gossip", "--without-mingle",
              "--without-heartbeat"]
    data = os.path.join(folder, "data")
    port = free_port()
    command = ([BILGE, "run", "--data-dir", data, "--recycle", "--recycle-soft-limit", args.soft_limit,
                "--recycle-min-interval", "0", "--http", "127.0.0.1:%d" % port, "--"] + celery
               if under_bilge else celery)
    log = open(os.path.join(folder, "worker-%s.log" % ("bilge" if under_bilge else "plain")), "wb")  # noqa: SIM115
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out: dict[str, Any] = {"mode": "bilge" if under_bilge else "plain"}
    # Each pool child's RSS every few seconds, read from outside (psutil) in both runs alike, with the jobs it
    # had completed by then (soak_app counts them per pid): children compare at equal job counts.
    rss: dict[int, list[tuple[float, int, int]]] = {}
    cpu: dict[str, float] = {}  # CPU seconds by process (role:pid), at its last look
    next_look = 0.0
    try:
        while results.hlen("completed") < len(work):
            if proc.poll() is not None:
                raise SystemExit("the worker exited early (%s); see %s" % (proc.returncode, log.name))
            if time.monotonic() - started > args.timeout:
                raise SystemExit("timed out: %d of %d jobs completed" % (results.hlen("completed"), len(work)))
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + 5.0
                done = {int(k): int(v) for k, v in results.hgetall("per_pid").items()}
                cpu.update(tree_cpu(proc.pid, under_bilge))
                for pid, value in pool_rss(proc.pid, under_bilge).items():
                    rss.setdefault(pid, []).append((round(time.monotonic() - started, 1), value, done.get(pid, 0)))
            time.sleep(0.5)
        cpu.update(tree_cpu(proc.pid, under_bilge))
        out["seconds"] = round(time.monotonic() - started, 1)
        out["jobs_per_second"] = round(len(work) / out["seconds"], 1)
        if under_bilge:
            t = time.perf_counter()
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=120) as response:
                body = response.read()
            out["metrics_seconds"] = round(time.perf_counter() - t, 3)
            out["metrics_bytes"] = len(body)
            t = time.perf_counter()
            report = subprocess.run([BILGE, "report", "--data-dir", data, "--format", "json"], capture_output=True,
                                    text=True, timeout=600)
            out["report_seconds"] = round(time.perf_counter() - t, 2)
            out["report_exit"] = report.returncode
            with open(os.path.join(folder, "report.json"), "w") as f:
                f.write(report.stdout + report.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out["exit_code"] = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out["exit_code"] = proc.wait()
        log.close()
    completed = results.hgetall("completed")
    counts = [int(v) for v in completed.values()]
    out["jobs"] = len(work)
    out["completed_once"] = sum(1 for c in counts if c == 1)
    out["completed_twice_or_more"] = sum(1 for c in counts if c > 1)
    out["never_completed"] = len(work) - len(completed)
    out["flaky_executions"] = sum(int(v) for v in results.hgetall("executions").values())
    out["pool_rss"] = {str(pid): points for pid, points in rss.items()}
    # Where the run's CPU went, read from outside alike in both runs: the pool children (tasks and, under bilge,
    # the agent in them), Celery's main process, bilge's supervisor.
    out["cpu_seconds"] = {role: round(sum(v for k, v in cpu.items() if k.startswith(role + ":")), 1)
                          for role in ("children", "main", "supervisor")}
    out["child_cpu_ms_per_job"] = round(1000 * out["cpu_seconds"]["children"] / len(work), 3)
    if under_bilge:
        out.update(store_facts(data, args.leak, out["seconds"]))
    return out


def tree_cpu(pid: int, under_bilge: bool) -> dict[str, float]:
    """CPU seconds (user + system) so far of the supervisor (under bilge), Celery's main process and each pool
    child, keyed ``role:pid``."""
    import psutil

    out: dict[str, float] = {}
    try:
        top = psutil.Process(pid)
        main = top.children()[0] if under_bilge else top
        if under_bilge:
            out["supervisor:%d" % top.pid] = sum(top.cpu_times()[:2])
        out["main:%d" % main.pid] = sum(main.cpu_times()[:2])
        for child in main.children():
            out["children:%d" % child.pid] = sum(child.cpu_times()[:2])
    except (psutil.Error, IndexError):
        pass
    return out


def pool_rss(pid: int, under_bilge: bool) -> dict[int, int]:
    """RSS of each pool child of the worker started as ``pid`` (``bilge run``'s child is Celery's main process)."""
    import psutil

    try:
        main = psutil.Process(pid)
        if under_bilge:
            main = main.children()[0]
        return {c.pid: c.memory_info().rss for c in main.children()}
    except (psutil.Error, IndexError):
        return {}


def rss_table(run: dict[str, Any]) -> list[str]:
    """Per pool child seen for at least 60 s: RSS at 25 %, 50 % and 100 % of its observed life, in MiB."""
    lines = []
    for pid, points in sorted(run["pool_rss"].items()):
        if len(points) < 3 or points[-1][0] - points[0][0] < 60:
            continue
        first, last = points[0][0], points[-1][0]

        def at(share: float, points: list[Any] = points, first: float = first, last: float = last) -> float:
            when = first + share * (last - first)
            return next(p[1] for p in points if p[0] >= when) / 2**20

        lines.append("| %s | %s | %.0f-%.0f s | %.1f | %.1f | %.1f | %+.1f |" % (
            run["mode"], pid, first, last, at(0.25), at(0.5), at(1.0), at(1.0) - at(0.25)))
    return lines


# Job counts at which children are compared across the two runs.
MILESTONES = (1000, 2500, 5000, 10000, 15000, 20000)


def by_jobs(run: dict[str, Any], leak: int, share: float) -> dict[int, list[float]]:
    """Per milestone, each child's RSS (MiB) at its first sample with at least that many jobs completed, less
    what the leaky calls among them were fed (``share`` of its jobs are leaky, ``leak`` bytes each)."""
    out: dict[int, list[float]] = {}
    for points in run["pool_rss"].values():
        for milestone in MILESTONES:
            hit = next((p for p in points if len(p) > 2 and p[2] >= milestone), None)
            if hit is not None:
                out.setdefault(milestone, []).append((hit[1] - share * hit[2] * leak) / 2**20)
    return out


def compare_by_jobs(runs: list[dict[str, Any]], leak: int, share: float) -> list[dict[str, Any]]:
    """Bilge's children against plain ones at equal job counts: the median RSS beyond the leak of each, and
    their difference (what bilge's agent adds, once the workload's own growth is the same in both)."""
    tables = [by_jobs(r, leak, share) for r in runs]
    rows = []
    for milestone in MILESTONES:
        cells = [sorted(t.get(milestone, [])) for t in tables]
        if not all(cells):
            continue
        medians = [c[len(c) // 2] for c in cells]
        rows.append({"jobs": milestone, "children": [len(c) for c in cells],
                     "median_mib": [round(m, 1) for m in medians],
                     "range_mib": [[round(c[0], 1), round(c[-1], 1)] for c in cells],
                     "bilge_minus_plain_mib": round(medians[0] - medians[1], 1) if len(medians) == 2 else None})
    return rows


def store_facts(data: str, leak: int, seconds: float) -> dict[str, Any]:
    facts: dict[str, Any] = {"store_bytes": store_size(data)}
    facts["store_bytes_per_hour"] = round(facts["store_bytes"] / seconds * 3600)
    facts["agent_errors"] = [list(r) for r in query(data, "SELECT source, message, COUNT(*) FROM "
                                                          "agent_errors GROUP BY source, message")]
    facts["recycles"] = [list(r) for r in query(data, "SELECT status, COUNT(*) FROM recycles GROUP BY status")]
    facts["cost_cpu_seconds_by_stage"] = dict(query(data, "SELECT stage, ROUND(SUM(cpu_seconds), 3) FROM "
                                                          "stage_costs GROUP BY stage"))
    children = []
    for pid, pid_id in query(data, "SELECT pid, id FROM processes WHERE role = 'celery-child'"):
        rss = query(data, "SELECT rss FROM samples WHERE process_id = %d AND rss IS NOT NULL ORDER BY t" % pid_id)
        if len(rss) < 2:
            continue
        leaky = query(data, "SELECT COUNT(*) FROM tasks WHERE process_id = %d AND name = 'soak.leaky'" % pid_id)[0][0]
        tasks = query(data, "SELECT COUNT(*) FROM tasks WHERE process_id = %d" % pid_id)[0][0]
        first, last = rss[0][0], rss[-1][0]
        # After its warm-up (the LRU cache filling, the allocator's arenas growing to the transients' peak): the
        # sample a quarter into its life, and the leaky calls it ran from then on.
        quarter = query(data, "SELECT t, rss FROM samples WHERE process_id = %d AND rss IS NOT NULL ORDER BY t "
                              "LIMIT 1 OFFSET %d" % (pid_id, len(rss) // 4))[0]
        leaky_late = query(data, "SELECT COUNT(*) FROM tasks WHERE process_id = %d AND name = 'soak.leaky' AND "
                                 "ended >= %r" % (pid_id, quarter[0]))[0][0]
        children.append({"pid": pid, "tasks": tasks, "leaky_calls": leaky, "rss_first": first, "rss_last": last,
                         "growth": last - first, "fed": leaky * leak, "beyond_leak": last - first - leaky * leak,
                         "rss_after_warmup": quarter[1], "fed_after_warmup": leaky_late * leak,
                         "beyond_leak_after_warmup": last - quarter[1] - leaky_late * leak})
    facts["children"] = children
    return facts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--leak", type=int, default=4096, help="bytes each soak.leaky call keeps")
    ap.add_argument("--soft-limit", default="80MiB", help="bilge's recycle soft limit")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--results", default="redis://127.0.0.1:6379/11")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one run may take")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain run (no overhead figure)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "soak.json"))
    ap.add_argument("--keep", metavar="DIR", default=None, help="keep the bilge run's data dir and logs here")
    args = ap.parse_args()
    work = jobs(args.tasks)
    folder = tempfile.mkdtemp(prefix="bilge-soak-")
    try:
        runs = [run(args, work, True, folder)]
        if not args.no_plain:
            runs.append(run(args, work, False, folder))
        shutil.copy(os.path.join(folder, "report.json"), args.out.replace(".json", "-report.json"))
        if args.keep:
            shutil.copytree(folder, args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result: dict[str, Any] = {"args": vars(args), "runs": runs}
    if len(runs) == 2:
        result["throughput_bilge_over_plain"] = round(runs[0]["jobs_per_second"] / runs[1]["jobs_per_second"], 3)
    from soak_app import MIX

    result["by_jobs"] = compare_by_jobs(runs, args.leak, MIX["soak.leaky"] / sum(MIX.values()))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in runs[0].items() if k != "children"}, indent=2))
    print("\n| child pid | tasks | leaky calls | RSS first | RSS after warm-up | RSS last | fed after warm-up | "
          "growth beyond the leak after warm-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in runs[0].get("children", []):
        print("| %(pid)d | %(tasks)d | %(leaky_calls)d | %(rss_first)d | %(rss_after_warmup)d | %(rss_last)d | "
              "%(fed_after_warmup)d | %(beyond_leak_after_warmup)d |" % c)
    print("\n| run | pool child | seen | RSS at 25 % (MiB) | at 50 % | at the end | end - 25 % |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for run_ in runs:
        print("\n".join(rss_table(run_)))
    print("\n| jobs completed by the child | children (bilge, plain) | median RSS beyond the leak, MiB (bilge, plain) "
          "| range | bilge - plain |")
    print("|---:|---|---|---|---:|")
    for row in result["by_jobs"]:
        print("| %(jobs)d | %(children)s | %(median_mib)s | %(range_mib)s | %(bilge_minus_plain_mib)s |" % row)
    for run_ in runs:
        print("%s: CPU seconds %s, pool children %.3f ms per job" % (run_["mode"], run_["cpu_seconds"],
                                                                   run_["child_cpu_ms_per_job"]))
    if len(runs) == 2:
        print("\nthroughput bilge/plain: %.3f (%s vs %s jobs/s)" % (result["throughput_bilge_over_plain"],
                                                                     runs[0]["jobs_per_second"],
                                                                     runs[1]["jobs_per_second"]))
    bad = runs[0]["never_completed"] or runs[0]["completed_twice_or_more"] or runs[0]["agent_errors"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
