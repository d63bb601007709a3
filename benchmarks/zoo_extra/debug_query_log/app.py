"""Order worker with a debug query log.

Every query the tasks run is logged into a recent-queries buffer for the
debug toolbar, like Django's connection.queries under DEBUG (a deque with a
maxlen since django/django#2772). The buffer fills during the first few
hundred tasks of each process, then old entries fall out: bounded, not a leak
(the "DEBUG leads to a memory leak" warning Celery prints, celery/celery#6132,
is about the unbounded list it used to be).
"""
import collections
import time

from zoo_support import make_celery

app = make_celery("debug_query_log")

RECENT_QUERIES = collections.deque(maxlen=1200)


def _query(sql, params):
    started = time.perf_counter()
    RECENT_QUERIES.append({"sql": sql % tuple(repr(p) for p in params),
                           "time": "%.6f" % (time.perf_counter() - started)})


@app.task(name="debug_query_log.tasks.load_order")
def load_order(order_id, payload):
    _query("SELECT * FROM orders WHERE id = %s AND tenant = %s", (order_id, payload["tenant"]))
    _query("SELECT * FROM customers WHERE id = %s", (payload["customer"]["id"],))
    _query("SELECT * FROM lines WHERE order_id = %s ORDER BY sku", (order_id,))
    return {"order_id": order_id, "lines": len(payload["items"])}


@app.task(name="debug_query_log.tasks.reserve_stock")
def reserve_stock(order_id, payload):
    for item in payload["items"][:3]:
        _query("UPDATE stock SET reserved = reserved + %s WHERE sku = %s", (item["qty"], item["sku"]))
    return {"order_id": order_id}


@app.task(name="debug_query_log.tasks.mark_shipped")
def mark_shipped(order_id, payload):
    _query("UPDATE orders SET state = 'shipped', carrier = %s WHERE id = %s",
           (payload["shipping"]["carrier"], order_id))
    _query("INSERT INTO events (order_id, kind) VALUES (%s, %s)", (order_id, "shipped"))
    _query("SELECT count(*) FROM events WHERE order_id = %s", (order_id,))
    return {"order_id": order_id}
