"""Invoice worker that parses each supplier's XML invoice with minidom (no leak).

Every call builds the supplier's invoice document as it would arrive (one
``<line>`` per item, with its attributes), parses it with
``xml.dom.minidom.parseString``, totals it and drops the document without
``unlink()``. A minidom tree is full of reference cycles (each node's
``parentNode``, ``ownerDocument``, sibling links), so the reference count
never frees it: the collector does, and the nodes that lived through a young
collection while the document was being parsed wait for a full one. RSS
climbs between full collections to a high-water mark, and users file it as a
leak (SEL-Columbia/formhub#499, "minidom parseString is leaking memory";
the Python docs and OpenShot/openshot-qt#3419 recommend ``unlink()`` to free
the tree at once). ``gc.collect()`` frees every document; nothing is kept.
"""
import logging
from xml.dom import minidom

from zoo_support import make_celery

app = make_celery("xml_invoices")
log = logging.getLogger(__name__)


def supplier_document(order_id, payload):
    lines = "".join(
        '<line sku="%s" qty="%d" price="%.2f" weight="%d"><title>%s</title><color>%s</color><size>%s</size></line>'
        % (i["sku"], i["qty"], i["unit_price"], i["weight_g"], i["title"], i["attributes"]["color"],
           i["attributes"]["size"]) for i in payload["items"])
    return ('<invoice id="%s" tenant="%s"><customer tier="%s">%s</customer><lines>%s</lines></invoice>'
            % (order_id, payload["tenant"], payload["customer"]["tier"], payload["customer"]["id"], lines))


@app.task(name="xml_invoices.tasks.total_invoice")
def total_invoice(order_id, payload):
    doc = minidom.parseString(supplier_document(order_id, payload))
    total = sum(int(n.getAttribute("qty")) * float(n.getAttribute("price")) for n in doc.getElementsByTagName("line"))
    return {"order_id": order_id, "total": round(total, 2)}


@app.task(name="xml_invoices.tasks.price_order")
def price_order(order_id, payload):
    net = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    return {"order_id": order_id, "net": round(net, 2)}


@app.task(name="xml_invoices.tasks.tag_order")
def tag_order(order_id, payload):
    tags = sorted(set(payload["tags"]) | {payload["tenant"], payload["customer"]["tier"]})
    return {"order_id": order_id, "tags": tags}
