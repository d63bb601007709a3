"""Pricing worker that keeps failures for a diagnostics endpoint.

Orders with an unknown currency fail pricing; the task records the exception
so an admin view can show recent failures. The list is never trimmed, and each
exception holds its traceback, whose frames hold the order being priced.
"""
import logging

from zoo_support import make_celery

app = make_celery("stored_tracebacks")
log = logging.getLogger(__name__)

FX_TO_EUR = {"EUR": 1.0, "USD": 0.92}  # GBP and JPY rates come from a feed that is down
_RECENT_FAILURES = []


class PricingError(Exception):
    pass


def _convert(lines, currency):
    if currency not in FX_TO_EUR:
        raise PricingError("no rate for %s" % currency)
    return [round(net * FX_TO_EUR[currency], 2) for net in lines]


@app.task(name="stored_tracebacks.tasks.price_order")
def price_order(order_id, payload):
    lines = [{"sku": i["sku"], "net": i["unit_price"] * i["qty"], "title": i["title"].upper()} for i in payload["items"]]
    try:
        totals = _convert([line["net"] for line in lines], payload["customer"]["currency"])
    except PricingError as exc:
        _RECENT_FAILURES.append(exc)
        log.info("order %s not priced: %s", order_id, exc)
        return {"order_id": order_id, "ok": False}
    return {"order_id": order_id, "ok": True, "total": round(sum(totals), 2)}


@app.task(name="stored_tracebacks.tasks.route_order")
def route_order(order_id, payload):
    country = payload["shipping"]["address"]["country"]
    return {"order_id": order_id, "warehouse": "eu-1" if country in ("NL", "DE", "FR") else "intl-1"}


@app.task(name="stored_tracebacks.tasks.check_stock")
def check_stock(order_id, payload):
    short = [i["sku"] for i in payload["items"] if i["qty"] > 4]
    return {"order_id": order_id, "short": short}
