"""What the HTTP server lets through: a token when one is set; loopback is told from wider binds."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from bilge.integrations.monitor import RunView
from bilge.integrations.serve import MonitorServer, loopback


@pytest.fixture
def server(one_process: tuple[str, int]) -> Iterator[MonitorServer]:
    data_dir, _ = one_process
    served = MonitorServer(RunView(data_dir, record=False), "127.0.0.1", 0, token="s3cret-token")
    served.start()
    try:
        yield served
    finally:
        served.close()


def get(server: MonitorServer, path: str, authorization: str | None = None) -> int:
    request = urllib.request.Request("http://%s%s" % (server.address, path))
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_token_is_required_on_every_endpoint(server: MonitorServer) -> None:
    for path in ("/metrics", "/health", "/nothing"):
        assert get(server, path) == 401
        assert get(server, path, "Bearer wrong") == 401
        assert get(server, path, "s3cret-token") == 401  # the scheme is part of it
    assert get(server, "/metrics", "Bearer s3cret-token") == 200
    assert get(server, "/nothing", "Bearer s3cret-token") == 404


@pytest.mark.parametrize(("host", "local"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                             ("0.0.0.0", False), ("::", False), ("no-such-host.invalid", False)])
def test_loopback(host: str, local: bool) -> None:
    assert loopback(host) is local
