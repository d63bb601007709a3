"""Loopback servers for the tests: a free TCP port, an HTTP fetch that returns errors as answers, and a `bilge`
server command (serve, fleet) run until the test is done."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from support.workers import BILGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str, authorization: str | None = None) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of a GET; an HTTP error status is an answer, not an exception."""
    request = urllib.request.Request(url)
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


class BilgeServer:
    """`bilge ARGS`, a command that serves until SIGTERM, started and waited for until ``url`` answers; stopped
    with SIGTERM when the ``with`` block ends, then ``returncode`` and ``stderr`` are set."""

    def __init__(self, args: Sequence[str], url: str, env: dict[str, str] | None = None,
                 timeout: float = 60.0) -> None:
        self.args = list(args)
        self.url = url
        self.env = env if env is not None else dict(os.environ)
        self.timeout = timeout
        self.returncode: int | None = None
        self.stderr = ""

    def __enter__(self) -> BilgeServer:
        self.process = subprocess.Popen([*BILGE, *self.args], env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fetch(self.url)
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise AssertionError("bilge %s did not come up: %s" % (" ".join(self.args), self.stderr)) from None
                time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, self.stderr = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, self.stderr = self.process.communicate()
        self.returncode = self.process.returncode
