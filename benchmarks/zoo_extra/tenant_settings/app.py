"""Per-tenant settings cached for the life of the process (no leak).

Modelled on multi-tenant Celery apps that look up the tenant each task runs
for and cache it in the worker (maciej-gol/tenant-schemas-celery#28 and #38:
the tenant is cached per worker, ``tenant_cache_seconds``) and on
ucam-department-of-psychiatry/camcops#280 ("Celery workers grow over time":
a lightly used multi-tenant server whose workers grew until
``max-tasks-per-child`` or ``max-memory-per-child`` replaced them).

Two of the three tasks run for a tenant. Each tenant's settings (feature
flags, limits, a rendered template) are built on first use and kept in a
plain dict: bounded by the 1,000 tenants, not by an eviction rule. Traffic is
skewed the way it is in real multi-tenant services: a few big tenants send
most orders and a long tail sends few (Zipf-like, weight 1/rank), so new
tail tenants keep turning up through a whole 3000-task run, ever more
rarely, and the cache never fills within it.
"""
import bisect
import itertools
import logging
import zlib

from zoo_support import make_celery

app = make_celery("tenant_settings")
log = logging.getLogger(__name__)

TENANTS = 1000
_CUMULATIVE = list(itertools.accumulate(1.0 / rank for rank in range(1, TENANTS + 1)))
_SETTINGS = {}


def tenant_for(order_id):
    """The tenant an order belongs to: a fixed draw from the skewed traffic."""
    u = (zlib.crc32(("order-%s" % order_id).encode()) / 2.0 ** 32) * _CUMULATIVE[-1]
    return "tenant-%04d" % min(bisect.bisect_left(_CUMULATIVE, u), TENANTS - 1)


def settings(tenant):
    found = _SETTINGS.get(tenant)
    if found is None:
        flags = {"feature_%02d" % i: (zlib.crc32((tenant + str(i)).encode()) & 1) == 1 for i in range(24)}
        limits = {"max_items": 50 + len(tenant), "max_weight_kg": 30.0, "currencies": ["EUR", "USD", "GBP"]}
        template = "".join("<p>%s: {%s}</p>" % (tenant, key) for key in sorted(flags))
        found = _SETTINGS[tenant] = {"flags": flags, "limits": limits, "template": template}
    return found


@app.task(name="tenant_settings.tasks.price_order")
def price_order(order_id, payload):
    limits = settings(tenant_for(order_id))["limits"]
    items = payload["items"][:limits["max_items"]]
    return {"order_id": order_id, "total": round(sum(i["unit_price"] * i["qty"] for i in items), 2)}


@app.task(name="tenant_settings.tasks.notify_customer")
def notify_customer(order_id, payload):
    found = settings(tenant_for(order_id))
    enabled = sum(1 for on in found["flags"].values() if on)
    return {"order_id": order_id, "flags": enabled, "to": payload["customer"]["tier"]}


@app.task(name="tenant_settings.tasks.route_order")
def route_order(order_id, payload):
    return {"order_id": order_id, "country": payload["shipping"]["address"]["country"]}
