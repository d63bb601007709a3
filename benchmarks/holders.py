#!/usr/bin/env python3
"""Heap-walk speed: bilge's holder paths against objgraph.find_backref_chain.

Builds a synthetic heap of about 1M gc-tracked objects with five growing
types, each held a different way (a module-level dict cache, a class-level
list, per-job loggers, a list captured by a closure, a local variable of a
thread blocked on an Event), then times:

- ``find_holders`` for the five types at once (median of ``--repeat`` runs,
  wall and CPU time; this machine may be shared, CPU time is the fairer one),
  and the peak memory of its bookkeeping (tracemalloc, a separate run);
- ``objgraph.find_backref_chain(obj, objgraph.is_proper_module, max_depth=20)``
  for one instance of each type, each in a forked child with a time limit;
- for reference, the floor of a one-pass reverse index of the whole heap
  (``gc.get_referents`` of every object into compact arrays, then grouping
  the edges by referent), also in a forked child.

Prints a markdown table and writes benchmarks/results/holders.json.

    .venv/bin/python benchmarks/holders.py --objects 1000000 --repeat 5
"""

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
import tracemalloc
import types
from array import array
from itertools import chain

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

import objgraph  # noqa: E402

from bilge.samplers.holders import find_holders  # noqa: E402

MODULES = {
    "dict_cache.app": '''
class EnrichedOrder:
    def __init__(self, i):
        self.id = i
        self.lines = [i, i + 1]
        self.meta = {"n": [i]}

_ENRICHED_ORDERS = {}
''',
    "dict_cache.audit": '''
class AuditEntry:
    def __init__(self, i):
        self.fields = [i, str(i)]

class AuditLog:
    entries = []
''',
    "dict_cache.hooks": '''
class HookEvent:
    def __init__(self, i):
        self.payload = [i]

def register():
    handlers = []
    def handler(event):
        handlers.append(event)
    return handler

_ON_RESULT = register()
''',
    "dict_cache.worker": '''
class Row:
    def __init__(self, i):
        self.values = [i]

def process_batch(size, ready, release):
    batch = [Row(i) for i in range(size)]
    ready.set()
    release.wait()
    return len(batch)
''',
}

TYPES = {
    "module dict cache": "dict_cache.app.EnrichedOrder",
    "class-level list": "dict_cache.audit.AuditEntry",
    "logger registry": "logging.Logger",
    "closure-held list": "dict_cache.hooks.HookEvent",
    "thread stack local": "dict_cache.worker.Row",
}


def build_heap(objects):
    """The synthetic heap; returns the thread's release Event. Sizes scale with ``objects``."""
    for name, source in MODULES.items():
        module = types.ModuleType(name)
        exec(compile(source, "<%s>" % name, "exec"), module.__dict__)
        sys.modules[name] = module
    app, audit, hooks, worker = (sys.modules[n] for n in MODULES)
    unit = objects / 1_000_000
    for i in range(int(110_000 * unit)):  # 3 tracked objects each
        app._ENRICHED_ORDERS[i] = app.EnrichedOrder(i)
    audit.AuditLog.entries.extend(audit.AuditEntry(i) for i in range(int(160_000 * unit)))  # 2 each
    for i in range(int(20_000 * unit)):  # about 4 each (the logger, its handlers, filters, cache)
        logging.getLogger("job.%d" % i)
    for i in range(int(100_000 * unit)):  # 2 each
        hooks._ON_RESULT(hooks.HookEvent(i))
    ready, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=worker.process_batch, args=(int(60_000 * unit), ready, release), name="worker-3",
                              daemon=True)
    thread.start()
    ready.wait()
    gc.collect()
    return release


def sample_targets():
    """One instance of each growing type, found the way a user would (objgraph.by_type is a heap scan too)."""
    app, audit, hooks = (sys.modules[n] for n in ("dict_cache.app", "dict_cache.audit", "dict_cache.hooks"))
    row = next(o for o in gc.get_referrers(sys.modules["dict_cache.worker"].Row)
               if type(o).__name__ == "Row")
    return {
        "module dict cache": app._ENRICHED_ORDERS[1234],
        "class-level list": audit.AuditLog.entries[4321],
        "logger registry": logging.getLogger("job.777"),
        "closure-held list": hooks._ON_RESULT.__closure__[0].cell_contents[999],
        "thread stack local": row,
    }


