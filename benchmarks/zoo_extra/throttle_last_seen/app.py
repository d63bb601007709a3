"""Customer notifications with a per-recipient throttle (a slow leak).

A notification is sent at most once a minute per recipient and channel: the
time of the last send is kept in a module-level dict keyed by
"channel:customer:order". The window check never deletes a key, so every
recipient ever notified stays in the dict forever: a short str key and a
float per call, ~150-200 bytes, none of them a gc-tracked object (modelled on
agiletec-inc/airis-mcp-gateway#102, a Python rate limiter's per-client
``_store`` dict with no expiry, and StevSant/HireSense#152, idle keys never
reclaimed).
"""
import logging
import time

from zoo_support import make_celery

app = make_celery("throttle_last_seen")
log = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
_LAST_SENT = {}


@app.task(name="throttle_last_seen.tasks.notify_customer")
def notify_customer(order_id, payload):
    key = "email:%s:%s" % (payload["customer"]["id"], order_id)
    now = time.time()
    if now - _LAST_SENT.get(key, 0.0) < WINDOW_SECONDS:
        return {"order_id": order_id, "throttled": True}
    _LAST_SENT[key] = now
    return {"order_id": order_id, "throttled": False, "to": payload["customer"]["tier"]}


@app.task(name="throttle_last_seen.tasks.price_order")
def price_order(order_id, payload):
    net = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    return {"order_id": order_id, "net": round(net, 2)}


@app.task(name="throttle_last_seen.tasks.pack_order")
def pack_order(order_id, payload):
    boxes = sorted((i["sku"], i["qty"]) for i in payload["items"])
    return {"order_id": order_id, "boxes": len(boxes)}
