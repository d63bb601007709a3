"""Thin shells that wire bilge's core into the outside world.

- ``runner``: ``bilge run``'s process supervision, environment and signals;
- ``serve``: ``/health`` and ``/metrics`` (prometheus_client) in the supervisor;
- ``celery_config``: enabling bilge from a Celery app's configuration;
- ``celery_cli``: ``celery -A proj bilge status|report``.

They hold no logic of their own: samplers → store → analysis → reports do
the work.
"""