def in_child(function, timeout):
    """Run ``function()`` in a forked child; its JSON-able result, or {"timeout": True}."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into the benchmark
        os.close(read)
        try:
            payload = json.dumps(function())
        except BaseException as exc:  # noqa: BLE001
            payload = json.dumps({"error": repr(exc)})
        os.write(write, payload.encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read)
        return {"timeout": True}
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    return json.loads(data)


def objgraph_chain(target):
    """find_backref_chain for one object: wall/CPU time, chain length, whether a module was reached."""
    def run():
        wall, cpu = time.perf_counter(), time.thread_time()
        calls = [0]
        real = gc.get_referrers

        def counted(*objects):
            calls[0] += 1
            return real(*objects)

        gc.get_referrers = counted
        found = objgraph.find_backref_chain(target, objgraph.is_proper_module, max_depth=20)
        return {"wall": time.perf_counter() - wall, "cpu": time.thread_time() - cpu, "chain": len(found),
                "found": objgraph.is_proper_module(found[0]), "get_referrers_calls": calls[0]}
    return run


def reverse_index_floor():
    """One pass of gc.get_referents over the heap into compact arrays, then edges grouped by referent."""
    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    start_rss, wall, cpu = rss(), time.perf_counter(), time.thread_time()
    objects = gc.get_objects()
    referents = array("q")
    offsets = array("q", [0])
    step = 65_536
    for first in range(0, len(objects), step):
        lists = list(map(gc.get_referents, objects[first:first + step]))
        offsets.extend(map(len, lists))
        referents.extend(map(id, chain.from_iterable(lists)))
    forward = {"wall": time.perf_counter() - wall, "cpu": time.thread_time() - cpu}
    # Group by referent: a stable sort of edge numbers by referent id (C speed for the sort itself).
    order = array("q", sorted(range(len(referents)), key=referents.__getitem__))
    return {"objects": len(objects), "edges": len(referents), "forward_wall": forward["wall"],
            "forward_cpu": forward["cpu"], "wall": time.perf_counter() - wall, "cpu": time.thread_time() - cpu,
            "rss_bytes": rss() - start_rss, "order_len": len(order)}


def time_find_holders(repeat):
    """Median wall/CPU of find_holders for the five types, the last result, and tracemalloc's peak."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = find_holders(list(TYPES.values()), max_seconds=30.0)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
    tracemalloc.start()
    tracemalloc.reset_peak()
    find_holders(list(TYPES.values()), max_seconds=120.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(walls), statistics.median(cpus), result, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--objgraph-timeout", type=float, default=300.0)
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "holders.json"))
    args = parser.parse_args()

    release = build_heap(args.objects)
    tracked = len(gc.get_objects())
    wall, cpu, result, peak = time_find_holders(args.repeat)
    best = {}
    for path in result.paths:
        best.setdefault(path.type_name, path)
    per_path_cpu = cpu / max(1, len(best))
    per_path_wall = wall / max(1, len(best))
    collect_start = time.perf_counter()
    gc.collect()
    collect_wall = time.perf_counter() - collect_start

    rows = []
    for label, target in sample_targets().items():
        chain_result = in_child(objgraph_chain(target), args.objgraph_timeout)
        rows.append((label, TYPES[label], best.get(TYPES[label]), chain_result))
    del target
    floor = None if args.skip_floor else in_child(reverse_index_floor, 600.0)
    release.set()

    print("heap: %d gc-tracked objects; Python %s; load average %s" % (
        tracked, platform.python_version(), " ".join("%.1f" % x for x in os.getloadavg())))
    print("find_holders, 5 types: %.3f s wall, %.3f s CPU (median of %d); complete=%s; %d objects walked; "
          "bookkeeping %.1f MB (estimate), tracemalloc peak %.1f MB" % (
              wall, cpu, args.repeat, result.complete, result.objects_visited, result.index_bytes / 1e6, peak / 1e6))
    print()
    print("| held by | bilge holder path | kind | container | bilge per path (CPU / wall) | "
          "objgraph chain (CPU / wall) | objgraph found module | ratio (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for label, name, path, og in rows:
        og_cpu = og.get("cpu")
        ratio = (og_cpu / per_path_cpu) if og_cpu else None
        print("| %s | `%s` | %s | %s | %.3f / %.3f s | %s | %s | %s |" % (
            label, path.path if path else "-", path.root_kind if path else "-",
            "%s len %d" % (path.container_type, path.container_length) if path else "-", per_path_cpu,
            per_path_wall, "timeout (> %.0f s)" % args.objgraph_timeout if og.get("timeout") else
            "%.3f / %.3f s (%d get_referrers, chain %d)" % (og["cpu"], og["wall"], og["get_referrers_calls"],
                                                             og["chain"]),
            og.get("found", "-"), "%.0fx" % ratio if ratio else "-"))
        table.append({"held_by": label, "type": name, "path": path.path if path else None,
                      "root_kind": path.root_kind if path else None,
                      "container": [path.container_type, path.container_length] if path else None,
                      "targets": path.targets if path else None, "objgraph": og,
                      "ratio_cpu": ratio})
    print()
    print("gc.collect() (part of every objgraph chain): %.3f s wall" % collect_wall)
    if floor:
        print("one-pass reverse index floor: %s" % json.dumps(floor))
    output = {"heap_objects": tracked, "python": platform.python_version(), "load_average": os.getloadavg(),
              "find_holders": {"wall": wall, "cpu": cpu, "per_path_wall": per_path_wall,
                               "per_path_cpu": per_path_cpu, "repeat": args.repeat, "complete": result.complete,
                               "objects_walked": result.objects_visited, "index_bytes": result.index_bytes,
                               "tracemalloc_peak_bytes": peak,
                               "paths": [vars(p) for p in result.paths]},
              "objgraph": table, "gc_collect_wall": collect_wall, "reverse_index_floor": floor}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as out:
        json.dump(output, out, indent=2)
    print("wrote %s" % os.path.relpath(args.out))


if __name__ == "__main__":
    main()
