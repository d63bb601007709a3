"""The agent's control channel: a unix socket per process, one JSON request per line. Stdlib-only.

``bilge snapshot`` and ``bilge top`` reach a running agent here, with no
ptrace and no debugger. The socket is ``<dir>/<pid>.sock`` in a private
directory (see :func:`socket_dir`): the directory is the owner's alone
(0700, checked, never a symlink) and the socket is 0600, so only the owner
(and root) can connect; each connection's peer is checked again with
``SO_PEERCRED``. Requests are data, never code: ``{"op": "status"}`` and a
few more (the agent's :meth:`~bilge.agent._runtime.Agent.control` lists
them); no pickle, no eval. One connection is served at a time, from the
channel's own thread, every read and write under a timeout, a request at most
``MAX_REQUEST`` bytes: a client that stalls or floods costs the process
nothing but that thread's wait.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import Any

from bilge.samplers import process as proc_sampler

log = logging.getLogger("bilge")

# The variable naming the sockets' directory (``socket_dir`` in the settings).
SOCKET_DIR = "BILGE_SOCKET_DIR"
SUFFIX = ".sock"
# A request line, at most (a request names an operation and a few arguments).
MAX_REQUEST = 64 * 1024
# Seconds a client may take to send a request or read a reply.
IO_TIMEOUT = 5.0
# Requests on one connection, at most (then it is closed).
MAX_REQUESTS = 32
# Pending connections the kernel queues while one is served.
BACKLOG = 8
_UCRED = struct.Struct("3i")  # pid, uid, gid

Handler = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]


class ControlError(Exception):
    """The channel cannot be opened (an unsafe directory, a path too long); the message says why."""


def socket_dir(configured: str = "", env: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The directory of the sockets of ``uid``'s agents (default: this process's user).

    ``configured`` (``BILGE_SOCKET_DIR``) when set; else
    ``$XDG_RUNTIME_DIR/bilge`` when that directory exists (systemd's
    per-user runtime directory); else ``bilge-<uid>`` in the temporary
    directory. Short on purpose: a unix socket's path holds 107 bytes.
    """
    env = os.environ if env is None else env
    if configured:
        return configured
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "bilge")
    tmp = env.get("TMPDIR") or tempfile.gettempdir()
    return os.path.join(tmp, "bilge-%d" % (os.geteuid() if uid is None else uid))


def private_dir(path: str) -> None:
    """Create ``path`` (0700) if missing, then check it is a directory this user alone can enter.

    Raises:
        ControlError: a symlink, another owner, or group/other permissions:
            someone else could then reach or replace the sockets.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise ControlError("cannot create %s: %s" % (path, exc.strerror)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise ControlError("%s is not a directory (a symlink?)" % path)
    if info.st_uid != os.geteuid():
        raise ControlError("%s belongs to uid %d, not to this process's uid %d" % (path, info.st_uid, os.geteuid()))
    if info.st_mode & 0o077:
        raise ControlError("%s is open to other users (mode %o; it must be 0700)" % (path, info.st_mode & 0o777))


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (``SO_PEERCRED``)."""
    _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


def error_reply(message: str, request_id: Any = None) -> dict[str, Any]:
    """The reply to a request that failed."""
    return {"id": request_id, "ok": False, "error": message}


