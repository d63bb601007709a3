"""Fail CI when a Celery task leaks: call it repeatedly and diagnose it.

By default the task runs eagerly in this process (`task.apply`, with Celery's
signals and request context), CALLS times, and bilge's in-process check
decides (the same one as the pytest plugin's `no_leak` marker). With
`--worker` it runs on a real prefork worker under `bilge run` instead, through
the app's broker (or `--broker`), and the verdict is `bilge report`'s.

Arguments: `--args-json`/`--kwargs-json` for one call repeated; `--args-file`
for calls that differ (a leak keyed by a unique id only shows with unique
ids): JSON lines, each `[args…]` or `{"args": […], "kwargs": {…}}`, cycled.

Exit code 0 when no leak is found (no-leak or inconclusive), 1 on a leak,
2 on bad input.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import click

from bilge.errors import GuardError

Call = tuple[list[Any], dict[str, Any]]


@click.command("guard", help=__doc__)
@click.option("-A", "--app", "app_name", required=True, help="The Celery app, as for `celery -A` (e.g. proj).")
@click.option("--task", "task_name", required=True, help="Full name of the task to check (e.g. proj.tasks.render).")
@click.option("--args-json", default="[]", show_default=True, help="Positional arguments: a JSON array.")
@click.option("--kwargs-json", default="{}", show_default=True, help="Keyword arguments: a JSON object.")
@click.option("--args-file", type=click.File("r"), default=None,
              help="JSON lines of calls, cycled: `[args…]` or {\"args\": […], \"kwargs\": {…}} per line.")
@click.option("--calls", type=click.IntRange(min=32), default=300, show_default=True, help="Calls measured.")
@click.option("--min-bytes-per-call", type=click.FloatRange(min=0, min_open=True), default=64.0, show_default=True,
              help="Steady growth below this per call is not a leak (eager mode).")
@click.option("--worker", is_flag=True, help="Run the calls on a real prefork worker under `bilge run`.")
@click.option("--broker", default=None, help="Broker URL for --worker (default: the app's).")
@click.option("--concurrency", type=click.IntRange(min=1), default=2, show_default=True,
              help="Pool children for --worker.")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds --worker waits for the calls to finish.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="For --worker: keep the worker's log and bilge's data dir here (default: a new temp dir).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def guard(app_name: str, task_name: str, args_json: str, kwargs_json: str, args_file: Any, calls: int,
          min_bytes_per_call: float, worker: bool, broker: str | None, concurrency: int, timeout: float,
          workdir: str | None, fmt: str) -> int:
    """Check one task for leaks; exit 1 when it leaks."""
    plan = _calls(args_json, kwargs_json, args_file)
    sys.path.insert(0, os.getcwd())  # `celery -A proj` finds proj in the working directory too
    app = _load_app(app_name)
    if worker:
        return _on_worker(app, app_name, task_name, plan, calls, broker, concurrency, timeout, workdir, fmt)
    return _eager(app, task_name, plan, calls, min_bytes_per_call, fmt)


def _calls(args_json: str, kwargs_json: str, args_file: Any) -> list[Call]:
    if args_file is not None:
        plan = []
        for n, line in enumerate(args_file, start=1):
            if line.strip():
                plan.append(_one_call(_json(line, "--args-file line %d" % n), "--args-file line %d" % n))
        if not plan:
            raise GuardError("--args-file holds no calls: give one JSON array or object per line")
        return plan
    args = _json(args_json, "--args-json")
    kwargs = _json(kwargs_json, "--kwargs-json")
    if not isinstance(args, list):
        raise GuardError("--args-json must be a JSON array of positional arguments (got %s)" % type(args).__name__)
    if not isinstance(kwargs, dict):
        raise GuardError("--kwargs-json must be a JSON object of keyword arguments (got %s)" % type(kwargs).__name__)
    return [(args, kwargs)]


def _one_call(value: Any, where: str) -> Call:
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict) and set(value) <= {"args", "kwargs"} and isinstance(value.get("args", []), list) \
            and isinstance(value.get("kwargs", {}), dict):
        return value.get("args", []), value.get("kwargs", {})
    raise GuardError('%s: expected a JSON array of arguments or {"args": [...], "kwargs": {...}}' % where)


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GuardError("%s is not valid JSON (%s)" % (where, exc)) from None


def _load_app(app_name: str) -> Any:
    try:
        from celery.app.utils import find_app
    except ImportError:
        raise GuardError("bilge guard needs Celery: pip install 'bilge[celery]'") from None
    try:
        app = find_app(app_name)
    except Exception as exc:  # import errors of the user's module, in any shape
        raise GuardError("cannot load the Celery app %r: %s: %s (run from the directory `celery -A %s` works in)"
                         % (app_name, type(exc).__name__, exc, app_name)) from None
    app.loader.import_default_modules()
    return app


def _task(app: Any, task_name: str) -> Any:
    if task_name not in app.tasks:
        known = sorted(n for n in app.tasks if not n.startswith("celery."))
        raise GuardError("the app has no task %r; its tasks: %s" % (task_name, ", ".join(known) or "none"))
    return app.tasks[task_name]


def _eager(app: Any, task_name: str, plan: list[Call], calls: int, min_bytes: float, fmt: str) -> int:
    from bilge.guard import GuardPolicy, check, describe

    task = _task(app, task_name)
    cycle: Iterator[Call] = itertools.cycle(plan)

    def call() -> object:
        args, kwargs = next(cycle)
        # Through Celery's tracer, as a worker runs it (signals, request
        # context); a failure is the task's, not a leak.
        return task.apply(args=args, kwargs=kwargs, throw=True)

    try:
        result = check(call, name=task_name, policy=GuardPolicy(calls=calls, min_bytes_per_call=min_bytes,
                                                                max_calls=max(1000, 4 * calls)))
    except Exception as exc:
        raise GuardError("the task raised %s: %s; fix the call (arguments?) first" % (type(exc).__name__, exc)) \
            from None
    if fmt == "json":
        from bilge.report.json_report import to_dict

        click.echo(json.dumps({"mode": "eager", "task": task_name, "verdict": result.verdict,
                               "reason": result.reason, "calls": result.calls, "seconds": result.seconds,
                               "confirmed_after_calls": result.confirmed_after_calls,
                               "bytes_per_call": result.bytes_per_call, "blocks_per_call": result.blocks_per_call,
                               "native_bytes_per_call": result.native_bytes_per_call,
                               "report": to_dict(result.diagnosis)}, indent=2))
    else:
        click.echo(describe(result))
    return 1 if result.leaked else 0


def _on_worker(app: Any, app_name: str, task_name: str, plan: list[Call], calls: int, broker: str | None,
               concurrency: int, timeout: float, workdir: str | None, fmt: str) -> int:
    from bilge.analysis import diagnose
    from bilge.demo.driver import drive_worker
    from bilge.model import LEAK
    from bilge.report.json_report import to_dict
    from bilge.report.terminal import TerminalReporter
    from bilge.store import sqlite as store

    _task(app, task_name)  # a typo fails here, not after the worker started
    if broker:
        app.conf.broker_url = broker
    cycle: Iterator[Call] = itertools.cycle(plan)

    def send(_: int) -> None:
        args, kwargs = next(cycle)
        app.send_task(task_name, args=args, kwargs=kwargs)

    if workdir:
        os.makedirs(workdir, exist_ok=True)
    else:
        workdir = tempfile.mkdtemp(prefix="bilge-guard-")
    app_args = [app_name] + (["-b", broker] if broker else [])
    try:
        run = drive_worker(app_args, workdir, send, calls, timeout=timeout, concurrency=concurrency,
                           env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                               p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)))
    except OSError as exc:
        raise GuardError("cannot reach the broker or start the worker: %s" % exc) from None
    if run.tasks_done < calls:
        raise GuardError("the worker finished %d of %d calls within %.0f s; see %s" % (
            run.tasks_done, calls, timeout, os.path.join(workdir, "worker.log")))
    diagnosis = diagnose(store.load_run(run.data_dir))
    if fmt == "json":
        click.echo(json.dumps({"mode": "worker", "task": task_name, "verdict": diagnosis.verdict,
                               "calls": run.tasks_done, "seconds": round(run.seconds, 3), "data_dir": run.data_dir,
                               "report": to_dict(diagnosis)}, indent=2))
    else:
        TerminalReporter().render(diagnosis)
        click.echo("data: %s" % run.data_dir)
    return 1 if diagnosis.verdict == LEAK else 0
