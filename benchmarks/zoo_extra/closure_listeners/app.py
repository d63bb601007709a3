"""Order events with in-process listeners.

Tasks subscribe a callback to the process-wide event bus so a later
"order.settled" event can update the order's summary. Nothing unsubscribes
them: each callback's closure keeps its summary alive.
"""
import logging

from zoo_support import make_celery

app = make_celery("closure_listeners")
log = logging.getLogger(__name__)


class EventBus:
    def __init__(self):
        self._listeners = []

    def subscribe(self, callback):
        self._listeners.append(callback)

    def publish(self, event):
        for callback in list(self._listeners):
            callback(event)


BUS = EventBus()


@app.task(name="closure_listeners.tasks.track_order")
def track_order(order_id, payload):
    summary = {"order_id": order_id, "customer": payload["customer"]["id"],
               "lines": [(i["sku"], i["qty"], round(i["unit_price"] * i["qty"], 2)) for i in payload["items"]],
               "notes": payload["notes"].upper(), "settled": False}

    def on_settled(event):
        if event.get("order_id") == summary["order_id"]:
            summary["settled"] = True

    BUS.subscribe(on_settled)
    return {"order_id": order_id, "lines": len(summary["lines"])}


@app.task(name="closure_listeners.tasks.score_fraud")
def score_fraud(order_id, payload):
    total = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    score = min(1.0, total / 5000) * (0.5 if payload["customer"]["tier"] in ("gold", "platinum") else 1.0)
    return {"order_id": order_id, "score": round(score, 3)}


@app.task(name="closure_listeners.tasks.tag_order")
def tag_order(order_id, payload):
    tags = sorted(set(payload["tags"]) | {payload["tenant"]})
    return {"order_id": order_id, "tags": tags}
