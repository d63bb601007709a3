#!/usr/bin/env python3
"""Overhead of bilge vs plain, tracemalloc and memray on a real worker, on three workload shapes.

A real prefork Celery worker (``-P prefork -c 2``) whose broker is a private
redis-server on a free loopback port runs ``workload_app.py`` in one of three
shapes (``--shapes``), each with and without a leak (``--leak``):

  short    ~1 ms tasks (JSON/dict/string/hash work on a few-KB order)
  alloc    ~4 ms allocation-heavy tasks (60 json.loads of a ~3 KB order, each indexed)
  bigheap  ~5 ms tasks in a worker holding 1,000,000 live gc-tracked objects
           built at import (before the pool forks)

The app has three task names (workload.a, .b, .c: the same work); with a leak
of L bytes, workload.b also keeps ~L bytes per call in a module-level list.
Tasks go to the three names in a seeded random order, identical in every run.

For every run, N tasks are queued *before* the worker starts; throughput is

    N / (t_last_end - t_first_start)

from the worker's own bookkeeping in Redis, so worker start-up and shutdown
are excluded. Each (shape, leak) block runs one uncounted plain warm-up, then
R rounds; within a round every mode runs once, the order rotated per round.
Per run: throughput, child CPU per task, task latency p50/p99 (each task's
task_prerun -> task_postrun interval, measured inside the worker), and for
bilge runs the verdict and bilge's self-reported cost (``processes[].cost``
of ``bilge report --format json``). Per block and mode: medians, plain/mode
ratios (of the medians, and the median of same-round pairs), CPU and latency
ratios, and bilge's reported cost against the measured extra child CPU.

    .venv/bin/python benchmarks/overhead.py                         # everything, 4000 tasks x 4 rounds
    .venv/bin/python benchmarks/overhead.py --tasks 20000 --modes plain,bilge      # the judged run
    .venv/bin/python benchmarks/overhead.py --estimate --tasks 20000               # how long, then exit

Modes:
  plain        python -m celery -A workload_app worker -P prefork -c 2 ...
  bilge        bilge run --data-dir TMP -- python -m celery ...
  tracemalloc  the plain command with PYTHONTRACEMALLOC=1 (1 frame)
  memray       python -m memray run --follow-fork -q -o TMP/x.bin -m celery ...
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PY = sys.executable
BIN = os.path.dirname(PY)
BILGE = os.path.join(BIN, "bilge")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MODES = ("plain", "bilge", "tracemalloc", "memray")
# Ablations of bilge (not in the default run): the always-on part alone
# (``--no-explain``), and the watch alone (no explain stage, no census).
ABLATIONS = ("bilge-noexplain", "bilge-watch")
# A plain worker that `bilge attach` joins once its pool children are up
# (the attach happens while the first tasks run: its pauses count).
ATTACHED = ("attached",)
# The same `bilge run` from another checkout (``--base-src DIR``: its src/
# goes first on PYTHONPATH), beside this one in the same interleaved run: a
# change's effect measured side by side instead of against an older file.
BASELINE = ("bilge-base",)
BASE_SRC: list[str] = []
# Modes with a bilge data dir: their reports carry verdicts and bilge's own cost.
BILGE_MODES = ("bilge",) + ABLATIONS + ATTACHED + BASELINE
# A/A control: a second plain worker, run and compared exactly like a tool's:
# its "overhead" is what the machine alone makes of two identical workers.
CONTROLS = ("plain-aa",)
SHAPES = ("short", "alloc", "bigheap")
LEAKS = ("none", "2048")
TASK_NAMES = ("workload.a", "workload.b", "workload.c")
CONCURRENCY = 2
WORKER_ARGS = ["-A", "workload_app", "worker", "-P", "prefork", "-c", str(CONCURRENCY), "--loglevel=WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", "bench@%h"]
# Variables that would change what a mode measures.
SCRUB = ("PYTHONTRACEMALLOC", "PYTHONMALLOC", "PYTHONSTARTUP", "PYTHONPROFILEIMPORTTIME", "BILGE_DATA_DIR",
         "BILGE_RUN_ID", "BILGE_SAMPLE_INTERVAL", "BILGE_CENSUS_BUDGET", "BILGE_CENSUS_MIN_INTERVAL",
         "MEMRAY_FOLLOW_FORK", "BENCH_SHAPE", "BENCH_LEAK", "BENCH_PASSES", "BENCH_ITEMS", "BENCH_SHORT_PASSES",
         "BENCH_ALLOC_ITEMS", "BENCH_ALLOC_REPS", "BENCH_HEAP_OBJECTS", "BENCH_BIG_PASSES", "BENCH_BIG_READS")

# For the time estimate before any run has been measured: plain throughput
# (tasks/s, idle 2-vCPU VM), each mode's slowdown, and the seconds a run
# spends outside its measured window (start-up, shutdown, bilge report).
NOMINAL_TPS = {"short": 480.0, "alloc": 320.0, "bigheap": 220.0}
MODE_FACTOR = {"plain": 1.0, "bilge": 1.08, "tracemalloc": 9.0, "memray": 1.5}
FIXED_S = {"plain": 3.5, "bilge": 4.5, "tracemalloc": 5.0, "memray": 4.5}
BIGHEAP_FIXED_S = {"plain": 1.5, "bilge": 2.0, "tracemalloc": 3.5, "memray": 1.5}


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


# Queue contents by (broker, n, names, seed): the broker's keys as DUMPed
# right after publishing, RESTOREd for later runs. Every run with the same
# parameters gets byte-identical messages, and a 20,000-task queue takes a
# fraction of a second instead of ~10 s of kombu publishing.
_QUEUE_SNAPSHOTS: dict[tuple, list[tuple[bytes, bytes]]] = {}


def queue_tasks(broker: str, n: int, names: tuple[str, ...] = ("workload.process_order",), seed: int = 0) -> float:
    """Publish n tasks into the (freshly flushed) broker; returns the seconds it took.

    With several names, each task goes to a name drawn from ``random.Random(seed)``.
    """
    import redis

    t0 = time.time()
    r = redis.Redis.from_url(broker)
    key = (broker, n, tuple(names), seed)
    snap = _QUEUE_SNAPSHOTS.get(key)
    try:
        if snap is not None:
            pipe = r.pipeline(transaction=False)
            for k, blob in snap:
                pipe.restore(k, 0, blob, replace=True)
            pipe.execute()
            return time.time() - t0
        from celery import Celery

        client = Celery("bench-producer", broker=broker)
        client.conf.update(task_serializer="json", task_ignore_result=True, broker_connection_retry_on_startup=True)
        rng = random.Random(seed)
        with client.connection_for_write() as conn:
            with client.producer_or_acquire(None) as producer:
                for i in range(n):
                    name = names[0] if len(names) == 1 else rng.choice(names)
                    client.send_task(name, args=(i,), producer=producer, connection=conn, ignore_result=True)
        client.close()
        keys = sorted(r.keys("*"))
        _QUEUE_SNAPSHOTS[key] = [(k, r.dump(k)) for k in keys]
        return time.time() - t0
    finally:
        r.close()


# ----------------------------------------------------------------- worker --
def build_command(mode: str, broker: str, work: str,
                  extra_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(extra_env or {})
    env["BENCH_BROKER_URL"] = broker
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    celery = [PY, "-m", "celery"] + WORKER_ARGS
    if mode in ("plain",) + CONTROLS + ATTACHED:
        return celery, env
    if mode in BILGE_MODES:
        options = [] if mode in ("bilge",) + BASELINE else ["--no-explain"]
        if mode in BASELINE:
            env["PYTHONPATH"] = BASE_SRC[0] + os.pathsep + env["PYTHONPATH"]
        if mode == "bilge-watch":
            # The census never comes again after the first.
            env["BILGE_CENSUS_MIN_INTERVAL"] = "1000000"
        return [BILGE, "run", "--data-dir", os.path.join(work, "bilge-data")] + options + ["--"] + celery, env
    if mode == "tracemalloc":
        env["PYTHONTRACEMALLOC"] = "1"
        return celery, env
    if mode == "memray":
        return [PY, "-m", "memray", "run", "--follow-fork", "-q", "-f", "-o", os.path.join(work, "memray.bin"),
                "-m", "celery"] + WORKER_ARGS, env
    raise ValueError("unknown mode %r" % mode)


def _attach_when_up(pid: int, work: str, rec: dict) -> None:
    """`bilge attach` the worker (main process and pool children) once both children exist."""
    import psutil

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(psutil.Process(pid).children()) >= 2:
                break
        except psutil.Error:
            return
        time.sleep(0.05)
    t0 = time.time()
    done = subprocess.run([BILGE, "attach", str(pid), "--data-dir", os.path.join(work, "bilge-data")],
                          capture_output=True, text=True, timeout=300)
    rec["attach"] = {"rc": done.returncode, "seconds": round(time.time() - t0, 2),
                     "output": (done.stdout + done.stderr)[-1500:]}


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
               max_wait: float = 300.0, on_progress=None, extra_env: dict[str, str] | None = None,
               task_names: tuple[str, ...] = ("workload.process_order",), seed: int = 0,
               startup_timeout: float = 180.0, start_together=None) -> dict:
    """Queue n_tasks, run one worker in ``mode`` until they are all done, stop it.

    ``on_progress(done, worker_pid)`` is called at every poll (for RSS probes);
    ``extra_env`` is added to the worker's environment (e.g. BENCH_SHAPE,
    BILGE_* knobs); ``task_names``/``seed`` choose the queued tasks.
    ``stall_timeout`` applies once tasks run, ``startup_timeout`` before the
    first one. ``start_together`` (a ``threading.Barrier``) is waited on
    between queueing and spawning, so side-by-side workers start at once.
    bilge runs also carry ``bilge`` (verdict and self-reported cost from
    ``bilge report --format json``). Returns the run's record;
    ``status`` is "ok" or "error".
    """
    t_begin = time.time()
    client.flushdb()
    queue_s = queue_tasks(broker, n_tasks, tuple(task_names), seed)
    work = tempfile.mkdtemp(prefix="bilge-bench-%s-" % mode)
    argv, env = build_command(mode, broker, work, extra_env)
    if start_together is not None:
        start_together.wait(timeout=600)
    rec: dict = {"mode": mode, "tasks": n_tasks, "status": "ok", "queue_s": round(queue_s, 2)}
    logf = open(os.path.join(work, "worker.log"), "wb")
    t_spawn = time.time()
    proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    attacher = None
    if mode in ATTACHED:
        attacher = threading.Thread(target=_attach_when_up, args=(proc.pid, work, rec), daemon=True)
        attacher.start()
    try:
        done, last_done, last_progress = 0, -1, time.time()
        cpu_start: tuple[int, float, float, float] | None = None
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
            if done == 0 and now - t_spawn > startup_timeout:
                raise RuntimeError("no task started %.0fs after spawning the worker" % startup_timeout)
            if done > 0 and now - last_progress > stall_timeout:
                raise RuntimeError("no progress for %.0fs at %d/%d tasks" % (stall_timeout, done, n_tasks))
            if now - t_spawn > max_wait:
                raise RuntimeError("timeout after %.0fs at %d/%d tasks" % (max_wait, done, n_tasks))
            time.sleep(0.1)
        cpu_end = _tree_cpu(proc.pid)
        busy_end = _busy_cpu()
        t_first = float(client.get("bench:t_first"))
        t_last = float(client.get("bench:t_last"))
        child_cpu = {k.decode(): float(v) for k, v in client.hgetall("bench:cpu").items()}
        # The thread that ran the tasks; the rest of a child's CPU is its other threads (an agent's).
        task_thread_cpu = {k.decode(): float(v) for k, v in client.hgetall("bench:tcpu").items()}
        assert cpu_start is not None
        rec.update(
            # Pool children, exactly from first task start to last task end.
            child_cpu_us_per_task=sum(child_cpu.values()) / n_tasks * 1e6,
            child_cpu_s=child_cpu,
            child_task_thread_cpu_us_per_task=sum(task_thread_cpu.values()) / n_tasks * 1e6,
            child_other_threads_cpu_s=round(sum(child_cpu.values()) - sum(task_thread_cpu.values()), 3),
            # Whole tree (main process, children, wrapper), between two polls.
            tree_cpu_us_per_task=(cpu_end - cpu_start[1]) / max(1, n_tasks - cpu_start[0]) * 1e6,
            # Cores kept busy by everything else on the machine (other sessions, Redis, this harness).
            other_load=max(0.0, (busy_end - cpu_start[2]) - (cpu_end - cpu_start[1]))
            / max(1e-9, time.time() - cpu_start[3]),
            loadavg=os.getloadavg()[0],
            throughput=n_tasks / (t_last - t_first),
            measured_s=round(t_last - t_first, 3),
            startup_s=round(t_first - t_spawn, 2),
            latency=_latency(client, list(child_cpu)),
            _series=_series(client, list(child_cpu)),
            receivers=json.loads(client.get("bench:receivers") or b"null"),
            processes=_tree_rss(proc.pid),
        )
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        rec.update(status="error", reason=str(exc))
    finally:
        if attacher is not None:
            attacher.join(60)
        rec["shutdown"] = _stop_worker(proc)
        logf.close()
        rec["artifacts"] = _artifacts(mode, work)
        if mode in BILGE_MODES:
            rec["bilge"] = bilge_report(os.path.join(work, "bilge-data"))
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
        rec["wall_s"] = round(time.time() - t_begin, 2)
    return rec


def _quantile(sorted_values, q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _doubles(client, key: str, per_row: int = 1) -> array:
    """The little-endian doubles a process APPENDed to ``key`` (whole rows of ``per_row`` only)."""
    raw = client.get(key) or b""
    vals = array("d")
    vals.frombytes(raw[: len(raw) // (8 * per_row) * (8 * per_row)])
    if sys.byteorder == "big":
        vals.byteswap()
    return vals


def _latency(client, pids: list[str]) -> dict:
    """Task durations (prerun -> postrun) the pool children APPENDed to ``bench:lat:<pid>``, in ms."""
    every = array("d")
    per: dict = {}
    for pid in pids:
        vals = _doubles(client, "bench:lat:%s" % pid)
        every.extend(vals)
        s = sorted(vals)
        # p50 of each tenth of the process's tasks, in order: a slowdown that
        # lasts shows in every tenth, a burst (a window, a holder search) in one.
        tenth = max(1, len(vals) // 10)
        tenths = [round(_quantile(sorted(vals[i:i + tenth]), 0.5) * 1e3, 3) for i in range(0, tenth * 10, tenth)
                  if len(vals[i:i + tenth])]
        per[pid] = {"n": len(s), "p50_ms": _quantile(s, 0.5) * 1e3, "p99_ms": _quantile(s, 0.99) * 1e3,
                    "p50_ms_by_tenth": tenths}
    s = sorted(every)
    if not s:
        return {"n": 0}
    return {"n": len(s), "mean_ms": sum(s) / len(s) * 1e3, "p50_ms": _quantile(s, 0.5) * 1e3,
            "p90_ms": _quantile(s, 0.9) * 1e3, "p99_ms": _quantile(s, 0.99) * 1e3,
            "p999_ms": _quantile(s, 0.999) * 1e3, "max_ms": s[-1] * 1e3, "per_process": per}


def _series(client, pids: list[str]) -> dict[str, tuple[array, array, array]]:
    """Per process: each task's end time, the process's CPU by then, and the task's duration (kept in memory only)."""
    out = {}
    for pid in pids:
        ends = _doubles(client, "bench:end:%s" % pid, per_row=2)
        out[pid] = (ends[0::2], ends[1::2], _doubles(client, "bench:lat:%s" % pid))
    return out


