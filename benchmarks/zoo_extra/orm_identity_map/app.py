"""Order archiving through a long-lived SQLAlchemy session.

The worker keeps one ORM session for the life of the process and adds an
``ArchivedOrder`` per order, meaning to commit in batches "later". Nothing ever
commits or closes it: every pending object stays in the session.
"""
import json
import logging

from sqlalchemy import Float, String, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from zoo_support import make_celery

app = make_celery("orm_identity_map")
log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


class ArchivedOrder(Base):
    __tablename__ = "archived_orders"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    customer: Mapped[str] = mapped_column(String(32))
    total: Mapped[float] = mapped_column(Float)
    body: Mapped[str] = mapped_column(Text)


_ENGINE = create_engine("sqlite://")
Base.metadata.create_all(_ENGINE)
_SESSION = Session(_ENGINE, autoflush=False)


@app.task(name="orm_identity_map.tasks.archive_order")
def archive_order(order_id, payload):
    total = round(sum(i["unit_price"] * i["qty"] for i in payload["items"]), 2)
    order = ArchivedOrder(id=order_id, customer=payload["customer"]["id"], total=total,
                          body=json.dumps(payload["items"]))
    _SESSION.add(order)
    return {"order_id": order_id, "total": total}


@app.task(name="orm_identity_map.tasks.notify_customer")
def notify_customer(order_id, payload):
    return {"order_id": order_id, "to": payload["customer"]["email"]}


@app.task(name="orm_identity_map.tasks.estimate_delivery")
def estimate_delivery(order_id, payload):
    days = {"NL": 1, "DE": 2, "FR": 2, "GB": 3, "US": 6, "JP": 8}.get(payload["shipping"]["address"]["country"], 10)
    return {"order_id": order_id, "days": days}
