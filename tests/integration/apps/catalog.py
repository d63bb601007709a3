"""A catalogue worker that does *not* leak, on Celery's ``filesystem://`` broker.

- ``catalog.quote_price`` memoises price breakdowns in a bounded
  ``lru_cache``: memory grows while the cache fills, then plateaus.
- ``catalog.shipping_zone`` builds a postcode → zone table on first use: a
  one-off step early in each process.
- ``catalog.normalize_sku`` is pure string work.

Environment: ``CATALOG_BROKER_DIR`` (the broker folder, with ``queue`` and
``control`` inside) and, for a producer, ``CATALOG_OUTBOX`` (see ``make_app``).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from celery import Celery

from apps._settings import celery_settings

BROKER_DIR = os.environ.get("CATALOG_BROKER_DIR", os.path.join(os.getcwd(), "catalog-broker"))


def make_app(outbox: str | None = None) -> Celery:
    """The catalogue app on the filesystem broker in ``BROKER_DIR``.

    Args:
        outbox: where this app writes messages (default: the queue folder).
            A producer writes elsewhere and renames finished files into the
            queue: kombu's filesystem transport writes in place, and a worker
            polling at that moment can read a half-written message.
    """
    queue_dir = os.path.join(BROKER_DIR, "queue")
    control_dir = os.path.join(BROKER_DIR, "control")
    for folder in (queue_dir, control_dir) + ((outbox,) if outbox else ()):
        os.makedirs(folder, exist_ok=True)
    celery_app = Celery("catalog", broker="filesystem://")
    celery_app.conf.update(celery_settings("catalog"))
    celery_app.conf.broker_transport_options = {
        "data_folder_in": queue_dir, "data_folder_out": outbox or queue_dir,
        "control_folder": control_dir, "polling_interval": 0.02,
    }
    return celery_app


app = make_app(os.environ.get("CATALOG_OUTBOX"))
_ZONES: dict[int, str] | None = None


@functools.lru_cache(maxsize=64)
def _price_breakdown(product: int) -> dict[str, Any]:
    return {"product": product, "tiers": [round(9.99 + (product * k) % 41 / 7, 2) for k in range(48)],
            "label": "family-%d" % (product % 13)}


@app.task(name="catalog.quote_price")
def quote_price(product: int, quantity: int) -> float:
    """Quote a price from a memoised breakdown (the cache is bounded)."""
    tiers: list[float] = _price_breakdown(product)["tiers"]
    return round(tiers[min(quantity, len(tiers) - 1)] * quantity, 2)


@app.task(name="catalog.shipping_zone")
def shipping_zone(postcode: int) -> str:
    """Look a postcode's zone up in a table built on first use."""
    global _ZONES
    if _ZONES is None:
        _ZONES = {code: "zone-%d" % (code % 7) for code in range(1000, 60000)}
    return _ZONES.get(postcode, "zone-unknown")


@app.task(name="catalog.normalize_sku")
def normalize_sku(raw: str) -> str:
    """Upper-case a SKU and strip separators."""
    return "".join(ch for ch in raw.upper() if ch.isalnum())
