"""Audit shipping through a background flusher thread.

Tasks hand audit records to a queue; a flusher thread batches them and is
meant to write a batch every 500 records to the audit store. The flush
condition compares against the wrong counter, so the batch only grows: the
records live in a local variable of a thread's frame, reachable from no
module or class.
"""
import logging
import queue
import threading

from celery.signals import worker_process_init

from zoo_support import make_celery

app = make_celery("thread_local_buffer")
log = logging.getLogger(__name__)

_AUDIT_QUEUE = queue.Queue()
FLUSH_EVERY = 500


def _flusher():
    pending = []
    flushed = 0
    while True:
        record = _AUDIT_QUEUE.get()
        pending.append(record)
        if flushed >= FLUSH_EVERY:  # bug: should be len(pending)
            log.info("flushing %d audit records", len(pending))
            pending = []
            flushed += 1


@worker_process_init.connect
def _start_flusher(**_):
    threading.Thread(target=_flusher, name="audit-flusher", daemon=True).start()


@app.task(name="thread_local_buffer.tasks.audit_shipment")
def audit_shipment(order_id, payload):
    record = {"order_id": order_id, "carrier": payload["shipping"]["carrier"],
              "address": dict(payload["shipping"]["address"]),
              "lines": [{"sku": i["sku"], "qty": i["qty"], "title": i["title"]} for i in payload["items"]]}
    _AUDIT_QUEUE.put(record)
    return {"order_id": order_id}


@app.task(name="thread_local_buffer.tasks.quote")
def quote(order_id, payload):
    return {"order_id": order_id, "eur": round(sum(i["unit_price"] * i["qty"] for i in payload["items"]), 2)}


@app.task(name="thread_local_buffer.tasks.classify")
def classify(order_id, payload):
    return {"order_id": order_id, "b2b": "b2b" in payload["tags"]}
