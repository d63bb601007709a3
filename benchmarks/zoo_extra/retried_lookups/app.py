"""Invoicing worker whose currency lookups fail transiently and are retried.

The FX provider rate-limits: two calls in three fail their first two tries
and are retried at once (``autoretry_for``), as Celery's docs suggest. Each
retry leaves the failed try's exception, traceback and frames as cyclic
garbage that the collector frees late, so RSS climbs to a high-water mark
while the retries run (what celery/celery#6058 reports as a leak after tasks
raise). The leak is elsewhere: every rendered invoice is kept in a
module-level archive list that nothing trims (~1.5 KB per call).
"""
import logging

from zoo_support import make_celery

app = make_celery("retried_lookups")
log = logging.getLogger(__name__)

_RENDERED_INVOICES = []
_RATES = {"EUR": 1.0, "USD": 1.08, "GBP": 0.86, "SEK": 11.4, "JPY": 161.0}


class RateLimited(Exception):
    """The FX provider said try again."""


@app.task(name="retried_lookups.tasks.render_invoice")
def render_invoice(order_id, payload):
    lines = ["%-12s %3d x %8.2f" % (i["sku"], i["qty"], i["unit_price"]) for i in payload["items"]]
    text = "INVOICE %s for %s\n%s\n" % (order_id, payload["customer"]["region"], "\n".join(lines)) + "." * 1200
    _RENDERED_INVOICES.append(text)
    return {"order_id": order_id, "lines": len(lines)}


@app.task(name="retried_lookups.tasks.convert_total", bind=True, autoretry_for=(RateLimited,), max_retries=3,
          default_retry_delay=0)
def convert_total(self, order_id, payload):
    if sum(map(ord, str(order_id))) % 3 and self.request.retries < 2:
        raise RateLimited("rate limited on try %d for order %s" % (self.request.retries, order_id))
    net = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    currency = ("USD", "GBP", "SEK", "JPY")[len(payload["items"]) % 4]
    return {"order_id": order_id, "total": round(net * _RATES[currency], 2), "currency": currency}


@app.task(name="retried_lookups.tasks.tag_order")
def tag_order(order_id, payload):
    tags = sorted(set(payload["tags"]) | {payload["tenant"], payload["customer"]["tier"]})
    return {"order_id": order_id, "tags": tags}
