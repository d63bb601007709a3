"""Locations in the terminal report: named as a developer would, never broken inside a path."""

from __future__ import annotations

from bilge.report.terminal import short_location


def test_locations_are_relative_to_site_packages_or_the_working_directory_else_their_last_parts() -> None:
    assert short_location("/venv/lib/python3.11/site-packages/celery/app/trace.py:453") == "celery/app/trace.py:453"
    assert short_location("/usr/lib/python3/dist-packages/redis/client.py:7") == "redis/client.py:7"
    assert short_location("/srv/shop/shop/tasks.py:68", cwd="/srv/shop") == "shop/tasks.py:68"
    assert short_location("/tmp/x/src/bilge/demo/app.py:68", cwd="/home/u") == "…/bilge/demo/app.py:68"
    assert short_location("app.py:3") == "app.py:3"
    assert short_location("<frozen importlib._bootstrap>") == "<frozen importlib._bootstrap>"
