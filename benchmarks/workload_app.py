"""Realistic Celery task mixes for the overhead benchmarks, in three shapes.

``BENCH_SHAPE`` chooses what the three tasks ``workload.a``, ``workload.b``
and ``workload.c`` do (the same work under each name):

- ``short``   (default) a ~1 ms web-backend task: build a few-KB order document
              (dicts and lists), JSON encode and decode it, price it, format a
              receipt, hash it (``BENCH_SHORT_PASSES`` pricing passes);
- ``alloc``   an allocation-heavy ~4 ms task: parse a ~3 KB JSON order
              document ``BENCH_ALLOC_REPS`` (60) times with ``json.loads`` and
              build a dict index from each parse; returns a short digest;
- ``bigheap`` the worker holds a large heap: ``BENCH_HEAP_OBJECTS``
              (1,000,000) live gc-tracked objects (small dicts, each with a
              small list) built at import, i.e. in the Celery main process
              before it forks, so the pool children share them copy-on-write
              (until gc writes to their headers); ~5 ms tasks (pricing passes
              plus reads of a few hundred heap records).

``BENCH_LEAK`` (bytes, default 0): when > 0, ``workload.b`` additionally
appends a dict holding a unique string of that many characters to a
module-level list on every call; ``a`` and ``c`` keep nothing. With 0,
nothing survives any task: the only difference between the variants is
the leak.

``workload.process_order`` (the original single task: ``BENCH_PASSES``
passes, default 4) stays for ``agent_memory.py``.

Bookkeeping (no result backend) goes to the broker's Redis, one pipelined
round trip per task in ``task_postrun``, the same in every mode:

- ``bench:t_first``    time the first task started (SETNX, once per process)
- ``bench:t_last``     time the most recent task ended
- ``bench:done``       number of finished tasks
- ``bench:cpu``        hash pid -> CPU seconds (all threads of that process,
                       ``time.process_time``) spent since its first task began,
                       written at every task end: CPU per task is robust to
                       other load on the machine, wall-clock throughput is not
- ``bench:tcpu``       hash pid -> CPU seconds of the thread that runs the
                       tasks only (``time.thread_time``), same interval: the
                       rest of ``bench:cpu`` is the process's other threads
                       (an agent's own thread)
- ``bench:receivers``  JSON: the task_prerun / task_postrun receivers in call
                       order, as reordered (see below), set once
- ``bench:lat:<pid>``  that process's task durations, APPENDed as packed
                       little-endian doubles (seconds), one per task: the
                       ``time.perf_counter`` interval from this module's
                       ``task_prerun`` handler to its ``task_postrun`` handler
                       (taken before the Redis round trip). These two handlers
                       are moved to run first and last respectively, so the
                       interval spans every other prerun/postrun handler
                       (bilge's per-task hooks) as well as the task. Nothing
                       is kept in the process, so the bookkeeping cannot look
                       like a leak.
- ``bench:end:<pid>``  per task, two packed doubles: its end (``time.time``)
                       and the process's CPU time since its first task.

Broker: ``BENCH_BROKER_URL``. Calibration: ``python benchmarks/workload_app.py``
(ms per task body for every shape, in one process).
"""

import hashlib
import json
import os
import struct
import time
import weakref

from celery import Celery, signals

BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6399/0")
ITEMS = int(os.environ.get("BENCH_ITEMS", "24"))
# Passes over the order (pricing in several currencies): sets the task's cost.
PASSES = int(os.environ.get("BENCH_PASSES", "4"))

SHAPES = ("short", "alloc", "bigheap")
SHAPE = os.environ.get("BENCH_SHAPE", "short")
if SHAPE not in SHAPES:
    raise ValueError("BENCH_SHAPE must be one of %s, not %r" % (", ".join(SHAPES), SHAPE))
