"""Celery settings shared by the test apps.

Every worker a test starts gets its own broker database or folder and its own
queue, so tests never see each other's messages. ``WORKER_ACKS_LATE=1`` in the
environment turns on late acknowledgement.
"""

from __future__ import annotations

import os
from typing import Any


def celery_settings(queue: str) -> dict[str, Any]:
    """The configuration of a test worker consuming ``queue``.

    Args:
        queue: the only queue the app routes to and consumes from.
    """
    settings: dict[str, Any] = {
        "task_default_queue": queue,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_prefetch_multiplier": 8,
        "worker_enable_remote_control": False,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
    }
    if os.environ.get("WORKER_REMOTE_CONTROL") == "1":
        # Fleet tests: the workers answer broadcast commands (`celery bilge status`).
        settings["worker_enable_remote_control"] = True
    if os.environ.get("WORKER_ACKS_LATE") == "1":
        # A task whose pool child is killed goes back to the queue instead of
        # being lost, so a run with a SIGKILL still completes every job.
        settings.update(task_acks_late=True, task_reject_on_worker_lost=True)
    return settings