class ControlServer:
    """Serves one process's control socket from its own daemon thread.

    Args:
        path: the socket's path (its directory must be private, see :func:`private_dir`).
        handle: answers one request: ``handle(op, args)`` returns the result
            (a JSON-able mapping) or raises ``ValueError`` with the message
            the client sees; any other exception is contained and logged once.
        allowed_uids: peers allowed to talk (default: this user and root).
    """

    def __init__(self, path: str, handle: Handler, allowed_uids: frozenset[int] | None = None) -> None:
        self.path = path
        self._handle = handle
        self._allowed = allowed_uids if allowed_uids is not None else frozenset({os.geteuid(), 0})
        self._owner = os.getpid()
        self._sock: socket.socket | None = None
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._logged: set[str] = set()
        self.served = 0
        self.refused = 0

    def start(self) -> None:
        """Bind the socket (0600) and start serving.

        Raises:
            ControlError: the socket cannot be made (the path is too long,
                the directory is unsafe, the address is taken by a live agent).
        """
        directory = os.path.dirname(self.path)
        private_dir(directory)
        if len(os.fsencode(self.path)) > 107:
            raise ControlError("socket path too long for a unix socket (%d bytes): %s" % (
                len(os.fsencode(self.path)), self.path))
        # A socket left by a dead process with this pid (pids are reused).
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ControlError("cannot replace %s: %s" % (self.path, exc.strerror)) from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking, whatever socket.setdefaulttimeout() the host set: accept waits for a client, at no cost.
        sock.settimeout(None)
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise ControlError("cannot listen on %s: %s" % (self.path, exc.strerror)) from None
        self._sock = sock
        self._fd = sock.fileno()
        # bilge's own descriptor: not among the worker's fd targets.
        proc_sampler.OWN_FDS.add(self._fd)
        self._thread = threading.Thread(target=self._serve, name="bilge-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and remove the socket (only the process that made it removes it)."""
        self._closed.set()
        sock, self._sock = self._sock, None
        if sock is None:
            return
        proc_sampler.OWN_FDS.discard(self._fd)
        try:
            # shutdown wakes a thread blocked in accept(); close alone does not on Linux.
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        if os.getpid() == self._owner:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def abandon(self) -> None:
        """In a forked child: close the inherited descriptor, leave the parent's socket in place."""
        self._closed.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            proc_sampler.OWN_FDS.discard(self._fd)
            sock.close()

    # ----------------------------------------------------- the channel's thread --
    def _serve(self) -> None:
        while not self._closed.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except OSError as exc:
                if self._closed.is_set():
                    return
                # EMFILE and the like: wait, the host may free descriptors.
                self._log_once("accept", exc)
                self._closed.wait(1.0)
                continue
            try:
                with conn:
                    self._converse(conn)
            except Exception as exc:  # noqa: BLE001 - a client's failure never reaches the host
                self._log_once("connection", exc)

    def _converse(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        uid = peer_uid(conn)
        if uid not in self._allowed:
            self.refused += 1
            _send(conn, error_reply("refused: uid %d may not control this agent (only uid %s)" % (
                uid, " or ".join(str(u) for u in sorted(self._allowed)))))
            _discard(conn)
            return
        pending = b""
        for _ in range(MAX_REQUESTS):
            line, pending, too_long = _read_line(conn, pending)
            if too_long:
                _send(conn, error_reply("request longer than %d bytes" % MAX_REQUEST))
                _discard(conn)
                return
            if line is None:
                return
            reply = self._answer(line)
            self.served += 1
            _send(conn, reply)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return error_reply("not a JSON request line")
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return error_reply('a request is an object with an "op" string, e.g. {"op": "status"}')
        request_id = request.get("id")
        if not isinstance(request_id, (int, str, type(None))):
            request_id = None
        args = request.get("args") or {}
        if not isinstance(args, dict):
            return error_reply('"args" must be an object', request_id)
        try:
            result = self._handle(request["op"], args)
        except ValueError as exc:
            return error_reply(str(exc), request_id)
        except Exception as exc:  # noqa: BLE001
            self._log_once("op " + request["op"][:40], exc)
            return error_reply("%s failed (%s)" % (request["op"][:40], type(exc).__name__), request_id)
        return {"id": request_id, "ok": True, "result": dict(result)}

    def _log_once(self, what: str, exc: BaseException) -> None:
        if what not in self._logged and len(self._logged) < 50:
            self._logged.add(what)
            log.warning("bilge control channel: %s failed in pid %d: %s", what, os.getpid(), exc)


def _read_line(conn: socket.socket, pending: bytes) -> tuple[bytes | None, bytes, bool]:
    """(line or None at the end, what follows it, whether the line was too long)."""
    while b"\n" not in pending:
        if len(pending) > MAX_REQUEST:
            return None, b"", True
        try:
            chunk = conn.recv(65536)
        except (TimeoutError, OSError):
            return None, b"", False
        if not chunk:
            return None, b"", False
        pending += chunk
    line, _, rest = pending.partition(b"\n")
    if len(line) > MAX_REQUEST:
        return None, b"", True
    return line, rest, False


def _discard(conn: socket.socket) -> None:
    """Read (and drop) what the client still sends, briefly: closing with unread input would reset the
    connection, and the client could lose the reply it has not read yet."""
    conn.settimeout(0.2)
    dropped = 0
    try:
        while dropped <= 4 * MAX_REQUEST:
            chunk = conn.recv(65536)
            if not chunk:
                return
            dropped += len(chunk)
    except OSError:
        pass


def _send(conn: socket.socket, reply: Mapping[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n")
    except OSError:
        pass
