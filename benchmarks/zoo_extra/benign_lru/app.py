"""Catalogue worker with a bounded memoised tax table (no leak).

Same shape as a per-order cache, but ``lru_cache(maxsize=256)`` evicts: the
cache fills during warm-up and then stays at 256 entries.
"""
import functools
import logging

from zoo_support import make_celery

app = make_celery("benign_lru")
log = logging.getLogger(__name__)

TAX_RATES = {"eu-west": 0.21, "eu-north": 0.25, "us-east": 0.0875, "us-west": 0.0725, "apac": 0.10}


@functools.lru_cache(maxsize=256)
def tax_table(order_id, region, skus):
    rate = TAX_RATES.get(region, 0.2)
    return {sku: {"rate": rate, "label": "%s %s %.4f" % (order_id, sku, rate), "exempt": False} for sku in skus}


@app.task(name="benign_lru.tasks.tax_order")
def tax_order(order_id, payload):
    skus = tuple(i["sku"] for i in payload["items"])
    table = tax_table(order_id, payload["customer"]["region"], skus)
    tax = sum(i["unit_price"] * i["qty"] * table[i["sku"]]["rate"] for i in payload["items"])
    return {"order_id": order_id, "tax": round(tax, 2)}


@app.task(name="benign_lru.tasks.weigh_order")
def weigh_order(order_id, payload):
    return {"order_id": order_id, "weight_g": sum(i["weight_g"] * i["qty"] for i in payload["items"])}


@app.task(name="benign_lru.tasks.summarise_order")
def summarise_order(order_id, payload):
    titles = sorted(i["title"] for i in payload["items"])
    return {"order_id": order_id, "first": titles[0], "count": len(titles)}
