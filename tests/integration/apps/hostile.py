"""A worker whose tasks do what a profiler inside it would rather they did not.

Each task records its job's result in Redis (``results`` hash) and counts
its executions (``runs``), as ``apps.billing`` does, after doing one of:

- ``hostile.freeze``: ``gc.freeze()`` (moves every tracked object to the
  permanent generation; pre-fork servers do this) and, every other call,
  ``gc.unfreeze()``;
- ``hostile.gc_off``: ``gc.disable()``, and ``gc.enable()`` on the next call;
- ``hostile.tracemalloc``: ``tracemalloc.start()`` or ``tracemalloc.stop()``,
  alternately (bilge's allocation windows use tracemalloc too);
- ``hostile.settrace``: ``sys.settrace`` and ``threading.settrace`` with a
  tracer for the task's duration;
- ``hostile.fork``: ``os.fork()``, the child exits at once, the parent reaps it;
- ``hostile.swap_modules``: replaces ``sys.modules`` entries (``json``,
  ``sqlite3``, ``struct``, ``time``) with empty modules for ~20 ms, then
  puts them back;
- ``hostile.plain``: nothing unusual (a little arithmetic).

Environment: ``HOSTILE_BROKER_URL``, ``HOSTILE_QUEUE``, ``HOSTILE_RESULTS_URL``.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import tracemalloc
import types
from typing import Any

import redis
from celery import Celery

from apps._settings import celery_settings

app = Celery("hostile", broker=os.environ.get("HOSTILE_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(celery_settings(os.environ.get("HOSTILE_QUEUE", "hostile")))
TASKS = ("hostile.freeze", "hostile.gc_off", "hostile.tracemalloc", "hostile.settrace", "hostile.fork",
         "hostile.swap_modules", "hostile.plain")
_results: redis.Redis | None = None
_calls: dict[str, int] = {}


def _record(job: int) -> int:
    global _results
    if _results is None:
        _results = redis.Redis.from_url(os.environ["HOSTILE_RESULTS_URL"])
    value = sum(i * i for i in range(job % 200))
    pipe = _results.pipeline(transaction=True)
    pipe.hset("results", str(job), str(value))
    pipe.hincrby("runs", str(job), 1)
    pipe.execute()
    return value


def _nth(name: str) -> int:
    _calls[name] = _calls.get(name, 0) + 1
    return _calls[name]


@app.task(name="hostile.freeze")
def freeze(job: int) -> int:
    if _nth("freeze") % 2:
        gc.freeze()
    else:
        gc.unfreeze()
    return _record(job)


@app.task(name="hostile.gc_off")
def gc_off(job: int) -> int:
    if _nth("gc_off") % 2:
        gc.disable()
    else:
        gc.enable()
    return _record(job)


@app.task(name="hostile.tracemalloc")
def trace_malloc(job: int) -> int:
    if tracemalloc.is_tracing():
        tracemalloc.stop()
    else:
        tracemalloc.start(3)
    kept = [bytearray(64) for _ in range(100)]
    del kept
    return _record(job)


def _tracer(frame: Any, event: str, arg: Any) -> Any:
    return _tracer


@app.task(name="hostile.settrace")
def settrace(job: int) -> int:
    sys.settrace(_tracer)
    threading.settrace(_tracer)
    try:
        return _record(job)
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]


@app.task(name="hostile.fork")
def fork(job: int) -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return _record(job)


@app.task(name="hostile.swap_modules")
def swap_modules(job: int) -> int:
    names = ("json", "sqlite3", "struct", "time")
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    try:
        deadline = time.monotonic() + 0.02
        while time.monotonic() < deadline:
            pass
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return _record(job)


@app.task(name="hostile.plain")
def plain(job: int) -> int:
    return _record(job)
