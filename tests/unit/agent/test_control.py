"""Tests for bilge.agent.control (the agent's unix socket) and bilge.live (the client side)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bilge import live
from bilge.agent.control import MAX_REQUEST, ControlError, ControlServer, private_dir, socket_dir
from bilge.errors import AgentUnreachableError


@pytest.fixture
def sockets() -> Iterator[str]:
    """A private, short directory for sockets (a unix socket's path holds 107 bytes)."""
    path = tempfile.mkdtemp(prefix="bilge-t-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Handler:
    """Answers ``echo`` with its args, refuses ``bad`` with a ValueError, fails on ``boom``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, op: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        self.calls.append(op)
        if op == "echo":
            return dict(args)
        if op == "bad":
            raise ValueError("bad op, try echo")
        raise RuntimeError("secret value 12345 in the message")


@pytest.fixture
def server(sockets: str) -> Iterator[ControlServer]:
    started = ControlServer(os.path.join(sockets, "%d.sock" % os.getpid()), Handler())
    started.start()
    yield started
    started.close()


def exchange(path: str, *lines: bytes) -> list[dict[str, Any]]:
    """Send ``lines`` on one connection; the replies, one per line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"".join(lines))
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_requests_are_answered_in_order_on_one_connection(server: ControlServer) -> None:
    """Two requests on one connection: each reply carries its id and result."""
    replies = exchange(server.path, b'{"id": 1, "op": "echo", "args": {"a": 1}}\n', b'{"id": "x", "op": "echo"}\n')
    assert replies == [{"id": 1, "ok": True, "result": {"a": 1}}, {"id": "x", "ok": True, "result": {}}]
    assert server.served == 2


def test_bad_requests_get_an_error_and_the_channel_keeps_serving(server: ControlServer) -> None:
    """Not JSON, not an object, args not an object, a refused op, a failing op: an error each, then echo works.

    A failing handler's own message (it may quote a value) is not sent back, only its type."""
    replies = exchange(server.path, b"{nope\n", b"[1, 2]\n", b'{"op": "echo", "args": [1]}\n',
                       b'{"op": "bad"}\n', b'{"op": "boom"}\n', b'{"op": "echo", "args": {"ok": true}}\n')
    errors = [r.get("error") for r in replies]
    assert errors[0] == "not a JSON request line"
    assert errors[1].startswith("a request is an object")
    assert errors[2] == '"args" must be an object'
    assert errors[3] == "bad op, try echo"
    assert errors[4] == "boom failed (RuntimeError)" and "12345" not in json.dumps(replies)
    assert replies[5] == {"id": None, "ok": True, "result": {"ok": True}}


def test_an_oversized_request_is_refused_without_reading_it_all(server: ControlServer) -> None:
    """A line longer than MAX_REQUEST: one error and the connection closed; the next connection is served."""
    replies = exchange(server.path, b"x" * (MAX_REQUEST + 10))
    assert replies == [{"id": None, "ok": False, "error": "request longer than %d bytes" % MAX_REQUEST}]
    assert exchange(server.path, b'{"op": "echo"}\n')[0]["ok"]


def test_a_client_that_sends_nothing_does_not_stop_the_next_one(server: ControlServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A silent connection is dropped after the I/O timeout; the next client is then served."""
    monkeypatch.setattr("bilge.agent.control.IO_TIMEOUT", 0.2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(server.path)
        assert exchange(server.path, b'{"op": "echo"}\n')[0]["ok"]


def test_socket_is_owner_only_and_a_peer_of_another_uid_is_refused(sockets: str) -> None:
    """The socket is 0600; a peer whose uid is not allowed (SO_PEERCRED) gets a refusal naming the rule."""
    refusing = ControlServer(os.path.join(sockets, "1.sock"), Handler(), allowed_uids=frozenset({os.geteuid() + 1}))
    refusing.start()
    try:
        assert os.stat(refusing.path).st_mode & 0o777 == 0o600
        reply = exchange(refusing.path, b'{"op": "echo"}\n')
        assert not reply[0]["ok"] and reply[0]["error"].startswith("refused: uid %d" % os.geteuid())
        assert refusing.refused == 1
    finally:
        refusing.close()
    assert not os.path.exists(refusing.path), "close() removes the socket"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_process_of_another_user_is_refused(sockets: str) -> None:
    """As uid 65534, with the directory and socket opened up on purpose: the kernel lets it connect, the
    agent's SO_PEERCRED check refuses it (the second line of defence behind the 0700 directory)."""
    server = ControlServer(os.path.join(sockets, "2.sock"), Handler(), allowed_uids=frozenset({0}))
    server.start()
    try:
        os.chmod(sockets, 0o711)
        os.chmod(server.path, 0o666)
        client = ("import json, socket; s = socket.socket(socket.AF_UNIX); s.connect(%r); "
                  "s.sendall(b'{\"op\": \"echo\"}\\n'); print(s.recv(4096).decode())" % server.path)
        # The client is stdlib only: the system's Python, which uid 65534 can run (an interpreter under
        # /root/.pyenv cannot even load its libpython as that user).
        python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
                               client], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["error"].startswith("refused: uid 65534")
    finally:
        server.close()


def test_unsafe_directories_and_long_paths_are_refused(sockets: str, tmp_path: Path) -> None:
    """A directory open to others, a symlink, a path too long for a unix socket: ControlError saying why."""
    open_dir = os.path.join(sockets, "open")
    os.mkdir(open_dir, 0o755)
    os.chmod(open_dir, 0o755)
    with pytest.raises(ControlError, match="open to other users"):
        private_dir(open_dir)
    link = os.path.join(sockets, "link")
    os.symlink(open_dir, link)
    with pytest.raises(ControlError, match="not a directory"):
        private_dir(link)
    with pytest.raises(ControlError, match="too long"):
        ControlServer(os.path.join(sockets, "d" * 120, "1.sock"), Handler()).start()


def test_socket_dir_defaults() -> None:
    """Configured first, then $XDG_RUNTIME_DIR/bilge when it exists, else bilge-<uid> in the temp dir."""
    assert socket_dir("/srv/s", {}) == "/srv/s"
    assert socket_dir("", {"XDG_RUNTIME_DIR": "/"}) == "/bilge"
    assert socket_dir("", {"XDG_RUNTIME_DIR": "/does/not/exist", "TMPDIR": "/var/tmp"}, uid=7) == "/var/tmp/bilge-7"


def test_a_forked_child_abandons_the_parents_socket(server: ControlServer) -> None:
    """abandon() in a child closes its copy of the descriptor and leaves the parent's socket serving."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        server.abandon()
        os._exit(0 if os.path.exists(server.path) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert exchange(server.path, b'{"op": "echo"}\n')[0]["ok"]


def test_live_client_finds_asks_and_cleans_up(server: ControlServer, sockets: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """find() by pid, request() round trip, an agent's refusal as AgentUnreachableError, discover() removing
    the socket of a process that is gone."""
    monkeypatch.setenv("BILGE_SOCKET_DIR", sockets)
    agent = live.find(os.getpid())
    assert live.request(agent, "echo", {"n": 3}) == {"n": 3}
    with pytest.raises(AgentUnreachableError, match="refused: bad op"):
        live.request(agent, "bad")
    # A pid no process can have (pids stay below pid_max): an exited child's pid could be reused meanwhile.
    with open("/proc/sys/kernel/pid_max") as f:
        stale = os.path.join(sockets, "%d.sock" % int(f.read()))
    Path(stale).touch()
    # Only this test's directory: discover() also reads the default one, where another process's agent
    # (a test suite running beside this one) is as reachable as ours, and rightly listed.
    assert [a.pid for a in live.discover() if os.path.dirname(a.path) == sockets] == [os.getpid()]
    assert not os.path.exists(stale)
    with pytest.raises(AgentUnreachableError, match="not listening any more"):
        live.request(live.LiveAgent(1, stale), "echo")


def test_close_wakes_the_thread_blocked_in_accept(sockets: str) -> None:
    """close() ends the channel's thread at once (shutdown wakes accept), and removes the socket."""
    server = ControlServer(os.path.join(sockets, "3.sock"), Handler())
    server.start()
    thread = server._thread  # noqa: SLF001 - the test is about this thread's end
    assert thread is not None and thread.is_alive()
    server.close()
    thread.join(2.0)
    assert not thread.is_alive() and not os.path.exists(server.path)
    assert not [t for t in threading.enumerate() if t is thread]


def test_the_channels_own_socket_is_not_among_the_workers_fd_targets(server: ControlServer) -> None:
    """The listening socket is bilge's, not the host's: fd_targets leaves it out while it is open."""
    from bilge.samplers import process as proc_sampler

    def unix_sockets() -> int:
        return sum(n for target, n in proc_sampler.fd_targets() if target.startswith("socket unix"))

    assert server._fd in proc_sampler.OWN_FDS  # noqa: SLF001
    hidden = unix_sockets()
    proc_sampler.OWN_FDS.discard(server._fd)  # noqa: SLF001
    try:
        assert unix_sockets() == hidden + 1
    finally:
        proc_sampler.OWN_FDS.add(server._fd)  # noqa: SLF001
    server.close()
    assert server._fd not in proc_sampler.OWN_FDS  # noqa: SLF001
