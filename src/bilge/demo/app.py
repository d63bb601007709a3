"""A small online-shop worker with one real leak among benign patterns.

- ``shop.render_invoice`` keeps every rendered invoice in a module-level
  dict keyed by the (unique) invoice number: the leak.
- ``shop.score_customer`` memoises scores in a bounded ``lru_cache``: it
  grows while the cache fills, then stays flat.
- ``shop.geo_lookup`` builds a postcode table on first use: a one-off step.
- ``shop.resize_image`` allocates a large temporary buffer: a spike, freed.

The broker is Celery's embedded ``filesystem://`` transport, so the demo
needs no server; its folder comes from ``BILGE_DEMO_BROKER_DIR``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from typing import Any

from celery import Celery

BROKER_DIR = os.environ.get("BILGE_DEMO_BROKER_DIR", os.path.join(os.getcwd(), "bilge-demo-broker"))


def make_app(outbox: str | None = None) -> Celery:
    """The demo app on a filesystem broker in ``BROKER_DIR``.

    Args:
        outbox: where this app writes messages (default: the queue itself).
            The producer writes elsewhere and renames finished files into the
            queue: kombu's filesystem transport writes in place, and a worker
            polling at that moment can read a half-written message and die.
    """
    queue_dir = os.path.join(BROKER_DIR, "queue")
    control_dir = os.path.join(BROKER_DIR, "control")
    for folder in (queue_dir, control_dir) + ((outbox,) if outbox else ()):
        os.makedirs(folder, exist_ok=True)
    celery_app = Celery("shop", broker="filesystem://")
    celery_app.conf.update(
        broker_transport_options={"data_folder_in": queue_dir, "data_folder_out": outbox or queue_dir,
                                  "control_folder": control_dir, "polling_interval": 0.02},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=8,
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
    )
    return celery_app


app = make_app()

# Rendered invoices by number, "so the e-mail task can reuse them". Nothing
# ever removes an entry: this is the leak the demo is about.
_RENDERED_INVOICES: dict[str, dict[str, Any]] = {}
_POSTCODES: dict[str, tuple[float, float]] | None = None


@app.task(name="shop.render_invoice")  # type: ignore[untyped-decorator]
def render_invoice(order_id: int, lines: int) -> int:
    """Render an invoice and keep it for later tasks (the leak)."""
    number = "INV-%08d-%s" % (order_id, hashlib.sha1(str(order_id).encode()).hexdigest()[:8])
    body = [{"sku": "SKU-%05d" % ((order_id * 7 + i) % 99991), "qty": 1 + i % 4,
             "text": "item %d of order %d, gift wrapped" % (i, order_id)} for i in range(lines)]
    _RENDERED_INVOICES[number] = {"order": order_id, "lines": body, "rendered_at": time.time()}
    return len(body)


@functools.lru_cache(maxsize=48)
def _score(customer: int) -> dict[str, Any]:
    return {"customer": customer, "features": [float((customer * k) % 97) for k in range(64)],
            "label": "segment-%d" % (customer % 11)}


@app.task(name="shop.score_customer")  # type: ignore[untyped-decorator]
def score_customer(customer: int) -> float:
    """Score a customer; scores are memoised in a bounded cache (benign)."""
    features: list[float] = _score(customer)["features"]
    return sum(features) / 64


@app.task(name="shop.geo_lookup")  # type: ignore[untyped-decorator]
def geo_lookup(postcode: int) -> float:
    """Look a postcode up in a table built on first use (a one-off step)."""
    global _POSTCODES
    if _POSTCODES is None:
        _POSTCODES = {"%05d" % c: (50 + c % 997 / 100, 4 + c % 991 / 100) for c in range(1000, 60000)}
    lat, lon = _POSTCODES.get("%05d" % postcode, (0.0, 0.0))
    return lat + lon


@app.task(name="shop.resize_image")  # type: ignore[untyped-decorator]
def resize_image(size_kb: int) -> int:
    """Resize an image through a large temporary buffer (a spike, then freed)."""
    buffer = bytearray(size_kb * 1024)
    for i in range(0, len(buffer), 4096):
        buffer[i] = i % 251
    return sum(buffer[::4096])
