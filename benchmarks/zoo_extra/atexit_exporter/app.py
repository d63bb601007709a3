"""Order export with a flush-on-exit safety net.

Each export builds an OrderExporter that buffers rows and registers its
flush() with atexit "so nothing is lost on shutdown". atexit keeps every
bound method, and with it every exporter and its buffered order, until the
process exits; no Python container holds them (modelled on cherrypy/cherrypy#1274
and tenable/nessrest#81: "this prevents the Scanner object from ever going
through garbage collection").
"""
import atexit

from zoo_support import make_celery

app = make_celery("atexit_exporter")


class OrderExporter:
    def __init__(self, order_id, payload):
        self.order_id = order_id
        self.rows = [(i["sku"], i["title"], i["qty"], i["unit_price"]) for i in payload["items"]]
        self.customer = dict(payload["customer"])
        self.flushed = False
        atexit.register(self.flush)

    def flush(self):
        self.flushed = True


@app.task(name="atexit_exporter.tasks.export_order")
def export_order(order_id, payload):
    exporter = OrderExporter(order_id, payload)
    return {"order_id": order_id, "rows": len(exporter.rows)}


@app.task(name="atexit_exporter.tasks.check_stock")
def check_stock(order_id, payload):
    return {"order_id": order_id, "lines": sum(1 for i in payload["items"] if i["qty"] > 3)}


@app.task(name="atexit_exporter.tasks.sum_weight")
def sum_weight(order_id, payload):
    return {"order_id": order_id, "weight_g": sum(i["weight_g"] * i["qty"] for i in payload["items"])}
