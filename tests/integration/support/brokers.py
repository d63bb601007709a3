"""Brokers for the tests: a Redis database or RabbitMQ queue of one's own, and producers.

Tests may run next to other users of the same servers, so each worker gets a
Redis database index nobody else uses (claimed with a ``SET NX`` key, and only
that database is flushed) and a queue name with a random suffix.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
CLAIM_KEY = "bilge-integration-claim"


@dataclass(frozen=True)
class RedisDatabase:
    """One Redis database index claimed for a test."""

    index: int
    client: redis.Redis

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this database."""
        return "redis://%s:%d/%d" % (REDIS_HOST, REDIS_PORT, self.index)


@contextmanager
def claimed_redis_database() -> Iterator[RedisDatabase]:
    """Claim an empty Redis database (1-15), yield it, flush it afterwards."""
    token = uuid.uuid4().hex
    for index in range(1, 16):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index)
        if not client.set(CLAIM_KEY, token, nx=True, ex=3600):
            client.close()
            continue
        if client.dbsize() == 1:
            break
        # Someone uses this database without our claim key: leave it alone.
        client.delete(CLAIM_KEY)
        client.close()
    else:
        raise AssertionError("no free Redis database among 1-15 on %s:%d" % (REDIS_HOST, REDIS_PORT))
    try:
        yield RedisDatabase(index=index, client=client)
    finally:
        client.flushdb()
        client.close()


def unique_queue(prefix: str) -> str:
    """A queue name no other test uses."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def producer_app(broker_url: str, queue: str) -> Celery:
    """A bare Celery app that only sends tasks by name to ``queue``."""
    app = Celery("producer", broker=broker_url, set_as_current=False)
    app.conf.update(task_default_queue=queue, task_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True)
    return app


def send_all(app: Celery, jobs: Sequence[tuple[str, list[Any]]], queue: str) -> None:
    """Send every ``(task name, args)`` over one connection, in order."""
    with app.producer_or_acquire() as producer:
        for name, args in jobs:
            app.send_task(name, args=args, queue=queue, producer=producer)


def delete_amqp_queue(queue: str) -> None:
    """Delete a RabbitMQ queue (and its messages) and the same-named exchange Celery declared for it."""
    from kombu import Connection

    with Connection(AMQP_URL) as connection:
        channel = connection.channel()
        try:
            channel.queue_delete(queue)
            channel.exchange_delete(queue)
        finally:
            channel.close()


class FilesystemProducer:
    """Sends tasks over Celery's ``filesystem://`` broker without the half-written-message race.

    kombu's filesystem transport writes each message in place; a worker
    listing the queue folder at that moment can read a partial file. So this
    producer writes into an outbox and renames whole files into the queue.

    Args:
        broker_dir: the broker folder (``queue`` and ``control`` inside).
        queue: the Celery queue name the worker consumes.
    """

    def __init__(self, broker_dir: Path, queue: str) -> None:
        self.queue_dir = broker_dir / "queue"
        self.outbox = broker_dir / "outbox"
        for folder in (self.queue_dir, self.outbox, broker_dir / "control"):
            folder.mkdir(parents=True, exist_ok=True)
        self.queue = queue
        self.app = Celery("producer", broker="filesystem://", set_as_current=False)
        self.app.conf.update(
            task_serializer="json", accept_content=["json"],
            broker_transport_options={"data_folder_in": str(self.outbox), "data_folder_out": str(self.outbox),
                                      "control_folder": str(broker_dir / "control")},
        )

    def send(self, jobs: Sequence[tuple[str, list[Any]]]) -> None:
        """Send the jobs, then move their finished files into the queue."""
        send_all(self.app, jobs, self.queue)
        for name in sorted(os.listdir(self.outbox)):
            os.rename(self.outbox / name, self.queue_dir / name)
