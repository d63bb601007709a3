"""Celery wiring for the agent: per-task accounting and process roles.

Stdlib-only (Celery itself is imported only once the host has imported it).
Nothing is connected at import time. ``install()`` arms a one-shot import
hook so the signals are connected the moment the host imports
``celery.signals``; the before-fork handler calls ``connect_if_loaded()`` too,
so prefork children always inherit the connection.

Signals (see notes/celery-internals.md §2): ``task_prerun``/``task_postrun``
fire in the process that runs the task (pool child, pool thread, or the
main process with ``-P solo``); ``worker_init`` in the main process;
``worker_process_init`` in each prefork child.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from bilge.agent import _current

_connected = False
_lock = threading.Lock()
WATCHED = "celery.signals"


_agent = _current.get  # one call a hook, not two: the task hooks run twice a task


def _on_prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    agent = _agent()
    if agent is not None:
        name = getattr(task if task is not None else sender, "name", None) or "<unknown>"
        agent.task_started(task_id, str(name))


def _on_postrun(sender: Any = None, task_id: Any = None, state: Any = None, **_: Any) -> None:
    agent = _agent()
    if agent is not None:
        agent.task_finished(task_id, failed=state not in (None, "SUCCESS"))


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    agent = _agent()
    if agent is not None:
        agent.set_role("celery-main")
        try:
            from bilge.agent import fleet

            fleet.register(agent.config.data_dir, agent.config.run_id)
        except Exception:  # noqa: BLE001, S110 - no fleet answers, but the worker runs
            pass
        if agent.config.recycle.enabled and hasattr(sender, "pool_restarts"):
            # worker_init runs after the worker read its settings and before
            # the pool is built: with restarts on, billiard gives every child
            # the sentinel through which bilge lets a leaking child leave.
            sender.pool_restarts = True


def _on_process_init(**_: Any) -> None:
    agent = _agent()
    # The solo pool sends worker_process_init in the main process too (after
    # worker_init): only a forked agent is a pool child.
    if agent is not None and agent.parent_id is not None:
        agent.set_role("celery-child")
        try:
            # The child's slot in the pool: its successor after a recycle
            # takes the same one, so metrics keep one series per slot.
            index = getattr(sys.modules["billiard.process"].current_process(), "index", None)
            if isinstance(index, int):
                agent.note_fact("pool_index", index)
        except Exception:  # noqa: BLE001, S110 - a nicety; the child runs regardless
            pass
        try:
            # The limit Celery recycles on, to tell a recycle storm (a child
            # that starts above it) in the report.
            app = sys.modules["celery"].current_app
            agent.note_fact("celery_max_memory_kb", app.conf.worker_max_memory_per_child)
        except Exception:  # noqa: BLE001, S110 - a nicety; the child runs regardless
            pass


def _on_process_shutdown(exitcode: Any = None, **_: Any) -> None:
    # billiard children leave through os._exit, so atexit never runs there:
    # write what is buffered now, with the code the child leaves with
    # (155 is billiard's recycle: max tasks or max memory per child).
    agent = _agent()
    if agent is not None:
        if isinstance(exitcode, int):
            agent.note_fact("exit_code", exitcode)
        agent.stop(timeout=1.0)


# Each Celery signal bilge connects, with its handler: connected by connect_if_loaded, disconnected by uninstall.
_HANDLERS = (
    ("task_prerun", _on_prerun),
    ("task_postrun", _on_postrun),
    ("worker_init", _on_worker_init),
    ("worker_process_init", _on_process_init),
    ("worker_process_shutdown", _on_process_shutdown),
)


def connect_if_loaded() -> bool:
    """Connect the handlers if the host has imported Celery's signals."""
    global _connected
    module = sys.modules.get(WATCHED)
    if module is None or _connected:
        return _connected
    with _lock:
        if _connected:
            return True
        for signal_name, handler in _HANDLERS:
            signal = getattr(module, signal_name, None)
            if signal is not None:
                signal.connect(handler, weak=False, dispatch_uid="bilge.%s" % signal_name)
        _connected = True
    return True


class _SignalsImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of ``celery.signals``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _ConnectingLoader(spec.loader)
                return spec
        return None


class _ConnectingLoader(importlib.abc.Loader):
    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._wrapped.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._wrapped.exec_module(module)
        _remove_hook()
        try:
            connect_if_loaded()
        except Exception:  # noqa: BLE001, S110 - Celery must import whatever happens to us
            pass


_hook: _SignalsImportHook | None = None


def _remove_hook() -> None:
    global _hook
    if _hook is not None:
        try:
            sys.meta_path.remove(_hook)
        except ValueError:
            pass
        _hook = None


def install() -> None:
    """Connect now if Celery is loaded, else when it is imported."""
    global _hook
    if connect_if_loaded() or _hook is not None:
        return
    _hook = _SignalsImportHook()
    sys.meta_path.insert(0, _hook)


def uninstall() -> None:
    """Disconnect the handlers and remove the import hook (``bilge detach``)."""
    global _connected
    _remove_hook()
    module = sys.modules.get(WATCHED)
    if module is None or not _connected:
        return
    with _lock:
        for signal_name, _ in _HANDLERS:
            signal = getattr(module, signal_name, None)
            if signal is not None:
                signal.disconnect(dispatch_uid="bilge.%s" % signal_name)
        _connected = False
