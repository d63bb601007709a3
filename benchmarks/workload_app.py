"""A realistic, non-leaking Celery task mix for the overhead benchmarks.

One task, ``workload.process_order``, does what a typical web-backend task
does with an order of a few KB: build it (dicts and lists), JSON encode and
decode it, total it, format a receipt and hash it. About 1 ms of CPU on a
small VM. Nothing survives the task: no caches, no globals that grow.

Completion bookkeeping (no result backend) goes to the broker's Redis, one
pipelined round trip per task, the same in every mode:

- ``bench:t_first``  time the first task started (SETNX, once per process)
- ``bench:t_last``   time the most recent task ended
- ``bench:done``     number of finished tasks
- ``bench:cpu``      hash pid -> CPU seconds (all threads of that process,
                     ``time.process_time``) spent since its first task began,
                     written at every task end: CPU per task is robust to
                     other load on the machine, wall-clock throughput is not

Broker: ``BENCH_BROKER_URL``. Size of the work: ``BENCH_ITEMS`` (order
lines, default 24).
"""

import hashlib
import json
import os
import time

from celery import Celery, signals

BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6399/0")
ITEMS = int(os.environ.get("BENCH_ITEMS", "24"))
# Passes over the order (pricing in several currencies): sets the task's cost.
PASSES = int(os.environ.get("BENCH_PASSES", "4"))

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


def build_order(order_id):
    """A few-KB order document (about 4 KB of JSON with 24 lines)."""
    lines = []
    for j in range(ITEMS):
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


def process(order_id):
    """The task body: PASSES pricing passes; returns a short digest (ignored)."""
    digest = ""
    for p in range(PASSES):
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


@app.task(name="workload.process_order")
def process_order(order_id):
    return process(order_id)


# ------------------------------------------------------------ bookkeeping --
_client = None
_client_pid = None
_first_pid = None
_cpu0 = 0.0


def _redis():
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        import redis

        _client = redis.Redis.from_url(BROKER)
        _client_pid = os.getpid()
    return _client


@signals.task_prerun.connect
def _bench_prerun(**_):
    global _first_pid, _cpu0
    if _first_pid != os.getpid():
        _first_pid = os.getpid()
        _cpu0 = time.process_time()
        try:
            _redis().setnx("bench:t_first", repr(time.time()))
        except Exception:  # the benchmark must never break the worker
            pass


@signals.task_postrun.connect
def _bench_postrun(**_):
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.set("bench:t_last", repr(time.time()))
        pipe.hset("bench:cpu", os.getpid(), repr(time.process_time() - _cpu0))
        pipe.incr("bench:done")
        pipe.execute()
    except Exception:
        pass


if __name__ == "__main__":  # quick calibration: python benchmarks/workload_app.py
    n = 2000
    t0 = time.perf_counter()
    for i in range(n):
        process(i)
    dt = time.perf_counter() - t0
    print("payload %d bytes; %d passes; %.3f ms per task body" % (len(json.dumps(build_order(1))), PASSES,
                                                               dt / n * 1000))
