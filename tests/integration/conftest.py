"""Fixtures of the integration tests: real workers, real brokers, the bilge CLI in subprocesses.

Logs, bilge's data directory and the reports of each test are kept in
``test-artifacts/<test name>/`` at the repository root (git-ignored).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).resolve().parent
# --import-mode=importlib puts no test folder on sys.path; the helpers in
# support/ are imported from here, as the workers import apps/ through
# PYTHONPATH.
if str(INTEGRATION_DIR) not in sys.path:
    sys.path.insert(0, str(INTEGRATION_DIR))

from support.artifacts import artifacts_dir  # noqa: E402
from support.brokers import RedisDatabase, claimed_redis_database  # noqa: E402
from support.workers import Launcher  # noqa: E402


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's artifacts folder, emptied."""
    return artifacts_dir(request.node.name)


@pytest.fixture
def launcher(artifacts: Path) -> Iterator[Launcher]:
    """Starts workers; kills their process groups when the test ends, whatever happened."""
    workers = Launcher(artifacts)
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture
def redis_db() -> Iterator[RedisDatabase]:
    """A Redis database of this test's own, flushed afterwards."""
    with claimed_redis_database() as database:
        yield database
