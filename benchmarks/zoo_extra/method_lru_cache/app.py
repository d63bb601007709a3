"""Repository files read through a client with ``functools.cache`` on a method.

Each task builds a ``RepoClient`` for the order's repository and reads the
files it needs through ``read_file``, decorated with ``functools.lru_cache``
(no maxsize) to save repeated reads. The cache lives on the class's function,
not on the instance: its keys include ``self``, so every client ever built and
every file it read stay in it forever, reachable only through the cache (a C
object, not a dict or list of the program's). Modelled on getsentry/seer#2512
(Autofix's memory leak: ``functools.cache`` on a repo client's methods kept
every client alive) and AllenInstitute/ipfx#495 (lru_cache on a method kept
every data set's arrays).
"""
import functools
import logging

from zoo_support import make_celery

app = make_celery("method_lru_cache")
log = logging.getLogger(__name__)


class RepoClient:
    def __init__(self, repo):
        self.repo = repo
        self.token = "ghs_" + repo.replace("/", "_")

    @functools.lru_cache(maxsize=None)
    def read_file(self, path):
        return {"path": path, "repo": self.repo, "lines": ["# %s line %d" % (path, n) for n in range(6)]}


@app.task(name="method_lru_cache.tasks.review_order")
def review_order(order_id, payload):
    client = RepoClient("shop/orders-%s" % order_id)
    files = [client.read_file("skus/%s.yaml" % item["sku"]) for item in payload["items"][:2]]
    return {"order_id": order_id, "files": len(files)}


@app.task(name="method_lru_cache.tasks.price_order")
def price_order(order_id, payload):
    net = sum(i["unit_price"] * i["qty"] for i in payload["items"])
    return {"order_id": order_id, "net": round(net, 2)}


@app.task(name="method_lru_cache.tasks.route_order")
def route_order(order_id, payload):
    return {"order_id": order_id, "carrier": payload["shipping"]["carrier"]}
