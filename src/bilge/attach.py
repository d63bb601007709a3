"""Start the agent in a Python process that is already running (``bilge attach``).

The design follows ``notes/attach-and-overhead.md``: never run the
interpreter at an arbitrary instruction. The only code injected is a short
payload that starts the agent's thread (and connects Celery's signals),
wrapped in ``try/except BaseException`` and carrying a deadline after which
it does nothing.

- Python 3.14+: ``sys.remote_exec`` (run under the target's own interpreter).
- 3.10 to 3.13: gdb, with only libpython's symbols loaded, **calls nothing
  in the target**: it writes memory only. The payload's text goes into the
  unused tail of the last page of a library's ``.bss`` (found from the ELF
  section headers and ``/proc/PID/maps``), and one entry is appended to
  the main interpreter's pending calls, as ``Py_AddPendingCall`` would:
  ``PyRun_SimpleString(text)`` then runs in the main thread at its next
  bytecode boundary. If any thread is inside the pending-call machinery
  (or the queue is full), gdb detaches and looks again; after a few tries
  the attach is refused. gdb's *calls* into a target (``call
  PyGILState_Ensure()``, ``mmap``) were tried first and dropped: on this
  project's CI machines (CPUs with AMX state) gdb 13 cannot restore the
  registers after a call (``Couldn't write extended state status``) and the
  target's interrupted system call failed with errno 514, killing it.
  The cost of writing only memory: a main thread blocked in a system call
  (an idle process) runs the payload only once it runs Python again; past
  the payload's deadline it does nothing, and the attach is refused.
  3.13's queue is a counted ring under a ``PyMutex`` and its eval breaker
  is a bit in each thread: both layouts are written here.

Whatever cannot be attached safely is refused with the reason and what to
do instead (``bilge top`` watches any process from ``/proc``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass

from bilge import live
from bilge.agent.control import SOCKET_DIR, socket_dir
from bilge.config import AgentConfig
from bilge.errors import AttachError

# Tries at a safe point before refusing, and the pause between them.
TRIES = 6
RETRY_PAUSE = 0.3
# Seconds gdb may take for one try (it is never killed in the middle of a call).
GDB_TIMEOUT = 60.0
# Seconds the payload stays valid, and the agent has to answer, after a try.
PAYLOAD_DEADLINE = 10.0
# The target's GIL switch interval while the payload imports and starts the agent (see _payload).
ATTACH_SWITCH_INTERVAL = 0.0002

# Frames (innermost few of any thread) inside the pending-call machinery:
# the queue is being changed right now; look again a little later.
_RISKY = ("_push_pending_call", "_pop_pending_call", "make_pending_calls", "_handle_pending_calls",
          "Py_AddPendingCall", "_PyEval_AddPendingCall", "Py_MakePendingCalls", "clear_pending_handling_thread",
          "PyOS_AfterFork", "fork")

# Runs inside gdb (gdb's own Python). Nothing is called in the target: gdb
# reads its memory, checks no thread is inside the pending-call machinery,
# copies the payload's text into the unused tail of a library's .bss page
# and appends one entry to the main interpreter's pending calls (what
# Py_AddPendingCall would do), with memory writes only.
_GDB_SCRIPT = r'''
import gdb, json, os
result_path = os.environ["BILGE_ATTACH_RESULT"]
risky = tuple(json.loads(os.environ["BILGE_ATTACH_RISKY"]))
scratch = int(os.environ["BILGE_ATTACH_SCRATCH"])

def done(**answer):
    with open(result_path, "w") as f:
        json.dump(answer, f)

def innermost(limit):
    names, frame = [], gdb.newest_frame()
    while frame is not None and len(names) < limit:
        names.append(frame.name() or "??")
        frame = frame.older()
    return names

try:
    gdb.execute("set confirm off")
    gdb.execute("set pagination off")
    try:
        gdb.parse_and_eval("sizeof(_PyRuntime)")
    except gdb.error:
        done(state="nosymbols")
        raise SystemExit
    busy = None
    for thread in gdb.selected_inferior().threads():
        thread.switch()
        for name in innermost(12):
            if name.startswith(risky):
                busy = name
    pending = "_PyRuntime.interpreters.main->ceval.pending"
    fields = [field.name for field in gdb.parse_and_eval(pending).type.fields()]
    size = int(gdb.parse_and_eval("sizeof(%s.calls) / sizeof(%s.calls[0])" % (pending, pending)))
    first = int(gdb.parse_and_eval(pending + ".first"))
    if "npending" in fields:  # 3.13: a counted ring under a PyMutex, an eval breaker in each thread
        nxt = int(gdb.parse_and_eval(pending + ".next"))
        full = int(gdb.parse_and_eval(pending + ".npending")) >= int(gdb.parse_and_eval(pending + ".max"))
        if int(gdb.parse_and_eval(pending + ".mutex._bits")) & 1:
            busy = busy or "a held pending-call mutex"
    else:
        nxt = int(gdb.parse_and_eval(pending + ".last"))
        full = (nxt + 1) % size == first
    if busy is not None:
        done(state="busy", frame=busy)
    elif full:
        done(state="busy", frame="a full pending-call queue")
    else:
        gdb.execute("restore %s binary %d" % (os.environ["BILGE_ATTACH_CODE"], scratch))
        slot = "%s.calls[%d]" % (pending, nxt)
        gdb.execute("set var %s.arg = (void *)%d" % (slot, scratch))
        gdb.execute("set var %s.func = (int (*)(void *))PyRun_SimpleString" % slot)
        if "flags" in [field.name for field in gdb.parse_and_eval(slot).type.fields()]:
            gdb.execute("set var %s.flags = 0" % slot)  # 3.12+: not main-thread-only, not to be freed
        if "npending" in fields:
            gdb.execute("set var %s.next = %d" % (pending, (nxt + 1) % size))
            gdb.execute("set var %s.npending = %s.npending + 1" % (pending, pending))
            # _PY_CALLS_TO_DO_BIT in every thread of the main interpreter.
            tstate = gdb.parse_and_eval("_PyRuntime.interpreters.main->threads.head")
            while int(tstate) != 0:
                gdb.execute("set var ((PyThreadState *)%d)->eval_breaker |= 4" % int(tstate))
                tstate = tstate["next"]
        else:
            gdb.execute("set var %s.last = %d" % (pending, (nxt + 1) % size))
            gdb.execute("set var %s.calls_to_do._value = 1" % pending)
            gdb.execute("set var _PyRuntime.interpreters.main->ceval.eval_breaker._value = 1")
        done(state="pending", slot=nxt)
except SystemExit:
    pass
except Exception as exc:
    done(state="failed", reason="%s: %s" % (type(exc).__name__, exc))
'''
# The interpreters whose pending-call queue this script knows.
GDB_VERSIONS = ((3, 10), (3, 11), (3, 12), (3, 13))


@dataclass(frozen=True)
class Target:
    """A process to attach to, as found in /proc."""

    pid: int
    uid: int
    exe: str
    version: tuple[int, int]
    libpython: str | None
    environ: Mapping[str, str]


@dataclass(frozen=True)
class Attached:
    """One process the agent was started in, or was already running in."""

    pid: int
    role: str
    how: str
    seconds: float
    tries: int


def inspect(pid: int) -> Target:
    """The target's interpreter, user and environment, or why it cannot be attached.

    Raises:
        AttachError: no such process, not ours, not Python, too old, in another
            container, or ptrace forbidden; each message says what to do.
    """
    proc = "/proc/%d" % pid
    try:
        uid = os.stat(proc).st_uid
        exe = os.readlink(proc + "/exe")
        with open(proc + "/maps") as f:
            maps = f.read()
    except FileNotFoundError:
        raise AttachError("no process %d on this host" % pid) from None
    except PermissionError:
        raise AttachError("process %d belongs to another user (uid %d): run `bilge attach` as that user or "
                          "as root" % (pid, uid)) from None
    if uid != os.geteuid() and os.geteuid() != 0:
        raise AttachError("process %d belongs to uid %d: run `bilge attach` as that user or as root" % (pid, uid))
    if pid == os.getpid():
        raise AttachError("bilge cannot attach to itself")
    try:
        if os.readlink(proc + "/ns/pid") != os.readlink("/proc/self/ns/pid"):
            raise AttachError("process %d runs in another PID namespace (a container): run `bilge attach` inside "
                              "that container, or start the worker there under `bilge run`" % pid)
    except OSError:
        pass
    libpython = next((line.split()[-1] for line in maps.splitlines() if "/libpython3." in line), None)
    version = _version(libpython, exe, maps, pid)
    if version < (3, 10):
        raise AttachError("process %d runs Python %d.%d; bilge supports 3.10 and later" % ((pid,) + version))
    scope = _read("/proc/sys/kernel/yama/ptrace_scope")
    if version < (3, 14) and scope is not None and scope.strip() in ("1", "2") and os.geteuid() != 0:
        raise AttachError("ptrace is restricted here (kernel.yama.ptrace_scope=%s): run `bilge attach` as "
                          "root, or `sudo sysctl kernel.yama.ptrace_scope=0`; or use `bilge top` (reads /proc, "
                          "always works)" % scope.strip())
    if version < (3, 14) and scope is not None and scope.strip() == "3":
        raise AttachError("ptrace is disabled on this host (kernel.yama.ptrace_scope=3); `bilge top` still "
                          "watches the process from /proc")
    return Target(pid, uid, exe, version, libpython, live.environ_of(pid))


def attach(pid: int, data_dir: str, run_id: int, role: str = "main", parent_id: int | None = None,
           arm: float = 0.0) -> Attached:
    """Start the agent in process ``pid``, recording into ``data_dir``'s run ``run_id``.

    ``arm``: seconds a process that does not run Python within
    ``PAYLOAD_DEADLINE`` (an idle pool child blocked in ``read``) keeps the
    payload queued; its agent starts when it next runs Python (the child's
    next task). 0: refuse such a process instead.

    Raises:
        AttachError: the process cannot be attached safely (the reason says why and what to do).
    """
    started = time.monotonic()
    target = inspect(pid)
    sockets = socket_dir(target.environ.get(SOCKET_DIR, ""), target.environ, target.uid)
    existing = os.path.join(sockets, "%d.sock" % pid)
    if os.path.exists(existing):
        try:
            live.request(live.LiveAgent(pid, existing), "status", timeout=5.0)
            return Attached(pid, role, "already under bilge", time.monotonic() - started, 0)
        except Exception:  # noqa: BLE001, S110 - a stale socket: attach anew
            pass
    config = AgentConfig(data_dir=data_dir, run_id=run_id, socket_dir=sockets)
    variables = config.to_environment()
    if target.version >= (3, 14):
        work = _work_dir()
        try:
            how = _remote_exec(target, variables, role, parent_id, work)
            return _wait_for_agent(target, sockets, role, how, started, 1)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if target.version not in GDB_VERSIONS:
        raise AttachError("attaching to Python %d.%d is not supported (3.10 and later are): start the "
                          "worker under `bilge run`, or watch it with `bilge top`" % target.version)
    if shutil.which("gdb") is None:
        raise AttachError("attaching to Python %d.%d needs gdb, which is not installed (apt-get install gdb); "
                          "or start the worker under `bilge run`" % target.version)
    # An armed payload may run long after this command: it lives in the data dir, not a temporary one.
    work = _work_dir(data_dir if arm > 0 else None)
    valid = max(PAYLOAD_DEADLINE, arm)
    armed = False
    try:
        # What every try gives gdb: the payload's path (the file itself is written again at each try, with a
        # fresh deadline), the text naming it, the script, and where the text goes in the target.
        payload = os.path.join(work, "payload.py")
        code = os.path.join(work, "code")
        text = _code(payload).encode() + b"\0"
        with open(code, "wb") as f:
            f.write(text)
        script = os.path.join(work, "inject.py")
        with open(script, "w") as f:
            f.write(_GDB_SCRIPT)
        scratch = _scratch(target, len(text))
        last = ""
        for tries in range(1, TRIES + 1):
            if os.path.exists(payload):
                os.unlink(payload)
            _write(payload, _payload(variables, role, parent_id, valid), target.uid)
            outcome = _run_gdb(target, script, code, scratch, work)
            state = outcome.get("state")
            if state == "pending":
                if outcome.get("rc", 0) != 0:
                    raise AttachError("the payload failed in process %d (PyRun_SimpleString returned %s); the "
                                      "process runs on untouched" % (pid, outcome.get("rc")))
                # A queued payload reads its file when it runs: the directory stays until then.
                done = _wait_for_agent(target, sockets, role, str(state), started, tries, arm > 0)
                armed = done.how.startswith("armed")
                return done
            if state == "failed":
                raise AttachError("gdb could not attach to process %d: %s" % (pid, outcome.get("reason")))
            if state == "nosymbols":
                raise AttachError(
                    "the Python library of process %d (%s) carries no debugging information, which bilge attach "
                    "needs to find the interpreter's pending calls: install its debug symbols (Debian/Ubuntu: "
                    "the python3.%d-dbg package, or a debuginfod server), or start the worker under `bilge run`; "
                    "`bilge top` watches it from /proc meanwhile" % (pid, target.libpython or target.exe,
                                                                      target.version[1]))
            last = str(outcome.get("frame"))
            time.sleep(RETRY_PAUSE)
    finally:
        if not armed:
            shutil.rmtree(work, ignore_errors=True)
    raise AttachError("process %d was never at a safe point in %d tries (its main thread was in %s): try again, "
                      "or start the worker under `bilge run`" % (pid, TRIES, last))


def detach(pid: int) -> None:
    """Stop the agent of process ``pid`` (started by attach or not) and disconnect its hooks.

    Raises:
        AgentUnreachableError: no agent answers for that process.
    """
    live.request(live.find(pid), "detach")


def _work_dir(parent: str | None = None) -> str:
    """A fresh directory for one attach's files: the target (another uid, when we are root) reads the payload
    in it; nobody else can list it."""
    work = tempfile.mkdtemp(prefix="attach-" if parent else "bilge-attach-", dir=parent)
    os.chmod(work, 0o711)
    return work


def _run_gdb(target: Target, script: str, code: str, scratch: int, work: str) -> dict[str, object]:
    """One try: gdb looks at the target's threads and queues the payload if no thread is in the way (the
    result says how it went)."""
    result = os.path.join(work, "result.json")
    if os.path.exists(result):
        os.unlink(result)
    command = ["gdb", "-nx", "-batch", "-p", str(target.pid), "-ex", "set auto-solib-add off"]
    command += ["-ex", "sharedlibrary libpython"] if target.libpython else []
    command += ["-x", script]
    env = {**os.environ, "BILGE_ATTACH_RESULT": result, "BILGE_ATTACH_CODE": code,
           "BILGE_ATTACH_RISKY": json.dumps(_RISKY), "BILGE_ATTACH_SCRATCH": str(scratch)}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=GDB_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AttachError("gdb did not finish within %.0f s on process %d" % (GDB_TIMEOUT, target.pid)) from None
    try:
        with open(result) as f:
            answer: dict[str, object] = json.load(f)
    except (OSError, ValueError):
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise AttachError("gdb could not attach to process %d: %s" % (
            target.pid, reason[-1] if reason else "no output")) from None
    return answer


def _remote_exec(target: Target, variables: Mapping[str, str], role: str, parent_id: int | None,
                 work: str) -> str:
    """Python 3.14+: ``sys.remote_exec`` from the target's own interpreter (the payload runs at its next
    safe point, in its main thread)."""
    payload = os.path.join(work, "payload.py")
    _write(payload, _payload(variables, role, parent_id), target.uid)
    done = subprocess.run([target.exe, "-c", "import sys; sys.remote_exec(%d, %r)" % (target.pid, payload)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise AttachError("sys.remote_exec refused process %d: %s (remote debugging may be disabled: "
                          "PYTHON_DISABLE_REMOTE_DEBUG or -X disable-remote-debug)" % (
                              target.pid, lines[-1] if lines else "no reason given"))
    return "remote_exec"


def _wait_for_agent(target: Target, sockets: str, role: str, how: str, started: float, tries: int,
                    armed: bool = False) -> Attached:
    path = os.path.join(sockets, "%d.sock" % target.pid)
    deadline = time.monotonic() + PAYLOAD_DEADLINE
    while time.monotonic() < deadline:
        if os.path.exists(path):
            try:
                live.request(live.LiveAgent(target.pid, path), "status", timeout=5.0)
                return Attached(target.pid, role, how, time.monotonic() - started, tries)
            except Exception:  # noqa: BLE001, S110 - not answering yet
                pass
        time.sleep(0.05)
    if how == "pending" and armed:
        return Attached(target.pid, role, "armed (its agent starts when it next runs Python)",
                        time.monotonic() - started, tries)
    if how == "pending":
        raise AttachError("process %d never ran Python code within %.0f s (its main thread holds the GIL in a "
                          "long C call or is blocked): nothing was started, and the queued payload will do "
                          "nothing when it runs (it is past its deadline); try again later, or with --arm" % (
                              target.pid, PAYLOAD_DEADLINE))
    raise AttachError("the agent did not answer in process %d within %.0f s after %s; see the process's log" % (
        target.pid, PAYLOAD_DEADLINE, how))


def _payload(variables: Mapping[str, str], role: str, parent_id: int | None,
             valid: float = PAYLOAD_DEADLINE) -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return (
        "# bilge attach: starts the bilge agent's thread in this process, nothing else.\n"
        "import sys as _sys, time as _time\n"
        "if _time.time() < %r:\n"
        "    if %r not in _sys.path:\n"
        "        _sys.path.append(%r)\n"
        # Importing the agent releases the GIL at every file it stats and reads; with busy threads each
        # release costs a switch interval (5 ms) or more to win the GIL back: 3 s in a bare interpreter with 3
        # spinning threads, ~0.9 s with a 0.2 ms interval. The host's interval comes back as soon as the agent
        # has started (unless the host changed it meanwhile).
        "    _interval = _ours = _sys.getswitchinterval()\n"
        "    if _interval > %r:\n"
        "        _sys.setswitchinterval(%r)\n"
        "        _ours = _sys.getswitchinterval()\n"
        "    try:\n"
        "        from bilge.agent._runtime import attach_here as _attach_here\n"
        "        _attach_here(%r, %r, %r)\n"
        "    finally:\n"
        "        if _ours != _interval and _sys.getswitchinterval() == _ours:\n"
        "            _sys.setswitchinterval(_interval)\n" % (
            time.time() + valid, here, here, ATTACH_SWITCH_INTERVAL, ATTACH_SWITCH_INTERVAL, dict(variables), role,
            parent_id))


def _code(payload: str) -> str:
    # What PyRun_SimpleString runs: it must never raise (a pending call that
    # fails without an exception set kills the target with SystemError).
    return ("try:\n    exec(compile(open(%r).read(), %r, 'exec'), {'__name__': 'bilge_attach'})\n"
            "except BaseException:\n    pass\n" % (payload, payload))


def _scratch(target: Target, size: int) -> int:
    """An address in the target where ``size`` bytes can be written that nothing uses.

    The tail of the page that holds the end of a mapped library's ``.bss``
    (or the interpreter's): mapped, writable, zero, and past every symbol.

    Raises:
        AttachError: no library has such a tail of ``size`` bytes.
    """
    starts: dict[str, int] = {}
    writable: list[tuple[int, int]] = []
    with open("/proc/%d/maps" % target.pid) as f:
        for line in f:
            fields = line.split()
            low, high = (int(part, 16) for part in fields[0].split("-"))
            if len(fields) >= 6 and fields[5].startswith("/") and int(fields[2], 16) == 0:
                starts.setdefault(fields[5], low)
            if fields[1].startswith("rw"):
                writable.append((low, high))
    candidates = [path for path in (target.libpython, target.exe) if path] + sorted(starts)
    for path in dict.fromkeys(candidates):
        if path not in starts:
            continue
        end = _bss_end(path)
        if end is None:
            continue
        end += starts[path]
        page_end = (end + 4095) & ~4095
        inside = any(low <= end and page_end <= high for low, high in writable)
        if inside and page_end - end >= size + 16:
            return (end + 15) & ~15
    raise AttachError("found no spare bytes in process %d to put the payload's text in" % target.pid)


def _bss_end(path: str) -> int | None:
    """The end of the ``.bss`` section of an ELF64 little-endian file (relative to its load address)."""
    import struct

    try:
        with open(path, "rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return None
            shoff, = struct.unpack_from("<Q", header, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 0x3A)
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
            _, _, _, _, names_offset, names_size = sections[shstrndx]
            f.seek(names_offset)
            names = f.read(names_size)
    except (OSError, struct.error, IndexError):
        return None
    for name, _, _, addr, _, size in sections:
        if names[name:names.index(b"\0", name)] == b".bss":
            return int(addr + size)
    return None


def _write(path: str, text: str, uid: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if uid != os.geteuid():
        os.chown(path, uid, -1)


def _version(libpython: str | None, exe: str, maps: str, pid: int) -> tuple[int, int]:
    for name in (libpython or "", exe):
        base = os.path.basename(name)
        for prefix in ("libpython", "python"):
            if base.startswith(prefix):
                rest = base[len(prefix):].split(".so")[0].rstrip("dmu")
                parts = rest.split(".")
                if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                    return int(parts[0]), int(parts[1])
    if "python" not in exe and "libpython" not in maps:
        raise AttachError("process %d does not run Python (%s)" % (pid, exe))
    try:
        done = subprocess.run(["/proc/%d/exe" % pid, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=10)
        major, minor = done.stdout.split()
        return int(major), int(minor)
    except (OSError, ValueError, subprocess.SubprocessError):
        raise AttachError("cannot tell which Python process %d runs (%s)" % (pid, exe)) from None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
