"""Task timings collected by a metrics reporter thread that never reports.

A decorator times the invoice task and hands each timing to a reporter
thread. The reporter keeps the samples in a local list of its ``run`` loop to
compute percentiles when it reports; it reports only when a push gateway is
configured, and none is, so the list is never cleared: one small dict per
call, held by a local variable of a thread's frame, reachable from no module
or class. Modelled on mokshaproject/moksha#57 (a consumer appended every
message's processing time to a list that only an unconfigured monitoring
producer would read and reset).
"""
import functools
import logging
import os
import queue
import threading
import time

from celery.signals import worker_process_init

from zoo_support import make_celery

app = make_celery("reporter_thread_samples")
log = logging.getLogger(__name__)

PUSH_GATEWAY = os.environ.get("METRICS_PUSH_GATEWAY")


class MetricsReporter(threading.Thread):
    def __init__(self):
        super().__init__(name="metrics-reporter", daemon=True)
        self.inbox = queue.Queue()

    def run(self):
        samples = []
        while True:
            name, started, elapsed = self.inbox.get()
            samples.append({"task": name, "at": started, "ms": elapsed * 1000.0})
            if PUSH_GATEWAY and len(samples) >= 200:
                log.info("pushing %d samples to %s", len(samples), PUSH_GATEWAY)
                samples = []


REPORTER = None


@worker_process_init.connect
def _start_reporter(**_):
    global REPORTER
    REPORTER = MetricsReporter()
    REPORTER.start()


def timed(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            if REPORTER is not None:
                REPORTER.inbox.put((fn.__name__, started, time.time() - started))
    return wrapper


@app.task(name="reporter_thread_samples.tasks.render_invoice")
@timed
def render_invoice(order_id, payload):
    lines = ["%s x%d" % (i["title"], i["qty"]) for i in payload["items"]]
    return {"order_id": order_id, "lines": len(lines)}


@app.task(name="reporter_thread_samples.tasks.price_order")
def price_order(order_id, payload):
    net = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    return {"order_id": order_id, "net": round(net, 2)}


@app.task(name="reporter_thread_samples.tasks.tag_order")
def tag_order(order_id, payload):
    return {"order_id": order_id, "b2b": "b2b" in payload["tags"]}