def side_by_side_windows(recs: list[dict]) -> None:
    """Set ``window`` on runs that ran at the same time: their figures over the interval all of them ran.

    On this noisy machine the speed of the same plain run drifts by tens of
    percent within a minute; two workers running at once share every drift,
    so their ratio over the common interval is what differs between them.
    Tasks ending inside [latest first end, earliest last end] count.
    """
    series = [r.get("_series") for r in recs]
    if not all(series) or any(r["status"] != "ok" for r in recs):
        return
    lo = max(min(e[0][0] for e in s.values() if len(e[0])) for s in series)
    hi = min(max(e[0][-1] for e in s.values() if len(e[0])) for s in series)
    if hi <= lo:
        return
    for r, s in zip(recs, series):
        tasks = cpu = spans = 0
        lat: list[float] = []
        for ends, cpus, durs in s.values():
            idx = [i for i, t in enumerate(ends) if lo <= t <= hi]
            if len(idx) < 2:
                continue
            tasks += len(idx)
            spans += len(idx) - 1
            cpu += cpus[idx[-1]] - cpus[idx[0]]
            lat += [durs[i] for i in idx if i < len(durs)]
        lat.sort()
        r["window"] = {"seconds": round(hi - lo, 3), "tasks": tasks, "throughput": tasks / (hi - lo),
                       "child_cpu_us_per_task": cpu / max(1, spans) * 1e6,
                       "p50_ms": _quantile(lat, 0.5) * 1e3, "p99_ms": _quantile(lat, 0.99) * 1e3}


