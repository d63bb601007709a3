"""Audit logging that attaches a handler in every task.

The audit task makes sure the audit logger "has a handler" by adding one each
time it runs: logging.getLogger returns the same module-level logger, so the
handlers (each with its lock and formatter) pile up in logger.handlers and in
logging's weak handler list (modelled on PaddleHQ/paddle-python-sdk#144, "a
new NullHandler on every instantiation", and malariagen/malariagen-data-python#949).
"""
import logging

from zoo_support import make_celery

app = make_celery("handler_per_task")

audit_log = logging.getLogger("orders.audit")
audit_log.propagate = False


class AuditFormatter(logging.Formatter):
    def __init__(self, tenant):
        super().__init__("%(asctime)s " + tenant + " %(message)s")
        self.tenant = tenant


@app.task(name="handler_per_task.tasks.audit_order")
def audit_order(order_id, payload):
    handler = logging.NullHandler()
    handler.setFormatter(AuditFormatter(payload["tenant"]))
    audit_log.addHandler(handler)
    audit_log.info("order %s audited for %s", order_id, payload["customer"]["email"])
    return {"order_id": order_id}


@app.task(name="handler_per_task.tasks.score_order")
def score_order(order_id, payload):
    return {"order_id": order_id, "score": sum(i["qty"] for i in payload["items"]) % 7}


@app.task(name="handler_per_task.tasks.dimension_order")
def dimension_order(order_id, payload):
    return {"order_id": order_id, "parcels": 1 + sum(i["weight_g"] for i in payload["items"]) // 20000}
