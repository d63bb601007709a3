"""Shipping-quote worker whose carrier API times out now and then (no leak).

Two calls in three of ``quote_shipping`` fail their first two tries and are
retried at once (``autoretry_for``). Each failed try leaves its exception,
traceback and frames as cyclic garbage that the collector frees only at a
full collection, which a big heap makes rare: RSS climbs with the retries to
a high-water mark and stays there, and users file it as a leak after tasks
raise (celery/celery#6058, celery/celery#4371). ``gc.collect()`` frees it
all; nothing is kept.
"""
import logging

from zoo_support import make_celery

app = make_celery("retry_storm")
log = logging.getLogger(__name__)


class CarrierTimeout(Exception):
    """The carrier's API did not answer in time."""


@app.task(name="retry_storm.tasks.quote_shipping", bind=True, autoretry_for=(CarrierTimeout,), max_retries=3,
          default_retry_delay=0)
def quote_shipping(self, order_id, payload):
    if sum(map(ord, str(order_id))) % 3 and self.request.retries < 2:
        raise CarrierTimeout("carrier timed out on try %d for order %s" % (self.request.retries, order_id))
    grams = sum(i["weight_g"] * i["qty"] for i in payload["items"])
    return {"order_id": order_id, "grams": grams, "quote": round(4.5 + grams / 1000 * 1.2, 2)}


@app.task(name="retry_storm.tasks.price_order")
def price_order(order_id, payload):
    net = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    return {"order_id": order_id, "net": round(net, 2)}


@app.task(name="retry_storm.tasks.tag_order")
def tag_order(order_id, payload):
    tags = sorted(set(payload["tags"]) | {payload["tenant"], payload["customer"]["tier"]})
    return {"order_id": order_id, "tags": tags}