def run_side_by_side(modes: list[str], servers: list, n_tasks: int, first: int = 0, **kw) -> list[dict]:
    """Run one worker per mode at the same time, each on its own private Redis; returns their records.

    Both queues are filled before either worker starts (publishing is
    CPU-bound: a worker started while the other harness thread still
    published ran beside it). ``first`` is the mode whose harness thread
    starts first and whose server is the first: side by side the A/A
    control (two plain workers) showed the second position 6-11 % slower,
    so rounds alternate it.
    """
    import threading

    from celery import Celery  # noqa: F401 - imported once here: two threads' first imports of celery race

    recs: list[dict | None] = [None] * len(modes)
    together = threading.Barrier(len(modes))
    order = list(range(len(modes)))
    order = order[first:] + order[:first]

    def one(i: int, server) -> None:
        client = server.client()
        try:
            recs[i] = run_worker(modes[i], server.url, client, n_tasks, start_together=together, **kw)
            recs[i]["position"] = order.index(i)
        except BaseException:
            together.abort()  # the other worker must not wait for this one
            raise
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(i, servers[k])) for k, i in enumerate(order)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = [r if r is not None else {"mode": m, "tasks": n_tasks, "status": "error", "reason": "no record"}
           for m, r in zip(modes, recs)]
    side_by_side_windows(out)
    for r in out:
        r.pop("_series", None)
    return out


