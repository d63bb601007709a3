#!/usr/bin/env python3
"""The agent's own memory stays bounded and flat over many tasks.

Variant ``inproc`` (the main one), in a fresh Python process:

1. ``tracemalloc.start(FRAMES)``; a bilge store in a temp dir
   (``prepare_data_dir`` + ``start_run``); ``bilge.agent.start(AgentConfig(
   sample_interval=0.05, census_min_interval=0.2))``.
2. 20,000 simulated tasks: ``agent.task_started(key, name)``, a small
   non-leaking workload (``workload_app.process``: JSON, dicts, formatting,
   hashing), ``agent.task_finished(key)``.
3. Every 2,000 tasks a tracemalloc snapshot, filtered to code under the
   bilge package: ``Filter(True, "*/bilge/*")`` (where the innermost Python
   frame of an allocation is bilge's) and the same with ``all_frames=True``
   (any bilge frame on the stack, e.g. the agent thread's calls into the
   stdlib). Also RSS, the agent's buffer lengths and the store's size.

The slope (bytes per 1,000 tasks, least squares over the checkpoints after
the first) should be ~0: the agent keeps fixed-size deques (at most
``buffer_limit`` = 20,000 rows each) and drains them every flush.

Variant ``stalled`` does the same while the main thread holds the agent's
store lock, so no flush can happen: the buffers fill to their cap and then
count drops. That measures the worst-case bound of the buffers.

Variant ``celery`` (optional): a real prefork worker (-c 2) on a private
redis-server runs 20,000 tasks plain and under ``bilge run``; the RSS of the
two pool children is read (psutil) every 2,000 tasks.

    .venv/bin/python benchmarks/agent_memory.py                      # inproc + stalled + celery
    .venv/bin/python benchmarks/agent_memory.py --variants inproc --tasks 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
VARIANTS = ("inproc", "stalled", "celery")


def _rss() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else None


# ------------------------------------------------------------- in-process --
def child_inproc(tasks: int, every: int, frames: int, stalled: bool) -> dict:
    """Runs inside a fresh interpreter; returns the checkpoints."""
    import tracemalloc

    tracemalloc.start(frames)
    os.environ.setdefault("BENCH_PASSES", "1")
    sys.path.insert(0, HERE)
    import workload_app  # noqa: F401 - imports Celery too, as a worker would

    from bilge.agent import AgentConfig, start
    from bilge.store import sqlite as store

    inner = tracemalloc.Filter(True, "*/bilge/*")
    is_bilge: dict[str, bool] = {}

    def bilge_bytes(snap) -> tuple[int, int]:
        """Bytes whose innermost frame is bilge's, and whose any frame is.

        The same as ``Filter(True, "*/bilge/*")`` without and with
        ``all_frames=True``, but with the match cached per file name
        (``filter_traces`` runs fnmatch on every frame of every trace).
        """
        b_inner = b_any = 0
        for trace in snap.traces._traces:  # (domain, size, frames innermost first, total_nframe)
            size, frames = trace[1], trace[2]
            hit = False
            for k, (filename, _lineno) in enumerate(frames):
                m = is_bilge.get(filename)
                if m is None:
                    m = is_bilge[filename] = inner._match_frame(filename, 0)
                if m:
                    hit = True
                    if k == 0:
                        b_inner += size
                    break
            if hit:
                b_any += size
        return b_inner, b_any
    work = tempfile.mkdtemp(prefix="bilge-agentmem-")
    try:
        data = store.prepare_data_dir(os.path.join(work, "data"))
        run_id = store.start_run(data, "agent_memory benchmark")
        agent = start(AgentConfig(data_dir=data, run_id=run_id, sample_interval=0.05, census_min_interval=0.2))
        time.sleep(0.3)  # let the agent thread register its process
        db = os.path.join(data, "bilge.db")

        def checkpoint(done: int, t0: float) -> dict:
            snap = tracemalloc.take_snapshot()
            b_inner, b_any = bilge_bytes(snap)
            total = tracemalloc.get_traced_memory()[0]
            del snap
            db_bytes = sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s))
            return {"tasks": done, "elapsed_s": round(time.time() - t0, 1), "bilge_traced": b_inner,
                    "bilge_traced_any_frame": b_any, "total_traced": total, "rss": _rss(),
                    "buf_samples": len(agent._samples), "buf_tasks": len(agent._tasks),
                    "running": len(agent._running), "dropped_rows": agent.dropped_rows,
                    "agent_tasks_done": agent.tasks_done, "db_bytes": db_bytes}

        if stalled:
            # Hold the store lock: every flush times out, nothing is drained.
            agent._db_lock.acquire()
        t0 = time.time()
        points = [checkpoint(0, t0)]
        for i in range(1, tasks + 1):
            agent.task_started(i, "bench.process_order")
            workload_app.process(i)
            agent.task_finished(i)
            if i % every == 0:
                points.append(checkpoint(i, t0))
        if stalled:
            agent._db_lock.release()
        agent.stop(timeout=10.0)
        final = checkpoint(tasks, t0)
        final["after_stop"] = True
        snap = tracemalloc.take_snapshot()
        top = [{"where": str(s.traceback[0]), "bytes": s.size, "count": s.count}
               for s in snap.filter_traces([inner]).statistics("lineno")[:8]]
        del snap
        import sqlite3

        conn = sqlite3.connect(db)
        rows = {t: conn.execute("SELECT count(*) FROM %s" % t).fetchone()[0]
                for t in ("samples", "tasks", "censuses", "census_types", "agent_errors")}
        conn.close()
        return {"checkpoints": points, "final": final, "top_bilge_sites": top, "store_rows": rows,
                "tracemalloc_frames": frames}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_inproc(tasks: int, every: int, frames: int, stalled: bool, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "stalled" if stalled else "inproc",
           "--tasks", str(tasks), "--every", str(every), "--frames", str(frames)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILGE_") and k != "PYTHONTRACEMALLOC"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        return {"status": "error", "reason": "timeout after %.0fs" % timeout}
    if proc.returncode != 0:
        return {"status": "error", "reason": "rc=%s: %s" % (proc.returncode, err.decode(errors="replace")[-1500:])}
    res = json.loads(out)
    res["status"] = "ok"
    pts = res["checkpoints"]
    later = pts[1:]  # skip the pre-task point: first tasks warm caches (census sizes, statements)
    for key in ("bilge_traced", "bilge_traced_any_frame", "rss", "total_traced"):
        s = _slope([(p["tasks"], p[key]) for p in later])
        res["slope_%s_per_1k_tasks" % key] = None if s is None else s * 1000
    res["bilge_traced_max"] = max(p["bilge_traced"] for p in pts)
    res["bilge_traced_any_frame_max"] = max(p["bilge_traced_any_frame"] for p in pts)
    half = [p for p in pts if p["tasks"] >= tasks // 2]
    res["bilge_traced_second_half_range"] = (max(p["bilge_traced"] for p in half)
                                             - min(p["bilge_traced"] for p in half))
    return res


def inproc_table(name: str, res: dict) -> str:
    if res.get("status") != "ok":
        return "%s: ERROR %s" % (name, res.get("reason"))
    lines = ["**%s** (tracemalloc %d frames)" % (name, res["tracemalloc_frames"]), "",
             "| tasks | bilge traced (KB) | bilge any-frame (KB) | all traced (MB) | RSS (MB) | buf samples | "
             "buf tasks | dropped | store (KB) | elapsed (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in res["checkpoints"] + [res["final"]]:
        lines.append("| %s%s | %.1f | %.1f | %.2f | %.1f | %d | %d | %d | %.0f | %.1f |" % (
            p["tasks"], " (stopped)" if p.get("after_stop") else "", p["bilge_traced"] / 1024,
            p["bilge_traced_any_frame"] / 1024, p["total_traced"] / 2**20, p["rss"] / 2**20, p["buf_samples"],
            p["buf_tasks"], p["dropped_rows"], p["db_bytes"] / 1024, p["elapsed_s"]))
    lines.append("")
    lines.append("least-squares slope over the checkpoints after 0, bytes per 1,000 tasks: "
                 "bilge traced %+.0f, bilge any-frame %+.0f, "
                 "all traced %+.0f, RSS %+.0f; bilge traced in the second half varies by %.1f KB" % (
                     res["slope_bilge_traced_per_1k_tasks"], res["slope_bilge_traced_any_frame_per_1k_tasks"],
                     res["slope_total_traced_per_1k_tasks"], res["slope_rss_per_1k_tasks"],
                     res["bilge_traced_second_half_range"] / 1024))
    lines.append("store rows at the end: %s" % ", ".join("%s=%d" % kv for kv in res["store_rows"].items()))
    return "\n".join(lines)


# ----------------------------------------------------------------- celery --
def run_celery(tasks: int, every: int, rounds: int) -> dict:
    sys.path.insert(0, HERE)
    import overhead
    import psutil

    out: dict = {"runs": []}
    with overhead.RedisServer() as rs:
        client = rs.client()
        for rnd in range(1, rounds + 1):
            for mode in ("plain", "bilge"):
                points: list[dict] = []
                state = {"next": every}

                def probe(done: int, pid: int, state: dict = state, points: list = points) -> None:
                    if done < state["next"] and done < tasks:
                        return
                    state["next"] = (done // every + 1) * every
                    leaves = []
                    try:
                        for p in psutil.Process(pid).children(recursive=True):
                            if not p.children():
                                leaves.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                    points.append({"tasks": done, "child_rss": sorted(leaves)})

                rec = overhead.run_worker(mode, rs.url, client, tasks, max_wait=900.0, on_progress=probe)
                rec.pop("log_tail", None)
                rec.update(round=rnd, rss_points=points)
                out["runs"].append(rec)
                overhead.log("celery %s round %d: %s" % (mode, rnd, overhead._brief(rec)))
        client.close()
    for mode in ("plain", "bilge"):
        runs = [r for r in out["runs"] if r["mode"] == mode and r["status"] == "ok"]
        if not runs:
            continue
        r = runs[-1]
        pts = [(p["tasks"], sum(p["child_rss"]) / max(1, len(p["child_rss"]))) for p in r["rss_points"]
               if p["child_rss"] and p["tasks"] >= every]
        s = _slope(pts[1:]) if len(pts) > 2 else None
        out[mode] = {"child_rss_mean_end_mb": pts[-1][1] / 2**20 if pts else None,
                     "slope_child_rss_per_1k_tasks": None if s is None else s * 1000}
    return out


def celery_table(res: dict) -> str:
    runs = [r for r in res["runs"] if r["status"] == "ok"]
    if not runs:
        return "celery: no successful runs: %s" % [r.get("reason") for r in res["runs"]]
    lines = ["**celery** (prefork -c 2, per-child RSS in MB at each checkpoint)", "",
             "| tasks | " + " | ".join("%s r%d" % (r["mode"], r["round"]) for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    by = [{p["tasks"] // 1000 * 1000: p["child_rss"] for p in r["rss_points"]} for r in runs]
    keys = sorted(set().union(*by))
    for k in keys:
        cells = []
        for b in by:
            v = b.get(k)
            cells.append(" / ".join("%.1f" % (x / 2**20) for x in v) if v else "-")
        lines.append("| %d | %s |" % (k, " | ".join(cells)))
    lines.append("")
    for mode in ("plain", "bilge"):
        e = res.get(mode)
        if e and e["child_rss_mean_end_mb"] is not None:
            lines.append("%s: mean child RSS at end %.1f MB, slope %s bytes per 1,000 tasks" % (
                mode, e["child_rss_mean_end_mb"], "%+.0f" % e["slope_child_rss_per_1k_tasks"]
                if e["slope_child_rss_per_1k_tasks"] is not None else "n/a"))
    for r in runs:
        a = r.get("artifacts", {})
        if "bilge_db_bytes" in a:
            lines.append("bilge r%d: bilge.db %.0f KB (+WAL %.0f KB), %d task rows, %d samples, %d censuses, "
                         "%.1f tasks/s" % (r["round"], a["bilge_db_bytes"] / 1024, a["bilge_wal_bytes"] / 1024,
                                           a["rows_tasks"], a["rows_samples"], a["rows_censuses"], r["throughput"]))
        else:
            lines.append("%s r%d: %.1f tasks/s" % (r["mode"], r["round"], r["throughput"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=20000, help="tasks per variant (default 20000)")
    ap.add_argument("--every", type=int, default=2000, help="checkpoint interval in tasks (default 2000)")
    ap.add_argument("--frames", type=int, default=4, help="tracemalloc frames (default 4)")
    ap.add_argument("--stalled-tasks", type=int, default=24000,
                    help="tasks for the stalled variant (default 24000, past the 20,000-row cap)")
    ap.add_argument("--celery-rounds", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="subset of %s" % ",".join(VARIANTS))
    ap.add_argument("--json", default=os.path.join(RESULTS, "agent_memory.json"))
    ap.add_argument("--child", choices=("inproc", "stalled"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        json.dump(child_inproc(args.tasks, args.every, args.frames, args.child == "stalled"), sys.stdout)
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    t0 = time.time()
    out: dict = {"benchmark": "agent_memory", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "config": {"tasks": args.tasks, "every": args.every, "frames": args.frames,
                            "stalled_tasks": args.stalled_tasks, "celery_rounds": args.celery_rounds,
                            "variants": variants, "sample_interval": 0.05, "census_min_interval": 0.2}}
    tables = []
    if "inproc" in variants:
        out["inproc"] = run_inproc(args.tasks, args.every, args.frames, False, timeout=1200)
        tables.append(inproc_table("inproc", out["inproc"]))
        print(tables[-1] + "\n", flush=True)
    if "stalled" in variants:
        out["stalled"] = run_inproc(args.stalled_tasks, args.stalled_tasks // 8 if args.stalled_tasks > args.tasks
                                    else args.every, args.frames, True, timeout=1200)
        tables.append(inproc_table("stalled (store lock held: no flush)", out["stalled"]))
        print(tables[-1] + "\n", flush=True)
    if "celery" in variants:
        out["celery"] = run_celery(args.tasks, args.every, args.celery_rounds)
        tables.append(celery_table(out["celery"]))
        print(tables[-1] + "\n", flush=True)
    out["tables"] = tables
    out["wall_s"] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=2)
    print("wrote %s (%.0fs)" % (args.json, time.time() - t0), file=sys.stderr)
    return 0 if all(out[v].get("status", "ok") == "ok" for v in variants if isinstance(out.get(v), dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
