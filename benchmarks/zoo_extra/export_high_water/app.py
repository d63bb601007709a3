"""Order exports, one of which now and then is large.

Most calls of ``export_orders`` render a small CSV-like digest. One call in
about twenty (chosen by the order id) is a full account export: tens of
thousands of row dicts built in memory, serialised to JSON and dropped at the
end of the call. Nothing is kept, but the process keeps the memory the
largest export needed (Python's arenas and glibc's heap stay partly in use,
and are reused by the next large export): RSS steps up at each export larger
than any before and stays at that high-water mark. Larger records arrive
ever more rarely, so the steps thin out over the run. Modelled on
mitmedialab/gobo#145 (particular jobs step the workers' memory up, without
stepping down later) and the high-water-mark section Celery's docs gained in
celery/celery#7186.
"""
import hashlib
import json
import logging

from zoo_support import make_celery

app = make_celery("export_high_water")
log = logging.getLogger(__name__)


def _draw(order_id):
    return int.from_bytes(hashlib.blake2b(order_id.encode(), digest_size=4).digest(), "little")


@app.task(name="export_high_water.tasks.export_orders")
def export_orders(order_id, payload):
    draw = _draw(order_id)
    if draw % 20:
        lines = ["%s;%d;%.2f" % (i["sku"], i["qty"], i["unit_price"]) for i in payload["items"]]
        return {"order_id": order_id, "rows": len(lines)}
    # A full account export: 10,000 to 60,000 rows, all dropped at the end of the call.
    rows = [{"row": n, "sku": "SKU-%05d" % (n % 90000), "order": order_id, "qty": n % 7,
             "price": round(n * 0.37 % 250, 2), "tags": ["export", payload["tenant"]]}
            for n in range(10_000 + (draw >> 5) % 50_000)]
    body = json.dumps(rows)
    return {"order_id": order_id, "rows": len(rows), "bytes": len(body)}


@app.task(name="export_high_water.tasks.price_order")
def price_order(order_id, payload):
    net = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    return {"order_id": order_id, "net": round(net, 2)}


@app.task(name="export_high_water.tasks.tag_order")
def tag_order(order_id, payload):
    return {"order_id": order_id, "b2b": "b2b" in payload["tags"]}
