"""Order webhooks with duplicate suppression.

Carriers retry webhooks, so every processed delivery is remembered by a short
key and duplicates are dropped; a list of keys is kept too, for the daily
"processed today" export that runs in another service. Nothing ever forgets
a key: ~200 bytes per call, forever (modelled on celery/celery#3086, revoked
task ids kept far past their cap, and on prometheus label sets growing with
unique ids, BerriAI/litellm#27272).
"""
import logging

from zoo_support import make_celery

app = make_celery("seen_ids_set")
log = logging.getLogger(__name__)

_SEEN_DELIVERIES = set()
_PROCESSED_TODAY = []


@app.task(name="seen_ids_set.tasks.handle_delivery_webhook")
def handle_delivery_webhook(order_id, payload):
    key = "%s:%s" % (payload["shipping"]["carrier"], order_id)
    if key in _SEEN_DELIVERIES:
        return {"order_id": order_id, "duplicate": True}
    _SEEN_DELIVERIES.add(key)
    _PROCESSED_TODAY.append(key)
    return {"order_id": order_id, "duplicate": False, "items": len(payload["items"])}


@app.task(name="seen_ids_set.tasks.price_order")
def price_order(order_id, payload):
    net = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    return {"order_id": order_id, "net": round(net, 2)}


@app.task(name="seen_ids_set.tasks.tag_order")
def tag_order(order_id, payload):
    tags = sorted(set(payload["tags"]) | {payload["tenant"], payload["customer"]["tier"]})
    return {"order_id": order_id, "tags": tags}
