"""Fulfilment worker with a logger per job.

Each shipment job gets its own logger (``jobs.<order id>``) with a buffering
handler, so its lines can be attached to the order when it fails. Loggers
live in logging's manager forever: ``getLogger`` never forgets a name.
"""
import io
import logging

from zoo_support import make_celery

app = make_celery("per_job_logger")
log = logging.getLogger(__name__)

CARRIER_CUTOFF = {"dhl": 16, "ups": 17, "fedex": 18, "postnl": 15, "royalmail": 14}


def _job_logger(order_id):
    job_log = logging.getLogger("jobs.%s" % order_id)
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    job_log.addHandler(handler)
    job_log.setLevel(logging.INFO)
    job_log.propagate = False
    return job_log


@app.task(name="per_job_logger.tasks.plan_shipment")
def plan_shipment(order_id, payload):
    job_log = _job_logger(order_id)
    weight = sum(i["weight_g"] * i["qty"] for i in payload["items"])
    carrier = payload["shipping"]["carrier"]
    job_log.info("planning %d g with %s, cutoff %d:00", weight, carrier, CARRIER_CUTOFF.get(carrier, 16))
    return {"order_id": order_id, "weight_g": weight, "carrier": carrier}


@app.task(name="per_job_logger.tasks.check_address")
def check_address(order_id, payload):
    address = payload["shipping"]["address"]
    ok = bool(address["street"]) and len(address["zip"]) == 5
    if not ok:
        log.warning("order %s: bad address", order_id)
    return {"order_id": order_id, "ok": ok}


@app.task(name="per_job_logger.tasks.count_items")
def count_items(order_id, payload):
    return {"order_id": order_id, "items": sum(i["qty"] for i in payload["items"])}
