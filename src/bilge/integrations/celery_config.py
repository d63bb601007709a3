"""Enable bilge from a Celery app's configuration, without ``bilge run``.

In the module that creates the app::

    app = Celery("proj")
    app.conf.bilge_data_dir = "/var/lib/bilge/proj"   # or in celeryconfig
    app.conf.bilge_recycle = True                       # optional: --recycle
    import bilge.celery_config
    bilge.celery_config.enable(app)

When a worker of this app starts (``celeryd_init``, before the pool forks),
bilge records a new run in the data dir and starts the agent in the main
process; prefork children get theirs at fork, exactly as under
``bilge run``. The run ends at ``worker_shutdown``. Producers and other
programs importing the app are not affected: only worker start-up starts
bilge. Settings (all optional, ``bilge_`` + the ``bilge run`` option):
``bilge_data_dir`` (default ``bilge-data``), ``bilge_explain``,
``bilge_show_values``, ``bilge_recycle``, ``bilge_recycle_soft_limit``,
``bilge_recycle_hard_limit``, ``bilge_recycle_horizon``,
``bilge_recycle_min_interval``, ``bilge_recycle_min_tasks``,
``bilge_budget_cpu_share``, ``bilge_budget_slowed_per_hour``. A bad value
is logged and replaced by its default. Tuning variables without an option
(``BILGE_SAMPLE_INTERVAL``...) set in the worker's environment are kept,
as under ``bilge run``.

Under ``bilge run`` this is a no-op (the agent is already there).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("bilge")

# Celery setting -> the agent setting (``bilge.config``) it gives.
_SETTINGS = (("bilge_show_values", "show_values"), ("bilge_explain", "explain"), ("bilge_recycle", "recycle"),
             ("bilge_recycle_soft_limit", "recycle_soft_limit"), ("bilge_recycle_hard_limit", "recycle_hard_limit"),
             ("bilge_recycle_horizon", "recycle_horizon"), ("bilge_recycle_min_interval", "recycle_min_interval"),
             ("bilge_recycle_min_tasks", "recycle_min_tasks"), ("bilge_budget_cpu_share", "cpu_share"),
             ("bilge_budget_slowed_per_hour", "slowed_per_hour"))


def enable(app: Any) -> None:
    """Start bilge in this app's workers when they start (see the module docs)."""
    from celery import signals

    def start(sender: Any = None, conf: Any = None, **_: Any) -> None:
        try:
            _start(app)
        except Exception as exc:  # noqa: BLE001 - a worker must start even when bilge cannot
            log.warning("bilge: not started from the Celery configuration: %s", exc)

    def stop(**_: Any) -> None:
        _end()

    signals.celeryd_init.connect(start, weak=False, dispatch_uid="bilge.celery_config.start")
    signals.worker_shutdown.connect(stop, weak=False, dispatch_uid="bilge.celery_config.stop")


_run: tuple[str, int] | None = None


def _start(app: Any) -> None:
    global _run
    from bilge import agent as bilge_agent
    from bilge.config import AgentConfig, parse_setting
    from bilge.store import sqlite as store

    if bilge_agent.current() is not None:
        return  # under `bilge run`
    conf = app.conf
    data_dir = store.prepare_data_dir(str(conf.get("bilge_data_dir") or "bilge-data"))
    run_id = store.start_run(data_dir, " ".join(sys.argv))
    options: dict[str, object] = {}
    for name, setting in _SETTINGS:
        value = conf.get(name)
        if value is not None:
            try:
                options[setting] = parse_setting(setting, value)
            except ValueError as exc:
                log.warning("bilge: %s ignored: %s; using the default", name, exc)
    config = AgentConfig.for_run(data_dir, run_id, os.environ, options)
    for warning in config.warnings:
        log.warning("bilge: %s", warning)
    # Children started later (spawned, or exec'd tools) see the same run,
    # and no variable left over from elsewhere.
    environ = config.to_environment(os.environ)
    for stale in set(os.environ) - set(environ):
        del os.environ[stale]
    os.environ.update(environ)
    bilge_agent.start_from_environment(config.to_environment())
    _run = (data_dir, run_id)


def _end() -> None:
    global _run
    if _run is None:
        return
    from bilge.store import sqlite as store

    data_dir, run_id = _run
    _run = None
    try:
        store.end_run(data_dir, run_id, 0)
    except Exception as exc:  # noqa: BLE001 - shutting down anyway
        log.warning("bilge: could not close run %d: %s", run_id, exc)