def bilge_report(data: str, timeout: float = 600.0) -> dict:
    """Verdict and per-process self-reported cost from ``bilge report --data-dir DATA --format json``.

    Tolerates a report without ``processes[].cost`` (``cost_available`` false).
    """
    t0 = time.time()
    if not os.path.exists(os.path.join(data, "bilge.db")):
        return {"error": "no bilge.db"}
    try:
        proc = subprocess.run([BILGE, "report", "--data-dir", data, "--format", "json"], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": "bilge report timed out after %.0fs" % timeout}
    try:
        rep = json.loads(proc.stdout)
    except ValueError:
        return {"error": "bilge report rc=%s: %s" % (proc.returncode, (proc.stderr or proc.stdout)[-600:].strip())}
    out: dict = {"report_s": round(time.time() - t0, 2), "verdict": rep.get("verdict"), "kind": rep.get("kind"),
                 "confidence": rep.get("confidence"), "reason": rep.get("reason"),
                 "findings": [{k: f.get(k) for k in ("task", "type", "kind", "location", "bytes_per_call")}
                              for f in (rep.get("findings") or [])[:3]],
                 "processes": []}
    totals = {"children": {"cpu_s": 0.0, "slowed_s": 0.0}, "main": {"cpu_s": 0.0, "slowed_s": 0.0}}
    available = False
    for p in rep.get("processes") or []:
        entry = {k: p.get(k) for k in ("pid", "role", "verdict", "kind", "tasks_observed", "tasks_excluded",
                                       "confirmed_after_tasks", "growth_bytes_per_task")}
        cost = p.get("cost")
        if isinstance(cost, dict):
            available = True
            runs = cost.get("runs") or []
            cpu = float(cost.get("cpu_seconds_total") or sum(s.get("cpu_seconds", 0.0) for s in cost.get("stages", [])))
            slowed = float(cost.get("slowed_seconds_total")
                           or sum(s.get("slowed_seconds", 0.0) for s in cost.get("stages", [])))
            entry["cost"] = {
                "cpu_seconds_total": cpu, "slowed_seconds_total": slowed,
                "stages": cost.get("stages") or [],
                "runs_count": len(runs),
                "runs_by_stage_reason": dict(collections.Counter(
                    "%s: %s" % (r.get("stage"), r.get("reason")) for r in runs)),
                "runs": runs[:40],
                "budget": cost.get("budget"),
            }
            group = "children" if entry.get("role") == "celery-child" else "main"
            totals[group]["cpu_s"] += cpu
            totals[group]["slowed_s"] += slowed
        out["processes"].append(entry)
    out["cost_available"] = available
    if available:
        out["cost"] = totals
    return out


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
    if mode in BILGE_MODES:
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
def _med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarise(runs: list[dict], modes: list[str]) -> dict:
    """Per mode, over the counted runs of one (shape, leak) block."""
    by_mode: dict = {}
    # A mode's partner: the plain run that ran beside it (side by side), else the same round's plain run.
    plain_by_round = {_pair(r): r for r in runs if r["mode"] == "plain" and r["status"] == "ok"}
    for mode in modes:
        ok = [r for r in runs if r["mode"] == mode and r["status"] == "ok"]
        entry: dict = {"runs": len(ok), "errors": sum(1 for r in runs if r["mode"] == mode and r["status"] != "ok")}
        by_mode[mode] = entry
        if not ok:
            continue
        tp = [r["throughput"] for r in ok]
        entry.update(median=statistics.median(tp), min=min(tp), max=max(tp), all=[round(x, 1) for x in tp])
        for key in ("child_cpu_us_per_task", "tree_cpu_us_per_task"):
            vals = [r[key] for r in ok]
            entry[key + "_median"] = statistics.median(vals)
            entry[key + "_all"] = [round(x, 1) for x in vals]
        for key in ("p50_ms", "p99_ms", "p999_ms", "mean_ms"):
            vals = [r["latency"].get(key) for r in ok]
            entry["latency_%s_median" % key] = _med(vals)
            entry["latency_%s_all" % key] = [None if v is None else round(v, 3) for v in vals]
        entry["other_load_median"] = statistics.median(r["other_load"] for r in ok)
        entry["other_load_max"] = max(r["other_load"] for r in ok)
        entry["startup_s_median"] = statistics.median(r["startup_s"] for r in ok)
        leaves = [p["rss"] for r in ok for p in r.get("processes", []) if p["leaf"]]
        if leaves:
            entry["child_rss_median_mb"] = statistics.median(leaves) / 2**20
        # Same-round pairs with plain: robust to load drifting between rounds.
        pairs = [(plain_by_round[_pair(r)], r) for r in ok if _pair(r) in plain_by_round]
        if pairs and mode != "plain":
            ratios = [_paired(p, "throughput") / _paired(r, "throughput") for p, r in pairs]
            entry["paired_ratio_median"] = statistics.median(ratios)
            entry["paired_ratio_all"] = [round(x, 4) for x in ratios]
            cpu = [_paired(r, "child_cpu_us_per_task") / _paired(p, "child_cpu_us_per_task") for p, r in pairs]
            entry["paired_cpu_ratio_median"] = statistics.median(cpu)
            entry["paired_cpu_ratio_all"] = [round(x, 4) for x in cpu]
            for key in ("p50_ms", "p99_ms"):
                vals = [_paired(r, key) / _paired(p, key) for p, r in pairs if _paired(r, key) and _paired(p, key)]
                entry["paired_%s_ratio_median" % key[:3]] = _med(vals)
                entry["paired_%s_ratio_all" % key[:3]] = [round(x, 4) for x in vals]
        if mode in BILGE_MODES:
            _summarise_bilge(entry, ok, plain_by_round)
        if mode == "memray":
            sizes = [r["artifacts"].get("memray_bytes", 0) for r in ok]
            entry["capture_bytes_median"] = statistics.median(sizes)
    plain = by_mode.get("plain", {})
    for entry in by_mode.values():
        if not entry.get("median") or not plain.get("median"):
            continue
        entry["ratio"] = plain["median"] / entry["median"]
        entry["cpu_ratio"] = entry["child_cpu_us_per_task_median"] / plain["child_cpu_us_per_task_median"]
        entry["tree_cpu_ratio"] = entry["tree_cpu_us_per_task_median"] / plain["tree_cpu_us_per_task_median"]
        for key in ("p50", "p99"):
            a, b = entry.get("latency_%s_ms_median" % key), plain.get("latency_%s_ms_median" % key)
            entry["%s_ratio" % key] = a / b if a and b else None
    return by_mode


def _pair(rec: dict):
    return rec.get("pair", rec["round"])


def _paired(rec: dict, key: str) -> float | None:
    """A run's figure for pair ratios: over the common interval when it ran side by side."""
    if "window" in rec:
        return rec["window"].get(key)
    return rec["latency"].get(key) if key.endswith("_ms") else rec[key]


# Stages that run in the task's thread (the hooks, and the tasks an episode or
# a native window traces); every other stage runs in the agent's own thread.
TASK_THREAD_STAGES = ("task-hooks", "allocation-episode", "native-window")


def _child_stage_cpu(report: dict) -> dict[str, float]:
    """Reported CPU seconds per stage, summed over the pool children."""
    stages: dict[str, float] = collections.Counter()
    for p in report.get("processes", []):
        if p.get("role") == "celery-child" and p.get("cost"):
            for st in p["cost"]["stages"]:
                stages[st["stage"]] += st.get("cpu_seconds", 0.0)
    return dict(stages)


def _thread_split(rec: dict, partner: dict) -> dict | None:
    """Measured against reported, per thread: the agent's own thread, and the task thread's extra over plain."""
    stages = _child_stage_cpu(rec.get("bilge") or {})
    if not stages or "child_other_threads_cpu_s" not in rec or "child_task_thread_cpu_us_per_task" not in partner:
        return None
    return {
        "agent_thread_measured_s": rec["child_other_threads_cpu_s"],
        "agent_thread_reported_s": round(sum(v for k, v in stages.items() if k not in TASK_THREAD_STAGES), 3),
        "task_thread_extra_measured_s": round((rec["child_task_thread_cpu_us_per_task"]
                                               - partner["child_task_thread_cpu_us_per_task"]) * 1e-6
                                              * rec["tasks"], 3),
        "task_thread_reported_s": round(sum(v for k, v in stages.items() if k in TASK_THREAD_STAGES), 3),
    }


def _summarise_bilge(entry: dict, ok: list[dict], plain_by_round: dict) -> None:
    arts = [r["artifacts"] for r in ok]
    sizes = [a.get("bilge_db_bytes", 0) + a.get("bilge_wal_bytes", 0) for a in arts]
    entry["db_bytes_median"] = statistics.median(sizes)
    entry["task_rows_median"] = statistics.median(a.get("rows_tasks", 0) for a in arts)
    reports = [r.get("bilge") or {} for r in ok]
    entry["verdicts"] = dict(collections.Counter(str(b.get("verdict")) for b in reports))
    entry["process_verdicts"] = dict(collections.Counter(
        "%s=%s" % (p.get("role"), p.get("verdict")) for b in reports for p in b.get("processes", [])))
    entry["found_tasks"] = dict(collections.Counter(
        str((b.get("findings") or [{}])[0].get("task")) for b in reports if b.get("findings")))
    entry["report_errors"] = [b["error"] for b in reports if b.get("error")]
    costs = [b["cost"] for b in reports if b.get("cost_available")]
    entry["cost_available_runs"] = len(costs)
    if costs:
        entry["reported_child_cpu_s_median"] = statistics.median(c["children"]["cpu_s"] for c in costs)
        entry["reported_child_slowed_s_median"] = statistics.median(c["children"]["slowed_s"] for c in costs)
        entry["reported_child_total_s_median"] = statistics.median(
            c["children"]["cpu_s"] + c["children"]["slowed_s"] for c in costs)
        entry["reported_main_cpu_s_median"] = statistics.median(c["main"]["cpu_s"] for c in costs)
    # Measured against the same round's plain run, scaled to this run's task count.
    extra_cpu, extra_cap = [], []
    for r in ok:
        p = plain_by_round.get(_pair(r))
        if p is None:
            continue
        extra_cpu.append((_paired(r, "child_cpu_us_per_task") - _paired(p, "child_cpu_us_per_task")) * 1e-6
                         * r["tasks"])
        extra_cap.append(CONCURRENCY * r["tasks"] * (1 / _paired(r, "throughput") - 1 / _paired(p, "throughput")))
        r["measured_extra_child_cpu_s"] = extra_cpu[-1]
        r["measured_extra_capacity_s"] = extra_cap[-1]
        split = _thread_split(r, p)
        if split is not None:
            r["thread_split"] = split
            entry.setdefault("thread_split_all", []).append(split)
    if extra_cpu:
        entry["measured_extra_child_cpu_s_median"] = statistics.median(extra_cpu)
        entry["measured_extra_child_cpu_s_all"] = [round(x, 3) for x in extra_cpu]
        entry["measured_extra_capacity_s_median"] = statistics.median(extra_cap)


def _f(v, fmt: str = "%.3f") -> str:
    return "-" if v is None else fmt % v


def table(summary: dict, modes: list[str]) -> str:
    lines = ["| mode | runs | median tasks/s | plain/mode | plain/mode (pairs) | child CPU µs/task | mode/plain CPU "
             "| p50 ms | p50 ×plain | p99 ms | p99 ×plain | child RSS MB | start-up s | other load | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        e = summary[mode]
        if not e.get("median"):
            lines.append("| %s | 0 |%s %d errors |" % (mode, " - |" * 12, e["errors"]))
            continue
        notes = []
        if mode in BILGE_MODES:
            notes.append("verdict %s" % ", ".join("%s×%d" % kv for kv in e["verdicts"].items()))
            if e.get("found_tasks"):
                notes.append("task %s" % ", ".join("%s×%d" % kv for kv in e["found_tasks"].items()))
            if "reported_child_total_s_median" in e:
                notes.append("reported child cost %.2fs (CPU %.2f + slowed %.2f) vs measured extra child CPU %s s"
                             % (e["reported_child_total_s_median"], e["reported_child_cpu_s_median"],
                                e["reported_child_slowed_s_median"], _f(e.get("measured_extra_child_cpu_s_median"),
                                                                        "%.2f")))
            else:
                notes.append("no cost in report; measured extra child CPU %s s"
                             % _f(e.get("measured_extra_child_cpu_s_median"), "%.2f"))
            notes.append("bilge.db %.0f KB" % (e["db_bytes_median"] / 1024))
        if mode == "memray" and "capture_bytes_median" in e:
            notes.append("capture %.1f MB" % (e["capture_bytes_median"] / 2**20))
        if e["errors"]:
            notes.append("%d errors" % e["errors"])
        lines.append("| %s | %d | %.1f | %s | %s | %.0f | %s | %s | %s | %s | %s | %.1f | %.1f | %.2f | %s |" % (
            mode, e["runs"], e["median"], _f(e.get("ratio")), _f(e.get("paired_ratio_median")),
            e["child_cpu_us_per_task_median"], _f(e.get("paired_cpu_ratio_median", e.get("cpu_ratio"))),
            _f(e.get("latency_p50_ms_median")), _f(e.get("paired_p50_ratio_median", e.get("p50_ratio"))),
            _f(e.get("latency_p99_ms_median")), _f(e.get("paired_p99_ratio_median", e.get("p99_ratio"))),
            e.get("child_rss_median_mb", 0.0), e["startup_s_median"], e["other_load_median"], "; ".join(notes)))
    return "\n".join(lines)


def cost_table(blocks: list[dict]) -> str:
    lines = ["| shape | leak | bilge runs | verdicts | plain/bilge (pairs) | measured extra child CPU s "
             "| measured extra capacity s | reported child CPU s | reported child slowed s | reported main CPU s "
             "| agent thread: measured / reported s | task thread extra: measured / reported s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in blocks:
        e = b["summary"].get("bilge")
        if not e or not e.get("runs"):
            continue
        splits = e.get("thread_split_all") or []
        agent = "; ".join("%.2f / %.2f" % (x["agent_thread_measured_s"], x["agent_thread_reported_s"]) for x in splits)
        task = "; ".join("%.2f / %.2f" % (x["task_thread_extra_measured_s"], x["task_thread_reported_s"])
                         for x in splits)
        lines.append("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            b["shape"], b["leak"], e["runs"], ", ".join("%s×%d" % kv for kv in e["verdicts"].items()),
            _f(e.get("paired_ratio_median")), _f(e.get("measured_extra_child_cpu_s_median"), "%.2f"),
            _f(e.get("measured_extra_capacity_s_median"), "%.2f"), _f(e.get("reported_child_cpu_s_median"), "%.2f"),
            _f(e.get("reported_child_slowed_s_median"), "%.2f"), _f(e.get("reported_main_cpu_s_median"), "%.2f"),
            agent or "-", task or "-"))
    return "\n".join(lines) if len(lines) > 2 else "(no bilge runs)"


LEGEND = (
    "throughput = tasks / (last task end - first task start); plain/mode = median plain throughput / median mode "
    "throughput; (pairs) = median over rounds of plain/mode with the same round's plain run, or with --side-by-side "
    "with the plain run that ran at the same time, over the interval both ran (then the CPU and latency ratios "
    "are such pairs' medians too). Child CPU = CPU time "
    "of the pool children (all their threads) from their first task start to their last task end, per task "
    "(robust to other load; wall-clock figures are not). p50/p99 = task duration from the workload's task_prerun "
    "handler (moved to run first) to its task_postrun handler (moved to run last, so bilge's per-task hooks are "
    "inside), all tasks of both children; ×plain = median mode / median plain. "
    "tracemalloc runs an eighth of the tasks unless --tracemalloc-tasks. Cost check: measured extra child CPU = "
    "(bilge's child CPU per task minus its partner plain run's) × tasks; measured extra "
    "capacity = %d × tasks × (1/bilge throughput - 1/plain throughput); reported = sum of processes[].cost "
    "cpu_seconds_total / slowed_seconds_total of the celery-child processes in `bilge report` (whole process "
    "lifetime, so it includes start-up and the final flush, which the measured window does not). Per thread "
    "(whole runs from each child's first task): the agent thread's measured CPU (the children's CPU outside the "
    "thread that ran the tasks) against its reported stages, and the task thread's extra CPU over the partner "
    "plain run against the reported task-thread stages (hooks, traced tasks)." % CONCURRENCY)


# --------------------------------------------------------------- estimate --
class Estimator:
    """Wall seconds per run: nominal figures until a (shape, mode) has been measured."""

    def __init__(self) -> None:
        self.per_task: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.fixed: dict[tuple[str, str], list[float]] = collections.defaultdict(list)

    def add(self, shape: str, rec: dict) -> None:
        if rec["status"] == "ok":
            self.per_task[(shape, rec["mode"])].append(rec["measured_s"] / rec["tasks"])
            self.fixed[(shape, rec["mode"])].append(rec["wall_s"] - rec["measured_s"] - rec["queue_s"])

    def run_s(self, shape: str, mode: str, n: int) -> float:
        key = (shape, mode)
        if self.per_task.get(key):
            return statistics.median(self.fixed[key]) + n * statistics.median(self.per_task[key])
        known = mode if mode in MODE_FACTOR else "bilge"
        per_task = MODE_FACTOR[known] / NOMINAL_TPS[shape]
        return FIXED_S[known] + (BIGHEAP_FIXED_S[known] if shape == "bigheap" else 0.0) + n * per_task

    def total_s(self, plan: list[tuple]) -> float:
        return sum(self.run_s(shape, mode, n) for (shape, _leak, _rnd, mode, n) in plan)


def _fmt_s(s: float) -> str:
    return "%dh%02dm" % (s // 3600, s % 3600 // 60) if s >= 3600 else "%dm%02ds" % (s // 60, s % 60)


# ------------------------------------------------------------------- main --
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


def _leak_bytes(label: str) -> int:
    return 0 if label in ("none", "0") else int(label)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=4000, help="tasks per run (default 4000; judged figure: 20000)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per (shape, leak) (default 4)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of %s" % ",".join(SHAPES))
    ap.add_argument("--leak", default=",".join(LEAKS),
                    help="comma-separated leak variants: none, or bytes kept per call of workload.b "
                         "(default none,2048)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of %s" % ",".join(MODES))
    ap.add_argument("--tracemalloc-tasks", type=int, default=None,
                    help="tasks per tracemalloc run (default tasks/8: it is ~6-10x slower; throughput is a rate)")
    ap.add_argument("--memray-tasks", type=int, default=None, help="tasks per memray run (default: --tasks)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="plain runs (min(tasks, 1000) tasks) before each block's rounds, not counted (default 1)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the task-name order (default 1)")
    ap.add_argument("--out", "--json", dest="out", default=os.path.join(RESULTS, "overhead_shapes.json"),
                    help="where to write results (default benchmarks/results/overhead_shapes.json)")
    ap.add_argument("--side-by-side", action="store_true",
                    help="run each mode at the same time as a plain run (each on its own Redis) and compare them "
                         "over the interval both ran: robust to this machine's drifting speed")
    ap.add_argument("--base-src", default=None,
                    help="mode bilge-base runs `bilge run` with this directory (another checkout's src/) first on "
                         "PYTHONPATH: a baseline measured in the same run")
    ap.add_argument("--estimate", action="store_true", help="print the time estimate and exit")
    args = ap.parse_args(argv)

    def _list(value: str, allowed: tuple[str, ...] | None, what: str) -> list[str]:
        items = [x.strip() for x in value.split(",") if x.strip()]
        bad = [x for x in items if allowed is not None and x not in allowed]
        if bad or not items:
            ap.error("unknown %s: %s" % (what, ", ".join(bad) or "(none)"))
        return items

    modes = _list(args.modes, MODES + ABLATIONS + CONTROLS + ATTACHED + BASELINE, "modes")
    if "bilge-base" in modes:
        if not args.base_src or not os.path.isdir(os.path.join(args.base_src, "bilge")):
            ap.error("mode bilge-base needs --base-src DIR, a directory holding a bilge package (a checkout's src/)")
        BASE_SRC[:] = [os.path.abspath(args.base_src)]
    shapes = _list(args.shapes, SHAPES, "shapes")
    leaks = _list(args.leak, None, "leak")
    for label in leaks:
        try:
            if _leak_bytes(label) < 0:
                raise ValueError
        except ValueError:
            ap.error("--leak takes none or a byte count, not %r" % label)
    if "bilge" in modes and not os.path.exists(BILGE):
        ap.error("bilge not found at %s (run with the venv's python)" % BILGE)

    def n_for(mode: str) -> int:
        if mode == "tracemalloc":
            return args.tracemalloc_tasks or max(1, args.tasks // 8)
        if mode == "memray":
            return args.memray_tasks or args.tasks
        return args.tasks

    # The whole plan: (shape, leak, round (0 = warm-up), mode, tasks); side by
    # side, a mode entry runs beside a plain run of the same tasks.
    if args.side_by_side and "plain" not in modes:
        ap.error("--side-by-side compares each mode with plain: include plain in --modes")
    plan: list[tuple] = []
    for shape in shapes:
        for leak in leaks:
            plan += [(shape, leak, 0, "plain", min(args.tasks, 1000))] * args.warmup
            for rnd in range(1, args.rounds + 1):
                k = (rnd - 1) % len(modes)
                if args.side_by_side:
                    plan += [(shape, leak, rnd, mode, n_for(mode)) for mode in modes[k:] + modes[:k]
                             if mode != "plain"]
                else:
                    plan += [(shape, leak, rnd, mode, n_for(mode)) for mode in modes[k:] + modes[:k]]
    est = Estimator()
    publish_s = 0.55e-3 * sum({n for (*_, n) in plan})  # kombu publishing, once per distinct queue size
    log("plan: %d shapes x %d leak variants x %d rounds x %d modes = %d counted runs (+%d warm-ups); "
        "estimated %s on an idle 2-vCPU machine" % (
            len(shapes), len(leaks), args.rounds, len(modes), sum(1 for p in plan if p[2]),
            sum(1 for p in plan if not p[2]), _fmt_s(est.total_s(plan) + publish_s)))
    if args.estimate:
        for shape in shapes:
            log("  %-8s per run: %s" % (shape, ", ".join("%s %.0fs" % (m, est.run_s(shape, m, n_for(m)))
                                                        for m in modes)))
        return 0

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, _terminate)  # so the finally blocks stop workers and Redis
    runs: list[dict] = []
    blocks: list[dict] = []
    t0 = time.time()
    config = {"tasks": args.tasks, "tracemalloc_tasks": n_for("tracemalloc"), "memray_tasks": n_for("memray"),
              "rounds": args.rounds, "modes": modes, "shapes": shapes, "leaks": leaks, "warmup": args.warmup,
              "seed": args.seed, "task_names": list(TASK_NAMES), "leaky_task": "workload.b",
              "worker": "celery " + " ".join(WORKER_ARGS),
              "pairing": "side by side (each mode beside a plain run, common interval)" if args.side_by_side
              else "sequential (same round)", "workload": "workload_app (BENCH_SHAPE, BENCH_LEAK)"}
    env_info = environment()

    def write(complete: bool) -> None:
        out = {"benchmark": "overhead_shapes", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "complete": complete,
               "config": config, "environment": env_info, "wall_s": round(time.time() - t0, 1),
               "blocks": blocks, "cost_table": cost_table(blocks), "legend": LEGEND, "runs": runs}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(out, fh, indent=2)
        os.replace(tmp, args.out)

    done_runs = 0
    with RedisServer() as rs, RedisServer() as rs2:
        client = rs.client()
        log("private redis at %s" % rs.url)
        try:
            for shape in shapes:
                for leak in leaks:
                    extra = {"BENCH_SHAPE": shape, "BENCH_LEAK": str(_leak_bytes(leak))}
                    block_runs: list[dict] = []
                    for (s, lk, rnd, mode, n) in plan:
                        if (s, lk) != (shape, leak):
                            continue
                        max_wait = max(300.0, 5 * est.run_s(shape, mode, n))
                        kw = {"max_wait": 2 * max_wait, "extra_env": extra, "task_names": TASK_NAMES,
                              "seed": args.seed}
                        if rnd and args.side_by_side:
                            # The mode goes first in even rounds, plain in odd ones.
                            recs = run_side_by_side(["plain", mode], [rs, rs2], n, first=1 - rnd % 2, **kw)
                            for r in recs:
                                r["pair"] = "%d:%s" % (rnd, mode)
                        else:
                            recs = [run_worker(mode, rs.url, client, n, **kw)]
                            recs[0].pop("_series", None)
                        done_runs += 1
                        for rec in recs:
                            est.add(shape, rec)
                            rec.update(shape=shape, leak=leak, round=rnd)
                            log("%s/%s %s %-11s %s" % (shape, leak, "warm-up" if rnd == 0 else "round %d" % rnd,
                                                        rec["mode"], _brief(rec)))
                            if rnd:
                                runs.append(rec)
                                block_runs.append(rec)
                    summary = summarise(block_runs, modes)
                    blocks.append({"shape": shape, "leak": leak, "summary": summary, "table": table(summary, modes)})
                    write(complete=False)
                    left = est.total_s(plan[done_runs:])
                    log("block %s/%s done; elapsed %s, estimated remaining %s" % (
                        shape, leak, _fmt_s(time.time() - t0), _fmt_s(left)))
        finally:
            client.close()

    for b in blocks:
        print("### shape=%s leak=%s\n" % (b["shape"], b["leak"]))
        print(b["table"])
        print()
    print("### bilge: measured extra cost vs self-reported cost (medians)\n")
    print(cost_table(blocks))
    print()
    print("%d tasks per run. %s" % (args.tasks, LEGEND))
    write(complete=True)
    log("wrote %s (%s)" % (args.out, _fmt_s(time.time() - t0)))
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def _brief(rec: dict) -> str:
    if rec["status"] != "ok":
        b = rec.get("bilge") or {}
        return "ERROR %s%s" % (rec.get("reason"), (" [report: %s]" % b["error"]) if b.get("error") else "")
    extra = ""
    a = rec.get("artifacts", {})
    if "bilge_db_bytes" in a:
        extra = " db=%.0fKB tasks=%s" % ((a["bilge_db_bytes"] + a["bilge_wal_bytes"]) / 1024, a.get("rows_tasks"))
    b = rec.get("bilge")
    if b:
        if b.get("error"):
            extra += " report ERROR %s" % b["error"][:200]
        else:
            extra += " verdict=%s" % b.get("verdict")
            if b.get("findings"):
                extra += " (%s)" % b["findings"][0].get("task")
            if b.get("cost_available"):
                c = b["cost"]
                extra += " reported cost: children CPU %.2fs + slowed %.2fs, main CPU %.2fs" % (
                    c["children"]["cpu_s"], c["children"]["slowed_s"], c["main"]["cpu_s"])
                stages = _child_stage_cpu(b)
                extra += " [%s]" % ", ".join("%s %.2f" % kv for kv in sorted(stages.items(), key=lambda kv: -kv[1]))
            else:
                extra += " (no cost in report)"
    if "memray_bytes" in a:
        extra = " capture=%.1fMB" % (a["memray_bytes"] / 2**20)
    lat = rec.get("latency", {})
    return ("%.1f tasks/s, child CPU %.0f us/task (task thread %.0f, other threads %.2f s), tree %.0f us/task, "
            "p50 %.2f ms, p99 %.2f ms, other load %.2f cores "
            "(%.2fs measured, start-up %.1fs, shutdown %.1fs, wall %.0fs)%s") % (
        rec["throughput"], rec["child_cpu_us_per_task"], rec.get("child_task_thread_cpu_us_per_task", float("nan")),
        rec.get("child_other_threads_cpu_s", float("nan")), rec["tree_cpu_us_per_task"],
        lat.get("p50_ms", float("nan")), lat.get("p99_ms", float("nan")), rec["other_load"], rec["measured_s"],
        rec["startup_s"],
        rec["shutdown"]["shutdown_s"], rec.get("wall_s", 0), extra)


if __name__ == "__main__":
    sys.exit(main())
