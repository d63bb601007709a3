"""Order analytics with a scratch SQLite database per order.

Each order's lines are loaded into an in-memory SQLite database to run a few
aggregate queries. The connection is kept "for the follow-up report task"
and never closed: SQLite's pages live in its own malloc'd memory, outside
Python's allocator; the Python owner is one sqlite3.Connection per call
(modelled on sqlobject/sqlobject#186: a cached connection per thread never
released, "every request generates a new connection").
"""
import sqlite3

from zoo_support import make_celery

app = make_celery("sqlite_per_call")

_OPEN_REPORTS = {}


@app.task(name="sqlite_per_call.tasks.analyse_order")
def analyse_order(order_id, payload):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE line (sku TEXT, title TEXT, qty INT, price REAL, weight INT)")
    db.executemany("INSERT INTO line VALUES (?, ?, ?, ?, ?)",
                   [(i["sku"], i["title"] * 8, i["qty"], i["unit_price"], i["weight_g"]) for i in payload["items"]])
    db.execute("CREATE INDEX line_sku ON line (sku)")
    total, weight = db.execute("SELECT SUM(qty * price), SUM(qty * weight) FROM line").fetchone()
    _OPEN_REPORTS[order_id] = db
    return {"order_id": order_id, "total": round(total, 2), "weight_g": weight}


@app.task(name="sqlite_per_call.tasks.validate_order")
def validate_order(order_id, payload):
    problems = [n for n, i in enumerate(payload["items"]) if not 0 < i["qty"] <= 50]
    return {"order_id": order_id, "ok": not problems}


@app.task(name="sqlite_per_call.tasks.route_order")
def route_order(order_id, payload):
    country = payload["shipping"]["address"]["country"]
    return {"order_id": order_id, "hub": {"NL": "AMS", "DE": "FRA", "FR": "CDG"}.get(country, "LHR")}
