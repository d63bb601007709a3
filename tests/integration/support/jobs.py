"""The task mixes the tests send, and how to read back what the billing tasks wrote."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any

import redis

RENDER_STATEMENT = "billing.render_statement"
BILLING_TASKS = (RENDER_STATEMENT, "billing.convert_currency", "billing.validate_vat_number")
CATALOG_TASKS = ("catalog.quote_price", "catalog.shipping_zone", "catalog.normalize_sku")
CURRENCIES = ("USD", "GBP", "SEK", "JPY")


def billing_jobs(count: int, seed: int = 11) -> list[tuple[str, list[Any]]]:
    """``count`` billing tasks, the three types interleaved in random order; job numbers 0..count-1."""
    rng = random.Random(seed)
    jobs: list[tuple[str, list[Any]]] = []
    for job in range(count):
        name = BILLING_TASKS[rng.randrange(3)]
        if name == RENDER_STATEMENT:
            jobs.append((name, [job, rng.randint(1, 5000), rng.randint(16, 24)]))
        elif name == "billing.convert_currency":
            jobs.append((name, [job, rng.randint(100, 10**7), rng.choice(CURRENCIES)]))
        else:
            jobs.append((name, [job, rng.randint(10**9, 10**11 - 1)]))
    return jobs


def catalog_jobs(count: int, seed: int = 5) -> list[tuple[str, list[Any]]]:
    """``count`` catalogue tasks, the three types interleaved in random order."""
    rng = random.Random(seed)
    jobs: list[tuple[str, list[Any]]] = []
    for _ in range(count):
        name = CATALOG_TASKS[rng.randrange(3)]
        if name == "catalog.quote_price":
            jobs.append((name, [rng.randint(1, 400), rng.randint(1, 60)]))
        elif name == "catalog.shipping_zone":
            jobs.append((name, [rng.randint(1000, 99999)]))
        else:
            jobs.append((name, ["sku-%d/%s" % (rng.randint(1, 10**6), rng.choice("abcxyz"))]))
    return jobs


def sent_by_name(jobs: list[tuple[str, list[Any]]]) -> Counter[str]:
    """How many tasks of each name a job list holds."""
    return Counter(name for name, _ in jobs)


def billing_env(broker_url: str, results_url: str, queue: str, acks_late: bool = False) -> dict[str, str]:
    """The environment variables ``apps.billing`` reads."""
    env = {"BILLING_BROKER_URL": broker_url, "BILLING_RESULTS_URL": results_url, "BILLING_QUEUE": queue}
    if acks_late:
        env["WORKER_ACKS_LATE"] = "1"
    return env


def finished(client: redis.Redis) -> int:
    """Billing tasks whose ``task_postrun`` has run."""
    return int(client.get("done") or 0)


def results_checksum(client: redis.Redis) -> tuple[int, str]:
    """(number of jobs with a result, SHA-256 over every ``job=result`` in job order)."""
    results = {int(k): v.decode() for k, v in client.hgetall("results").items()}
    digest = hashlib.sha256()
    for job in sorted(results):
        digest.update(b"%d=%s;" % (job, results[job].encode()))
    return len(results), digest.hexdigest()


def executions(client: redis.Redis) -> Counter[int]:
    """How many times each job ran, by job number."""
    return Counter({int(k): int(v) for k, v in client.hgetall("runs").items()})
