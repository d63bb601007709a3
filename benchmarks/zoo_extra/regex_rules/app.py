"""Per-customer SKU rules matched with regular expressions.

Each customer has SKUs prefixed by its id; the matching pattern is built per
call, so Python's re module compiles and caches a pattern per customer. The
cache is bounded (512 patterns in CPython 3.11), and so is the lru_cache of
per-prefix rules: both fill in the first few hundred calls, then stay flat.
Reported as a leak and closed as expected behaviour in python/cpython#148459
(lru_cache with a maxsize); robocorp/robocorp#489 describes the re cache's
bound.
"""
import functools
import re

from zoo_support import make_celery

app = make_celery("regex_rules")


@functools.lru_cache(maxsize=256)
def prefix_rule(prefix):
    return re.compile(r"^%s-\d{5}$" % re.escape(prefix))


def _customer_pattern(payload):
    return r"^(?:%s|%s)/(SKU-\d{5})(?:/[a-z]+)?$" % (re.escape(payload["customer"]["id"]), payload["tenant"])


@app.task(name="regex_rules.tasks.match_lines")
def match_lines(order_id, payload):
    pattern = _customer_pattern(payload)
    hits = sum(1 for i in payload["items"] if re.match(pattern, "%s/%s" % (payload["tenant"], i["sku"])))
    return {"order_id": order_id, "hits": hits}


@app.task(name="regex_rules.tasks.check_prefixes")
def check_prefixes(order_id, payload):
    ok = sum(1 for i in payload["items"] if prefix_rule(i["sku"][:6]).match(i["sku"][:6] + "-12345"))
    re.search(_customer_pattern(payload), payload["customer"]["id"] + "/SKU-00000")
    return {"order_id": order_id, "ok": ok}


@app.task(name="regex_rules.tasks.normalise_title")
def normalise_title(order_id, payload):
    titles = [re.sub(r"\s+", " ", i["title"]).strip() for i in payload["items"]]
    re.fullmatch(_customer_pattern(payload), payload["tenant"] + "/SKU-11111")
    return {"order_id": order_id, "titles": len(titles)}
