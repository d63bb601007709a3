#!/usr/bin/env python3
"""Throughput overhead of bilge vs plain, tracemalloc and memray on a real worker.

The same non-leaking workload (``workload_app.py``: ~1 ms JSON/dict/string/
hash task) runs on a real prefork Celery worker (``-P prefork -c 2``) whose
broker is a private redis-server on a free loopback port. For every run, N
tasks are queued *before* the worker starts; throughput is

    N / (t_last_end - t_first_start)

from the worker's own bookkeeping in Redis, so worker start-up and shutdown
are excluded. Modes run interleaved (plain, bilge, tracemalloc, memray,
plain, ...) for R rounds; per mode the report gives the median throughput and
``median_plain / median_mode`` (1.00 = no overhead).

    .venv/bin/python benchmarks/overhead.py                     # 4000 tasks x 5 rounds
    .venv/bin/python benchmarks/overhead.py --tasks 2000 --rounds 3 --modes plain,bilge

Modes:
  plain        python -m celery -A workload_app worker -P prefork -c 2 ...
  bilge        bilge run --data-dir TMP -- python -m celery ...
  tracemalloc  the plain command with PYTHONTRACEMALLOC=1 (1 frame)
  memray       python -m memray run --follow-fork -q -o TMP/x.bin -m celery ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PY = sys.executable
BIN = os.path.dirname(PY)
BILGE = os.path.join(BIN, "bilge")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MODES = ("plain", "bilge", "tracemalloc", "memray")
WORKER_ARGS = ["-A", "workload_app", "worker", "-P", "prefork", "-c", "2", "--loglevel=WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", "bench@%h"]
# Variables that would change what a mode measures.
SCRUB = ("PYTHONTRACEMALLOC", "PYTHONMALLOC", "PYTHONSTARTUP", "PYTHONPROFILEIMPORTTIME", "BILGE_DATA_DIR",
         "BILGE_RUN_ID", "BILGE_SAMPLE_INTERVAL", "BILGE_CENSUS_BUDGET", "BILGE_CENSUS_MIN_INTERVAL",
         "MEMRAY_FOLLOW_FORK")


def log(msg: str) -> None:
    print("[overhead %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# ------------------------------------------------------------------ redis --
def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private, non-persistent redis-server on a free loopback port.

    Never 6379's system instance; only the process started here is signalled.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.tmpdir = ""

    @property
    def url(self) -> str:
        return "redis://%s:%d/0" % (self.host, self.port)

    def __enter__(self) -> RedisServer:
        import redis

        self.tmpdir = tempfile.mkdtemp(prefix="bilge-bench-redis-")
        last = ""
        for _ in range(10):
            port = _free_port(self.host)
            if port == 6379:
                continue
            proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(port), "--bind", self.host, "--save", "", "--appendonly", "no",
                 "--dir", self.tmpdir, "--daemonize", "no", "--loglevel", "warning", "--protected-mode", "yes"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                start_new_session=True)
            deadline = time.time() + 10
            while time.time() < deadline and proc.poll() is None:
                try:
                    if redis.Redis(host=self.host, port=port, socket_timeout=0.5).ping():
                        self.proc, self.port = proc, port
                        return self
                except Exception:  # noqa: BLE001 - not up yet
                    time.sleep(0.05)
            last = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else "no PING"
            _stop_proc(proc)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        raise RuntimeError("could not start redis-server: %s" % last)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            _stop_proc(self.proc)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _stop_proc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def queue_tasks(broker: str, n: int) -> float:
    """Publish n tasks (fresh DB); returns the seconds it took."""
    from celery import Celery

    client = Celery("bench-producer", broker=broker)
    client.conf.update(task_serializer="json", task_ignore_result=True, broker_connection_retry_on_startup=True)
    t0 = time.time()
    with client.connection_for_write() as conn:
        with client.producer_or_acquire(None) as producer:
            for i in range(n):
                client.send_task("workload.process_order", args=(i,), producer=producer, connection=conn,
                                 ignore_result=True)
    client.close()
    return time.time() - t0


# ----------------------------------------------------------------- worker --
def build_command(mode: str, broker: str, work: str,
                  extra_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(extra_env or {})
    env["BENCH_BROKER_URL"] = broker
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    celery = [PY, "-m", "celery"] + WORKER_ARGS
    if mode == "plain":
        return celery, env
    if mode == "bilge":
        return [BILGE, "run", "--data-dir", os.path.join(work, "bilge-data"), "--"] + celery, env
    if mode == "tracemalloc":
        env["PYTHONTRACEMALLOC"] = "1"
        return celery, env
    if mode == "memray":
        return [PY, "-m", "memray", "run", "--follow-fork", "-q", "-f", "-o", os.path.join(work, "memray.bin"),
                "-m", "celery"] + WORKER_ARGS, env
    raise ValueError("unknown mode %r" % mode)


def _kill_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _tree_rss(pid: int) -> list[dict]:
    """pid, ppid, rss, name of the worker process and all its descendants."""
    import psutil

    out = []
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return out
    for p in procs:
        try:
            cmd = p.cmdline()
            out.append({"pid": p.pid, "ppid": p.ppid(), "rss": p.memory_info().rss,
                        "leaf": not p.children(), "cmd": " ".join(cmd)[:120]})
        except psutil.Error:
            continue
    return out


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of the worker and its descendants."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return total
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _busy_cpu() -> float:
    """CPU seconds the whole machine spent not idle."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def run_worker(mode: str, broker: str, client, n_tasks: int, stall_timeout: float = 60.0,
               max_wait: float = 300.0, on_progress=None, extra_env: dict[str, str] | None = None) -> dict:
    """Queue n_tasks, run one worker in ``mode`` until they are all done, stop it.

    ``on_progress(done, worker_pid)`` is called at every poll (for RSS probes);
    ``extra_env`` is added to the worker's environment (e.g. BILGE_* knobs).
    Returns the run's record; ``status`` is "ok" or "error".
    """
    client.flushdb()
    queue_s = queue_tasks(broker, n_tasks)
    work = tempfile.mkdtemp(prefix="bilge-bench-%s-" % mode)
    argv, env = build_command(mode, broker, work, extra_env)
    rec: dict = {"mode": mode, "tasks": n_tasks, "status": "ok", "queue_s": round(queue_s, 2)}
    logf = open(os.path.join(work, "worker.log"), "wb")
    t_spawn = time.time()
    proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        done, last_done, last_progress = 0, -1, time.time()
        cpu_start: tuple[int, float] | None = None
        while True:
            done = int(client.get("bench:done") or 0)
            now = time.time()
            if cpu_start is None and done > 0:
                cpu_start = (done, _tree_cpu(proc.pid), _busy_cpu(), now)
            if on_progress is not None:
                on_progress(done, proc.pid)
            if done >= n_tasks:
                break
            if done != last_done:
                last_done, last_progress = done, now
            if proc.poll() is not None:
                raise RuntimeError("worker exited (rc=%s) after %d/%d tasks" % (proc.returncode, done, n_tasks))
            if now - last_progress > stall_timeout:
                raise RuntimeError("no progress for %.0fs at %d/%d tasks" % (stall_timeout, done, n_tasks))
            if now - t_spawn > max_wait:
                raise RuntimeError("timeout after %.0fs at %d/%d tasks" % (max_wait, done, n_tasks))
            time.sleep(0.1)
        cpu_end = _tree_cpu(proc.pid)
        busy_end = _busy_cpu()
        t_first = float(client.get("bench:t_first"))
        t_last = float(client.get("bench:t_last"))
        child_cpu = {k.decode(): float(v) for k, v in client.hgetall("bench:cpu").items()}
        assert cpu_start is not None
        rec.update(
            # Pool children, exactly from first task start to last task end.
            child_cpu_us_per_task=sum(child_cpu.values()) / n_tasks * 1e6,
            child_cpu_s=child_cpu,
            # Whole tree (main process, children, wrapper), between two polls.
            tree_cpu_us_per_task=(cpu_end - cpu_start[1]) / max(1, n_tasks - cpu_start[0]) * 1e6,
            # Cores kept busy by everything else on the machine (other sessions, Redis, this harness).
            other_load=max(0.0, (busy_end - cpu_start[2]) - (cpu_end - cpu_start[1]))
            / max(1e-9, time.time() - cpu_start[3]),
            loadavg=os.getloadavg()[0],
            throughput=n_tasks / (t_last - t_first),
            measured_s=round(t_last - t_first, 3),
            startup_s=round(t_first - t_spawn, 2),
            processes=_tree_rss(proc.pid),
        )
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        rec.update(status="error", reason=str(exc))
    finally:
        rec["shutdown"] = _stop_worker(proc)
        logf.close()
        rec["artifacts"] = _artifacts(mode, work)
        if rec["status"] != "ok" or rec["shutdown"].get("escalated"):
            try:
                with open(os.path.join(work, "worker.log"), "rb") as fh:
                    rec["log_tail"] = fh.read()[-2000:].decode(errors="replace")
            except OSError:
                pass
        if os.environ.get("OVERHEAD_KEEP"):
            print("kept", work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return rec


def _stop_worker(proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    """SIGTERM (warm shutdown) the worker; SIGKILL its process group if needed."""
    info: dict = {"escalated": False}
    t0 = time.time()
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            info["escalated"] = True
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    info["shutdown_s"] = round(time.time() - t0, 2)
    info["returncode"] = proc.returncode
    # Pool children that outlived their parent (same session as the worker).
    deadline = time.time() + 5
    while _kill_group(proc.pid, 0) and time.time() < deadline:
        time.sleep(0.1)
    if _kill_group(proc.pid, signal.SIGKILL):
        info["stragglers_killed"] = True
    return info


def _artifacts(mode: str, work: str) -> dict:
    out: dict = {}
    if mode == "bilge":
        data = os.path.join(work, "bilge-data")
        db = os.path.join(data, "bilge.db")
        if os.path.exists(db):
            out["bilge_db_bytes"] = os.path.getsize(db)
            wal = db + "-wal"
            out["bilge_wal_bytes"] = os.path.getsize(wal) if os.path.exists(wal) else 0
            try:
                conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
                try:
                    for table in ("processes", "samples", "tasks", "censuses", "census_types", "agent_errors"):
                        out["rows_%s" % table] = conn.execute("SELECT count(*) FROM %s" % table).fetchone()[0]
                    out["roles"] = [r[0] for r in conn.execute("SELECT role FROM processes ORDER BY id")]
                    out["census_cpu_s"] = conn.execute(
                        "SELECT coalesce(sum(duration), 0) FROM censuses").fetchone()[0]
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                out["db_error"] = str(exc)
    elif mode == "memray":
        files = [f for f in os.listdir(work) if f.startswith("memray.bin")]
        out["memray_files"] = len(files)
        out["memray_bytes"] = sum(os.path.getsize(os.path.join(work, f)) for f in files)
    return out


# ---------------------------------------------------------------- summary --
def summarise(runs: list[dict], modes: list[str]) -> dict:
    by_mode: dict = {}
    for mode in modes:
        ok = [r["throughput"] for r in runs if r["mode"] == mode and r["status"] == "ok"]
        errors = sum(1 for r in runs if r["mode"] == mode and r["status"] != "ok")
        entry: dict = {"runs": len(ok), "errors": errors}
        if ok:
            entry.update(median=statistics.median(ok), min=min(ok), max=max(ok), all=[round(x, 1) for x in ok])
            for key in ("child_cpu_us_per_task", "tree_cpu_us_per_task"):
                vals = [r[key] for r in runs if r["mode"] == mode and r["status"] == "ok"]
                entry[key + "_median"] = statistics.median(vals)
                entry[key + "_all"] = [round(x, 1) for x in vals]
        by_mode[mode] = entry
    plain = by_mode.get("plain", {}).get("median")
    plain_cpu = by_mode.get("plain", {}).get("child_cpu_us_per_task_median")
    plain_tree = by_mode.get("plain", {}).get("tree_cpu_us_per_task_median")
    for entry in by_mode.values():
        if plain and entry.get("median"):
            entry["ratio"] = plain / entry["median"]
        if plain_cpu and entry.get("child_cpu_us_per_task_median"):
            entry["cpu_ratio"] = entry["child_cpu_us_per_task_median"] / plain_cpu
            entry["tree_cpu_ratio"] = entry["tree_cpu_us_per_task_median"] / plain_tree
    if "bilge" in by_mode:
        arts = [r["artifacts"] for r in runs if r["mode"] == "bilge" and r["status"] == "ok"]
        sizes = [a.get("bilge_db_bytes", 0) + a.get("bilge_wal_bytes", 0) for a in arts]
        if sizes:
            by_mode["bilge"]["db_bytes_median"] = statistics.median(sizes)
            by_mode["bilge"]["task_rows_median"] = statistics.median(a.get("rows_tasks", 0) for a in arts)
    if "memray" in by_mode:
        sizes = [r["artifacts"].get("memray_bytes", 0) for r in runs if r["mode"] == "memray" and r["status"] == "ok"]
        if sizes:
            by_mode["memray"]["capture_bytes_median"] = statistics.median(sizes)
    for mode in modes:
        leaves = [p["rss"] for r in runs if r["mode"] == mode and r["status"] == "ok"
                  for p in r.get("processes", []) if p["leaf"]]
        if leaves:
            by_mode[mode]["child_rss_median_mb"] = statistics.median(leaves) / 2**20
    return by_mode


def table(summary: dict, modes: list[str], n_tasks: int) -> str:
    lines = ["| mode | runs | median tasks/s | plain/mode | min tasks/s | max tasks/s | child CPU µs/task "
             "| mode/plain CPU | tree CPU µs/task | mode/plain tree CPU | child RSS (MB) | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        e = summary[mode]
        if not e.get("median"):
            lines.append("| %s | 0 | - | - | - | - | - | - | - | - | - | %d errors |" % (mode, e["errors"]))
            continue
        notes = []
        if mode == "bilge" and "db_bytes_median" in e:
            notes.append("bilge.db %.0f KB, %d task rows" % (e["db_bytes_median"] / 1024, e["task_rows_median"]))
        if mode == "memray" and "capture_bytes_median" in e:
            notes.append("capture %.1f MB" % (e["capture_bytes_median"] / 2**20))
        if e["errors"]:
            notes.append("%d errors" % e["errors"])
        lines.append("| %s | %d | %.1f | %s | %.1f | %.1f | %.0f | %s | %.0f | %s | %.1f | %s |" % (
            mode, e["runs"], e["median"], "%.3f" % e["ratio"] if "ratio" in e else "-", e["min"], e["max"],
            e["child_cpu_us_per_task_median"], "%.3f" % e["cpu_ratio"] if "cpu_ratio" in e else "-",
            e["tree_cpu_us_per_task_median"], "%.3f" % e["tree_cpu_ratio"] if "tree_cpu_ratio" in e else "-",
            e.get("child_rss_median_mb", 0.0), "; ".join(notes)))
    lines.append("")
    lines.append("%d tasks per run (tracemalloc: a quarter unless --tracemalloc-tasks); "
                 "throughput = tasks / (last task end - first task start); "
                 "plain/mode = median plain throughput / median mode throughput. "
                 "Child CPU = CPU time of the pool children (all their threads) from their first task start to "
                 "their last task end, per task; tree CPU = the whole process tree (main process, children, "
                 "wrapper) between the first and last progress polls, per task. CPU per task is robust to other "
                 "load on the machine; wall-clock throughput is not." % n_tasks)
    return "\n".join(lines)


def environment() -> dict:
    import celery

    info = {"python": platform.python_version(), "celery": celery.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform(), "redis_server": REDIS_SERVER}
    try:
        import memray

        info["memray"] = memray.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        import bilge

        info["bilge"] = getattr(bilge, "__version__", "?")
    except Exception:  # noqa: BLE001
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=4000, help="tasks per run (default 4000)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--tracemalloc-tasks", type=int, default=None,
                    help="tasks per tracemalloc run (default tasks/4: it is ~5x slower; throughput is a rate)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of %s" % ",".join(MODES))
    ap.add_argument("--warmup", type=int, default=1, help="plain runs before round 1, not counted (default 1)")
    ap.add_argument("--json", default=os.path.join(RESULTS, "overhead.json"), help="where to write results")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error("unknown modes: %s" % ", ".join(sorted(unknown)))
    if "bilge" in modes and not os.path.exists(BILGE):
        ap.error("bilge not found at %s (run with the venv's python)" % BILGE)

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, _terminate)  # so the finally blocks stop workers and Redis
    runs: list[dict] = []
    t0 = time.time()
    with RedisServer() as rs:
        client = rs.client()
        log("private redis at %s" % rs.url)
        for i in range(args.warmup):
            rec = run_worker("plain", rs.url, client, min(args.tasks, 1000))
            log("warm-up %d: %s" % (i + 1, _brief(rec)))
        for rnd in range(1, args.rounds + 1):
            for mode in modes:
                n = args.tasks
                if mode == "tracemalloc":
                    n = args.tracemalloc_tasks or max(1, args.tasks // 4)
                rec = run_worker(mode, rs.url, client, n)
                rec["round"] = rnd
                runs.append(rec)
                log("round %d %-11s %s" % (rnd, mode, _brief(rec)))
        client.close()

    summary = summarise(runs, modes)
    md = table(summary, modes, args.tasks)
    print(md)
    out = {"benchmark": "overhead", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "config": {"tasks": args.tasks, "tracemalloc_tasks": args.tracemalloc_tasks or max(1, args.tasks // 4),
                      "rounds": args.rounds, "modes": modes, "warmup": args.warmup,
                      "worker": "celery " + " ".join(WORKER_ARGS), "workload": "workload_app.process_order"},
           "environment": environment(), "wall_s": round(time.time() - t0, 1),
           "summary": summary, "table": md, "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=2)
    log("wrote %s (%.0fs)" % (args.json, time.time() - t0))
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def _brief(rec: dict) -> str:
    if rec["status"] != "ok":
        return "ERROR %s" % rec.get("reason")
    extra = ""
    a = rec.get("artifacts", {})
    if "bilge_db_bytes" in a:
        extra = " db=%.0fKB tasks=%s" % ((a["bilge_db_bytes"] + a["bilge_wal_bytes"]) / 1024, a.get("rows_tasks"))
    if "memray_bytes" in a:
        extra = " capture=%.1fMB" % (a["memray_bytes"] / 2**20)
    return ("%.1f tasks/s, child CPU %.0f us/task, tree %.0f us/task, other load %.2f cores "
            "(%.2fs measured, start-up %.1fs, shutdown %.1fs)%s") % (
        rec["throughput"], rec["child_cpu_us_per_task"], rec["tree_cpu_us_per_task"], rec["other_load"],
        rec["measured_s"], rec["startup_s"], rec["shutdown"]["shutdown_s"], extra)


if __name__ == "__main__":
    sys.exit(main())
