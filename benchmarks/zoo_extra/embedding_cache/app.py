"""Search indexing with an embedding cache that only grows.

Each indexed order gets an embedding: a float64 vector of 512 dimensions
(4 KiB of numpy data, allocated by numpy with malloc, outside Python's object
heap) computed from its items, and memoised in a module-level dict keyed by
the order id so that a re-index would not recompute it. Order ids never
repeat, so nothing is ever read back or evicted: one ``numpy.ndarray`` per
call stays, a small Python object owning 4 KiB of native memory. Modelled on
nicolay-r/AREkit#35 (embedding vectors cached for every term until the
process ran out of memory) and flairNLP/flair#2013 (embeddings kept per
request in a long-running API).
"""
import hashlib
import logging

import numpy as np

from zoo_support import make_celery

app = make_celery("embedding_cache")
log = logging.getLogger(__name__)

DIMENSIONS = 512
_EMBEDDINGS = {}


def _embed(text):
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    vector = np.random.default_rng(seed).standard_normal(DIMENSIONS)
    return vector / np.linalg.norm(vector)


@app.task(name="embedding_cache.tasks.index_order")
def index_order(order_id, payload):
    text = " ".join(i["title"] for i in payload["items"])
    vector = _EMBEDDINGS.get(order_id)
    if vector is None:
        vector = _EMBEDDINGS[order_id] = _embed(text)
    return {"order_id": order_id, "norm": round(float(vector @ vector), 3)}


@app.task(name="embedding_cache.tasks.price_order")
def price_order(order_id, payload):
    net = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    return {"order_id": order_id, "net": round(net, 2)}


@app.task(name="embedding_cache.tasks.route_order")
def route_order(order_id, payload):
    return {"order_id": order_id, "carrier": payload["shipping"]["carrier"]}
