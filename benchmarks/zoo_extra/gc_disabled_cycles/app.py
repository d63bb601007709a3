"""Report worker that turned the garbage collector off for speed.

Someone disabled gc at import to shave latency. ``build_report`` makes a tree
whose nodes point to their parent: every report is a reference cycle, and with
the collector off no cycle is ever freed, though nothing refers to it.
"""
import gc
import logging

from zoo_support import make_celery

gc.disable()

app = make_celery("gc_disabled_cycles")
log = logging.getLogger(__name__)


class ReportNode:
    def __init__(self, label, parent=None):
        self.label = label
        self.parent = parent
        self.children = []
        if parent is not None:
            parent.children.append(self)


@app.task(name="gc_disabled_cycles.tasks.build_report")
def build_report(order_id, payload):
    root = ReportNode("order %s" % order_id)
    for item in payload["items"]:
        line = ReportNode("%s x%d %s" % (item["sku"], item["qty"], item["title"]), root)
        ReportNode("%.2f EUR" % (item["unit_price"] * item["qty"]), line)
    return {"order_id": order_id, "lines": len(root.children)}


@app.task(name="gc_disabled_cycles.tasks.count_tags")
def count_tags(order_id, payload):
    return {"order_id": order_id, "tags": len(payload["tags"])}


@app.task(name="gc_disabled_cycles.tasks.check_email")
def check_email(order_id, payload):
    return {"order_id": order_id, "ok": "@" in payload["customer"]["email"]}