LEAK = int(os.environ.get("BENCH_LEAK", "0"))
SHORT_PASSES = int(os.environ.get("BENCH_SHORT_PASSES", "5"))
ALLOC_ITEMS = int(os.environ.get("BENCH_ALLOC_ITEMS", "16"))  # ~2.9 KB of JSON
ALLOC_REPS = int(os.environ.get("BENCH_ALLOC_REPS", "60"))
HEAP_OBJECTS = int(os.environ.get("BENCH_HEAP_OBJECTS", "1000000"))
BIG_PASSES = int(os.environ.get("BENCH_BIG_PASSES", "24"))
BIG_READS = int(os.environ.get("BENCH_BIG_READS", "400"))
TASK_NAMES = ("workload.a", "workload.b", "workload.c")
LEAKY_TASK = "workload.b"

app = Celery("workload", broker=BROKER)
app.conf.update(
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=4,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    enable_utc=True,
)

_SKUS = ["SKU-%05d" % i for i in range(500)]
_STREETS = ("Harbour Road", "Keel Lane", "Mast Street", "Rudder Way", "Anchor Court")


def build_order(order_id, items=None):
    """A few-KB order document (about 4 KB of JSON with 24 lines, 2.9 KB with 16)."""
    lines = []
    for j in range(ITEMS if items is None else items):
        sku = _SKUS[(order_id * 31 + j * 7) % len(_SKUS)]
        lines.append({
            "sku": sku,
            "title": "Widget %s, colour %d, size %s" % (sku[-3:], j % 9, "SMLX"[j % 4]),
            "qty": 1 + (order_id + j) % 5,
            "unit_price": round(3.5 + ((order_id * 13 + j * 17) % 400) / 7.0, 2),
            "tags": ["promo" if j % 3 == 0 else "regular", "w%d" % (j % 52)],
            "attrs": {"weight_g": 100 + j * 13, "fragile": j % 7 == 0},
        })
    return {
        "id": order_id,
        "customer": {
            "id": 10_000 + order_id % 977,
            "name": "Customer %d" % (order_id % 977),
            "email": "customer%d@example.com" % (order_id % 977),
            "address": {"street": "%d %s" % (order_id % 300, _STREETS[order_id % 5]), "city": "Portsmouth",
                        "zip": "PO%d %dXX" % (order_id % 9, order_id % 10)},
        },
        "currency": "EUR",
        "lines": lines,
        "notes": "Leave at the door. " * (1 + order_id % 3),
    }


_RATES = (("EUR", 1.0), ("USD", 1.08), ("GBP", 0.85), ("CHF", 0.96), ("SEK", 11.4), ("JPY", 162.0))


def process(order_id, passes=None):
    """The original task body: PASSES pricing passes; returns a short digest (ignored)."""
    digest = ""
    for p in range(PASSES if passes is None else passes):
        digest = _price(order_id, _RATES[p % len(_RATES)], digest)
    return digest


def _price(order_id, rate, previous):
    currency, factor = rate
    doc = build_order(order_id)
    doc["currency"] = currency
    doc["previous"] = previous
    raw = json.dumps(doc, sort_keys=True)
    order = json.loads(raw)
    by_tag = {}
    total = 0.0
    for line in order["lines"]:
        line["unit_price"] = round(line["unit_price"] * factor, 2)
        amount = line["qty"] * line["unit_price"]
        total += amount
        for tag in line["tags"]:
            by_tag.setdefault(tag, []).append(line["sku"])
    receipt = "\n".join(
        "%-10s %-32s %3d x %8.2f = %9.2f" % (ln["sku"], ln["title"][:32], ln["qty"], ln["unit_price"],
                                             ln["qty"] * ln["unit_price"])
        for ln in order["lines"]
    )
    receipt += "\nTOTAL %s %.2f (%d tags)" % (order["currency"], total, len(by_tag))
    digest = hashlib.sha256(receipt.encode()).hexdigest()
    digest = hashlib.md5((digest + raw).encode(), usedforsecurity=False).hexdigest()
    # A second round trip, as a task handing the order on would do.
    summary = json.loads(json.dumps({"id": order["id"], "total": round(total, 2), "digest": digest,
                                     "by_tag": {k: len(v) for k, v in by_tag.items()}}))
    return summary["digest"]


