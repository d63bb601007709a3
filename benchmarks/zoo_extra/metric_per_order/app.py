"""Order export with a per-order metric.

Each export is counted in Prometheus, and someone added the order id as a
label "to find slow orders in Grafana". ``Counter.labels`` creates a child
metric per new label set (a ``Counter`` with its own value and lock), kept in
the parent's ``_metrics`` dict forever: ~700 bytes per call, a slow leak that
only shows after thousands of calls (modelled on prometheus/client_python#937,
"labels method lead to memory leak" in a Celery task, and chrisguidry/docket#164,
unbounded task-key labels).
"""
import logging

from prometheus_client import Counter

from zoo_support import make_celery

app = make_celery("metric_per_order")
log = logging.getLogger(__name__)

EXPORTS = Counter("order_exports_total", "Orders exported", ["tenant", "order"])


@app.task(name="metric_per_order.tasks.export_order")
def export_order(order_id, payload):
    lines = ["%s;%s;%d" % (order_id, i["sku"], i["qty"]) for i in payload["items"]]
    EXPORTS.labels(tenant=payload["tenant"], order=str(order_id)).inc()
    return {"order_id": order_id, "lines": len(lines)}


@app.task(name="metric_per_order.tasks.price_order")
def price_order(order_id, payload):
    net = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    return {"order_id": order_id, "net": round(net, 2)}


@app.task(name="metric_per_order.tasks.tag_order")
def tag_order(order_id, payload):
    tags = sorted(set(payload["tags"]) | {payload["tenant"], payload["customer"]["tier"]})
    return {"order_id": order_id, "tags": tags}
