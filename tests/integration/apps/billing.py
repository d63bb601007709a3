"""A billing worker with one real leak among benign tasks.

- ``billing.render_statement`` renders a customer statement and keeps it in
  a module-level dict keyed by the (unique) statement number "for the
  e-mail task": nothing ever evicts an entry, ~6 KB per call. The leak.
- ``billing.convert_currency`` converts an amount (pure arithmetic).
- ``billing.validate_vat_number`` checks a VAT number's check digits.

With ``BILLING_LEAK=vat`` the leak moves: statements are no longer
archived, and ``validate_vat_number`` appends an audit record to a
module-level list that nothing trims instead (a different leak, for the
fleet test's signatures). With ``BILLING_LEAK=none`` nothing leaks.
``BILLING_SECRET``, when set, goes into every archived statement (its key,
a field, and a field of each line): the security test looks for it in
everything bilge outputs.

Every task records its deterministic result in Redis (``results`` hash,
field = job number) and counts its executions per job (``runs`` hash); a
``task_postrun`` handler counts finished tasks (``done``). The tests compare
these between a run under bilge and a bare run.

Environment: ``BILLING_BROKER_URL``, ``BILLING_QUEUE``, ``BILLING_RESULTS_URL``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import redis
from celery import Celery
from celery.signals import task_postrun

from apps._settings import celery_settings

app = Celery("billing", broker=os.environ.get("BILLING_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(celery_settings(os.environ.get("BILLING_QUEUE", "billing")))
if os.environ.get("BILLING_BILGE_DATA_DIR"):
    # bilge enabled from the Celery configuration instead of `bilge run`.
    import bilge.celery_config

    app.conf.bilge_data_dir = os.environ["BILLING_BILGE_DATA_DIR"]
    bilge.celery_config.enable(app)

# Rendered statements by number, kept for a later e-mail task that never
# comes to collect them: the leak.
_STATEMENT_ARCHIVE: dict[str, dict[str, Any]] = {}
# Audit records of VAT checks, kept "for the auditors" under BILLING_LEAK=vat.
_VAT_AUDIT: list[dict[str, Any]] = []
_LEAK = os.environ.get("BILLING_LEAK", "statement")
_SECRET = os.environ.get("BILLING_SECRET", "")
_RATES = {"EUR": 1.0, "USD": 1.0843, "GBP": 0.8571, "SEK": 11.289, "JPY": 162.51}
_results: redis.Redis | None = None


def _store() -> redis.Redis:
    global _results
    if _results is None:
        _results = redis.Redis.from_url(os.environ["BILLING_RESULTS_URL"])
    return _results


def _record(job: int, value: int) -> int:
    pipe = _store().pipeline(transaction=True)
    pipe.hset("results", str(job), str(value))
    pipe.hincrby("runs", str(job), 1)
    pipe.execute()
    return value


@app.task(name="billing.render_statement")
def render_statement(job: int, account: int, lines: int) -> int:
    """Render a statement and keep it in the archive (leaks ~6 KB a call)."""
    number = "ST-%07d-%s" % (job, hashlib.sha1(b"%d:%d" % (account, job)).hexdigest()[:10])
    body = [{"sku": "SKU-%05d" % ((account * 31 + i) % 99991), "quantity": 1 + i % 5,
             "description": "line %d of statement for account %d, net 30 days" % (i, account)}
            for i in range(lines)]
    if _LEAK == "statement" and _SECRET:
        body = [{"token": _SECRET, **line} for line in body]
        _STATEMENT_ARCHIVE["%s/%s" % (number, _SECRET)] = {"token": _SECRET, "account": account, "lines": body}
    elif _LEAK == "statement":
        _STATEMENT_ARCHIVE[number] = {"account": account, "lines": body, "currency": "EUR"}
    total = sum(line["quantity"] * (100 + len(line["description"])) for line in body)
    return _record(job, total)


@app.task(name="billing.convert_currency")
def convert_currency(job: int, cents: int, currency: str) -> int:
    """Convert an amount in euro cents into ``currency`` (rounded to a cent)."""
    return _record(job, round(cents * _RATES[currency]))


@app.task(name="billing.validate_vat_number")
def validate_vat_number(job: int, number: int) -> int:
    """1 when the last two digits are the mod-97 check of the rest, else 0."""
    digits = "%011d" % number
    valid = int(int(digits[-2:]) == 97 - int(digits[:-2]) % 97)
    if _LEAK == "vat":
        _VAT_AUDIT.append({"job": job, "number": digits, "valid": valid,
                           "trail": [("step %d of the VAT check of job %d" % (i, job), i) for i in range(24)]})
    return _record(job, valid)


@task_postrun.connect
def _count_done(**_: Any) -> None:
    _store().incr("done")
