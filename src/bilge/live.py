"""Talking to running agents over their control sockets (``bilge snapshot``; see ``agent.control``).

Finds a process's socket where its agent made it: the agent's directory is
computed from the agent's own environment (``/proc/PID/environ``) and user,
so a root shell finds a ``celery`` user's workers too. A socket whose
process is gone is removed on the way (children of a prefork pool leave
through ``os._exit`` and cannot remove their own).
"""

from __future__ import annotations

import glob
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bilge.agent.control import MAX_REQUEST, SOCKET_DIR, SUFFIX, socket_dir
from bilge.errors import AgentUnreachableError

# Seconds a request may take end to end (a snapshot of a 1M-object worker takes ~1-2 s).
REQUEST_TIMEOUT = 15.0
# A reply, at most (a snapshot's summary is a few KiB).
MAX_REPLY = 4 << 20


@dataclass(frozen=True)
class LiveAgent:
    """A process whose agent listens on ``path``."""

    pid: int
    path: str


def environ_of(pid: int) -> dict[str, str]:
    """Process ``pid``'s environment ({} when it cannot be read)."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _uid(pid: int) -> int | None:
    try:
        return os.stat("/proc/%d" % pid).st_uid
    except OSError:
        return None


def _alive(pid: int) -> bool:
    return os.path.exists("/proc/%d" % pid)


def _directories(pid: int | None = None) -> list[str]:
    """Where sockets may be: ours, the target's (from its environment and user), every user's for root."""
    dirs = [socket_dir(os.environ.get(SOCKET_DIR, ""))]
    if pid is not None:
        env, uid = environ_of(pid), _uid(pid)
        if env or uid is not None:
            dirs.append(socket_dir(env.get(SOCKET_DIR, ""), env, uid))
            if uid is not None:
                dirs.append(socket_dir("", {}, uid))
    elif os.geteuid() == 0:
        dirs += glob.glob("/tmp/bilge-*") + glob.glob("/run/user/*/bilge")
    return list(dict.fromkeys(os.path.realpath(d) for d in dirs))


def find(pid: int) -> LiveAgent:
    """The agent of process ``pid``.

    Raises:
        AgentUnreachableError: no such process, or no agent socket for it.
    """
    if not _alive(pid):
        raise AgentUnreachableError("no process %d on this host; `bilge snapshot --all` lists the agents "
                                    "that are running" % pid)
    for directory in _directories(pid):
        path = os.path.join(directory, "%d%s" % (pid, SUFFIX))
        if os.path.exists(path):
            return LiveAgent(pid, path)
    raise AgentUnreachableError(
        "process %d has no bilge agent listening (looked in %s): start the worker under `bilge run` (or with "
        "bilge in its Celery config), and check BILGE_CONTROL is not 0" % (pid, ", ".join(_directories(pid))))


def discover() -> list[LiveAgent]:
    """Every agent this user can reach, by pid; sockets of processes that are gone are removed."""
    found: dict[int, LiveAgent] = {}
    for directory in _directories():
        for path in glob.glob(os.path.join(directory, "*" + SUFFIX)):
            name = os.path.basename(path)[:-len(SUFFIX)]
            if not name.isdigit():
                continue
            pid = int(name)
            if not _alive(pid):
                try:
                    os.unlink(path)
                except OSError:
                    pass
                continue
            found.setdefault(pid, LiveAgent(pid, path))
    return [found[pid] for pid in sorted(found)]


def exchange(path: str, data: bytes, timeout: float = REQUEST_TIMEOUT) -> bytes:
    """Send ``data`` (request lines, as they are) on a new connection to the socket at ``path``; the first reply
    line, or what came before the agent closed the connection.

    Raises:
        OSError: the connection failed or timed out (``TimeoutError``).
        ValueError: the reply is longer than ``MAX_REPLY``.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
            if len(reply) > MAX_REPLY:
                raise ValueError("reply over %d bytes" % MAX_REPLY)
    return reply


def request(agent: LiveAgent, op: str, args: Mapping[str, Any] | None = None,
            timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """Send one request, return the result.

    Raises:
        AgentUnreachableError: the socket refuses, the agent does not answer
            in time, or it answers with an error (its message is kept).
    """
    line = json.dumps({"id": 1, "op": op, "args": dict(args or {})}).encode() + b"\n"
    if len(line) > MAX_REQUEST:
        raise AgentUnreachableError("request too long for the control channel")
    try:
        reply = exchange(agent.path, line, timeout)
    except TimeoutError:
        raise AgentUnreachableError("process %d's agent did not answer within %.0f s (the process may be stopped "
                                    "or starved of CPU); try again" % (agent.pid, timeout)) from None
    except PermissionError:
        raise AgentUnreachableError("not allowed to reach process %d's agent (%s belongs to another user): run "
                                    "as that user or as root" % (agent.pid, agent.path)) from None
    except (ConnectionRefusedError, FileNotFoundError):
        raise AgentUnreachableError("process %d's agent is not listening any more (the process left or was "
                                    "replaced)" % agent.pid) from None
    except OSError as exc:
        raise AgentUnreachableError("cannot talk to process %d's agent: %s" % (
            agent.pid, exc.strerror or exc)) from None
    except ValueError:
        raise AgentUnreachableError("process %d sent a reply over %d bytes" % (agent.pid, MAX_REPLY)) from None
    try:
        answer = json.loads(reply)
    except ValueError:
        raise AgentUnreachableError("process %d's agent closed the connection without an answer" % agent.pid) from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise AgentUnreachableError("process %d's agent refused: %s" % (agent.pid, error or "no reason given"))
    result = answer.get("result")
    return result if isinstance(result, dict) else {}