# ----------------------------------------------------------------- shapes --
def work_short(order_id):
    """~1 ms: the original pricing passes, fewer of them."""
    return process(order_id, SHORT_PASSES)


def work_alloc(order_id):
    """~4 ms of allocation: ALLOC_REPS parses of one ~3 KB order, each indexed; nothing survives."""
    raw = json.dumps(build_order(order_id, ALLOC_ITEMS))
    lines_seen = tags_seen = 0
    qty = 0
    for rep in range(ALLOC_REPS):
        order = json.loads(raw)
        by_sku = {}
        by_tag = {}
        by_weight = {}
        rows = []
        for line in order["lines"]:
            row = {"sku": line["sku"], "title": line["title"].lower(), "qty": line["qty"],
                   "amount": line["qty"] * line["unit_price"], "tags": tuple(line["tags"]),
                   "attrs": dict(line["attrs"], line=len(rows))}
            rows.append(row)
            by_sku["%d/%s/%d" % (order["id"], row["sku"], rep)] = row
            for tag in row["tags"]:
                by_tag.setdefault(tag, []).append(row)
                by_tag.setdefault((tag, row["attrs"]["fragile"]), []).append(row["sku"])
            by_weight.setdefault(row["attrs"]["weight_g"] // 100, []).append((row["sku"], row["qty"], row["amount"]))
        index = {"id": order["id"], "customer": dict(order["customer"], address=dict(order["customer"]["address"])),
                 "rows": rows, "skus": sorted(by_sku), "tags": {str(k): len(v) for k, v in by_tag.items()},
                 "weights": by_weight}
        lines_seen += len(index["skus"])
        tags_seen += len(index["tags"])
        qty += sum(row["qty"] for row in rows)
    return "%d:%d:%d:%d" % (order_id, lines_seen, tags_seen, qty)


def _build_heap(objects):
    """``objects`` live gc-tracked objects: objects // 2 small dicts, each holding a small list."""
    skus = _SKUS
    return [{"id": i, "sku": skus[i % 500], "qty": [i % 5, i % 7]} for i in range(objects // 2)]


# Built at import, i.e. in the Celery main process before the pool forks.
HEAP = _build_heap(HEAP_OBJECTS) if SHAPE == "bigheap" else []


def work_bigheap(order_id):
    """~5 ms: BIG_PASSES pricing passes plus BIG_READS reads of records in the shared heap."""
    digest = process(order_id, BIG_PASSES)
    n = len(HEAP)
    total = 0
    if n:
        step = 7919  # prime: reads spread over the whole heap
        for k in range(BIG_READS):
            rec = HEAP[(order_id * 104729 + k * step) % n]
            total += rec["qty"][0] + len(rec["sku"])
    return "%s:%d" % (digest[:8], total)


WORK = {"short": work_short, "alloc": work_alloc, "bigheap": work_bigheap}[SHAPE]

# What the leaking task keeps (only with BENCH_LEAK > 0).
_LEAKED = []


def _leak(order_id):
    if LEAK > 0:
        tag = "%08d" % order_id
        _LEAKED.append({"call": order_id, "blob": (tag * (LEAK // len(tag) + 1))[:LEAK]})


@app.task(name="workload.a")
def task_a(order_id):
    return WORK(order_id)


@app.task(name="workload.b")
def task_b(order_id):
    _leak(order_id)
    return WORK(order_id)


@app.task(name="workload.c")
def task_c(order_id):
    return WORK(order_id)


@app.task(name="workload.process_order")
def process_order(order_id):
    return process(order_id)


# ------------------------------------------------------------ bookkeeping --
_client = None
_client_pid = None
_first_pid = None
_cpu0 = 0.0
_tcpu0 = 0.0
_t0 = 0.0
_pack = struct.Struct("<d").pack
_pack_end = struct.Struct("<dd").pack


def _redis():
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        import redis

        _client = redis.Redis.from_url(BROKER)
        _client_pid = os.getpid()
    return _client


def _resolve(receiver):
    return receiver() if isinstance(receiver, weakref.ReferenceType) else receiver


def _receiver_names(signal):
    """The signal's receivers in call order, as module.qualname (for the record)."""
    names = []
    for entry in list(signal.receivers):
        fn = _resolve(entry[1])
        names.append("%s.%s" % (getattr(fn, "__module__", "?"), getattr(fn, "__qualname__", repr(fn))))
    return names


def _bracket_other_handlers():
    """Call this module's prerun handler first and its postrun handler last.

    Handlers run in the order they were connected, and an agent such as
    bilge's connects when ``celery.signals`` is imported, before this module:
    left alone, the measured interval would hold the other postrun handlers
    but not the other prerun ones. Reordered, it holds both, in every mode
    (a no-op where nothing else is connected).
    """
    for signal, ours, first in ((signals.task_prerun, _bench_prerun, True),
                                (signals.task_postrun, _bench_postrun, False)):
        with signal.lock:
            mine = [e for e in signal.receivers if _resolve(e[1]) is ours]
            rest = [e for e in signal.receivers if _resolve(e[1]) is not ours]
            signal.receivers[:] = mine + rest if first else rest + mine
            signal.sender_receivers_cache.clear()


@signals.worker_process_init.connect
def _bench_process_init(**_):
    _bracket_other_handlers()


@signals.task_prerun.connect
def _bench_prerun(**_):
    global _first_pid, _cpu0, _tcpu0, _t0
    if _first_pid != os.getpid():
        _first_pid = os.getpid()
        _cpu0 = time.process_time()
        _tcpu0 = time.thread_time()
        try:
            _bracket_other_handlers()  # again, in case a handler was connected after process init
            r = _redis()
            r.setnx("bench:t_first", repr(time.time()))
            # Which other handlers fall inside the measured prerun -> postrun interval.
            r.setnx("bench:receivers", json.dumps({"task_prerun": _receiver_names(signals.task_prerun),
                                                   "task_postrun": _receiver_names(signals.task_postrun)}))
        except Exception:  # the benchmark must never break the worker
            pass
    _t0 = time.perf_counter()


@signals.task_postrun.connect
def _bench_postrun(**_):
    duration = time.perf_counter() - _t0
    try:
        pid = os.getpid()
        pipe = _redis().pipeline(transaction=False)
        pipe.set("bench:t_last", repr(time.time()))
        pipe.hset("bench:cpu", pid, repr(time.process_time() - _cpu0))
        pipe.hset("bench:tcpu", pid, repr(time.thread_time() - _tcpu0))
        pipe.append("bench:lat:%d" % pid, _pack(duration))
        # When each task ended and the process's CPU by then: side-by-side
        # runs compare two workers over the interval both were running.
        pipe.append("bench:end:%d" % pid, _pack_end(time.time(), time.process_time() - _cpu0))
        pipe.incr("bench:done")
        pipe.execute()
    except Exception:
        pass


def _calibrate(fn, n):
    for i in range(min(50, n)):  # warm-up
        fn(i)
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1000


if __name__ == "__main__":  # calibration: python benchmarks/workload_app.py
    print("process_order: payload %d bytes; %d passes; %.3f ms per task body"
          % (len(json.dumps(build_order(1))), PASSES, _calibrate(process, 1000)))
    print("short: %d passes; %.3f ms per task body" % (SHORT_PASSES, _calibrate(work_short, 1000)))
    print("alloc: payload %d bytes; %d parses; %.3f ms per task body"
          % (len(json.dumps(build_order(1, ALLOC_ITEMS))), ALLOC_REPS, _calibrate(work_alloc, 300)))
    import gc

    t = time.perf_counter()
    HEAP = _build_heap(HEAP_OBJECTS)
    built = time.perf_counter() - t
    gc.collect()
    t = time.perf_counter()
    gc.collect()
    print("bigheap: %d tracked objects built in %.2fs (full collection %.3fs); %d passes + %d reads; "
          "%.3f ms per task body" % (len(gc.get_objects()), built, time.perf_counter() - t, BIG_PASSES, BIG_READS,
                                     _calibrate(work_bigheap, 300)))
