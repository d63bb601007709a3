#!/usr/bin/env python3
"""`bilge snapshot` against a live process: how long it takes, and how long the process stalls.

A target under `bilge run` holds about N live gc-tracked objects (N/2 small
dicts, each with a small list, kept in a module-level list) and keeps
working in its main thread: every ~1 ms it appends one ``Ticket`` (the
leak the snapshot should name) and stamps the time. The client asks its agent
for a snapshot (census + holder search of what grew) R times, ~2 s apart,
timing each request end to end (connect to reply) and reading the agent's
own figures; the target reports the largest gap between two of its main
thread's stamps during each request: the time the snapshot held the GIL,
when the host ran no Python code.

Two target loops: ``python`` (pure Python between stamps, the stop file
checked every 100 iterations) and ``syscalls`` (a ``stat()`` every
iteration, as a CPU-bound task that also makes a quick system call every
millisecond would). The second is CPython's GIL at its worst for every
other thread: the main thread gives the GIL up at each call and takes it
straight back before a waiting thread wakes, so a waiting thread's
switch request is never made and it can wait for seconds (bpo-7946). The
agent's own threads are such threads.

    .venv/bin/python benchmarks/snapshot.py --objects 1000000 100000 --repeat 5

Prints a markdown table and writes benchmarks/results/snapshot.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

from bilge import live  # noqa: E402
from bilge.errors import AgentUnreachableError  # noqa: E402

TARGET = r"""
import os, sys, time, array
class Ticket:
    __slots__ = ("n",)
    def __init__(self, n): self.n = n
HEAP = [{"id": i, "tags": [i, i + 1]} for i in range(int(sys.argv[1]) // 2)]
TICKETS = []
stamps = array.array("d")
open(sys.argv[2], "w").write("ready")
n = 0
syscall_every = 1 if sys.argv[4] == "syscalls" else 100
while n % syscall_every or not os.path.exists(sys.argv[3]):
    t = time.perf_counter()
    stamps.append(t)
    TICKETS.append(Ticket(n)); n += 1
    while time.perf_counter() - t < 0.001:
        pass
    if len(stamps) > 200000:
        del stamps[:100000]
with open(sys.argv[3] + ".out", "wb") as f:
    stamps.tofile(f)
"""


def one_size(objects: int, repeat: int, bilge: str, gap: float, loop: str) -> dict[str, object]:
    work = tempfile.mkdtemp(prefix="bilge-snap-")
    sockets = tempfile.mkdtemp(prefix="bs-")
    script, ready, stop = os.path.join(work, "target.py"), os.path.join(work, "ready"), os.path.join(work, "stop")
    with open(script, "w") as f:
        f.write(TARGET)
    env = {**os.environ, "BILGE_SOCKET_DIR": sockets}
    proc = subprocess.Popen(
        [
            bilge,
            "run",
            "--data-dir",
            os.path.join(work, "data"),
            "--",
            sys.executable,
            script,
            str(objects),
            ready,
            stop,
            loop,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.environ["BILGE_SOCKET_DIR"] = sockets
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(ready) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)  # the agent's first census and a few samples
        target = next(a for a in live.discover() if a.pid != proc.pid)
        calls = []
        for _ in range(repeat):
            time.sleep(gap)
            t0 = time.time()
            try:
                summary = live.request(target, "snapshot", {})
            except AgentUnreachableError as exc:
                calls.append({"t0": t0, "t1": time.time(), "wall_s": time.time() - t0, "error": str(exc)})
                continue
            t1 = time.time()
            calls.append(
                {
                    "t0": t0,
                    "t1": t1,
                    "wall_s": t1 - t0,
                    "agent_s": summary["seconds"],
                    "census_s": summary["census_seconds"],
                    "holder_s": summary["holder_seconds"],
                    "objects": summary["objects"],
                    "complete": summary["holders_complete"],
                    "first_holder": (summary["holders"] or [{}])[0].get("path"),
                    "first_grown": (summary["growing"] or [{}])[0].get("type"),
                }
            )
        try:
            status = live.request(target, "status")
        except AgentUnreachableError:
            status = {"longest_tick_seconds": float("nan"), "longest_wall_seconds": {}}
        open(stop, "w").close()
        proc.wait(60)
        import array

        stamps = array.array("d")
        with open(stop + ".out", "rb") as f:
            stamps.frombytes(f.read())
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the target too, not only `bilge run`
        except ProcessLookupError:
            pass
        os.environ.pop("BILGE_SOCKET_DIR", None)
    # perf_counter and time.time differ by an offset: align on the calls' own windows via the gaps.
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    worst = sorted(gaps, reverse=True)[:repeat]
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(sockets, ignore_errors=True)
    walls = [c["wall_s"] for c in calls]
    return {
        "objects": objects,
        "loop": loop,
        "calls": calls,
        "errors": sum("error" in c for c in calls),
        "longest_tick_s": status["longest_tick_seconds"],
        "longest_wall_s": status["longest_wall_seconds"],
        "median_wall_s": statistics.median(walls),
        "max_wall_s": max(walls),
        "largest_stalls_s": worst,
        "median_stall_s": statistics.median(worst),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, nargs="+", default=[1_000_000, 100_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between two snapshots")
    parser.add_argument(
        "--loops",
        nargs="+",
        default=["python", "syscalls"],
        choices=["python", "syscalls"],
        help="the target's main thread: pure Python work between stamps, or also a stat() "
        "system call per ~1 ms iteration (see the module docstring)",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results", "snapshot.json"))
    args = parser.parse_args()
    bilge = shutil.which("bilge", path=os.path.dirname(sys.executable)) or "bilge"
    sizes = [one_size(n, args.repeat, bilge, args.gap, loop) for loop in args.loops for n in args.objects]
    result = {
        "benchmark": "snapshot",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
        "sizes": sizes,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(
        "| target loop | live objects | failed requests | agent's longest tick | snapshot wall, median / max "
        "| agent: census / holders (median) | target stalled, median of the %d largest gaps / max "
        "| holder found | first grown type |" % args.repeat
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in sizes:
        calls = [c for c in s["calls"] if "error" not in c] or [
            {"objects": 0, "census_s": 0, "holder_s": 0, "first_holder": None, "first_grown": None}
        ]
        print(
            "| %s | %s | %d | %.1f s | %.2f / %.2f s | %.2f / %.2f s | %.2f / %.2f s | %s | %s |"
            % (
                s["loop"],
                "{:,}".format(calls[-1]["objects"]),
                s["errors"],
                s["longest_tick_s"],
                s["median_wall_s"],
                s["max_wall_s"],
                statistics.median(c["census_s"] for c in calls),
                statistics.median(c["holder_s"] for c in calls),
                s["median_stall_s"],
                max(s["largest_stalls_s"]),
                calls[-1]["first_holder"],
                calls[-1]["first_grown"],
            )
        )


if __name__ == "__main__":
    main()
