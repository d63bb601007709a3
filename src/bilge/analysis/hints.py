"""Fix hints derived from the evidence of a finding, never from names alone.

A pattern is recognised only from what was measured: the growing type, the
holder path and its container, the leak kind. When nothing specific fits,
the hint says what the evidence does show and where to look.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bilge.analysis.kind import FILE_DESCRIPTORS, FRAGMENTATION, NATIVE, PYTHON_OBJECTS, UNCOLLECTABLE
from bilge.model import THREAD_STACK, Holder


@dataclass(frozen=True)
class Evidence:
    """What a hint may be derived from."""

    kind: str | None
    task: str | None
    type: str | None
    count_per_call: float | None
    holder: Holder | None = None

    @property
    def where(self) -> str:
        return "each call of %s" % self.task if self.task else "the process"


def _path(e: Evidence) -> str:
    return e.holder.path if e.holder else ""


def _lru_cache(e: Evidence) -> str | None:
    path = _path(e)
    if "<lru_cache>" in path or "_lru_cache_wrapper" in path or (
            e.holder and e.holder.container_type == "functools._lru_cache_wrapper"):
        return ("%s grows a functools.lru_cache (%s): give it a maxsize if it has none, or cache on a key that "
                "repeats. On a method, its keys include self, so it keeps every instance alive: cache a "
                "function of the arguments, or one cache per instance." % (e.where.capitalize(), path))
    return None


def _per_job_loggers(e: Evidence) -> str | None:
    if e.type in ("logging.Logger", "logging.PlaceHolder") or "loggerDict" in _path(e):
        return ("%s creates a new logger (logging.getLogger with a per-job name); the logging module keeps "
                "every logger forever in Logger.manager.loggerDict. Use one module-level logger and put the "
                "job id in the message or a LoggerAdapter." % e.where.capitalize())
    return None


def _stored_tracebacks(e: Evidence) -> str | None:
    if e.type in ("traceback", "frame") or "__traceback__" in _path(e):
        return ("%s keeps exceptions with their tracebacks, and every traceback keeps its frames' locals "
                "alive%s. Store str(exc) or traceback.format_exc() instead, or clear exc.__traceback__."
                % (e.where.capitalize(), " (held by %s)" % _path(e) if _path(e) else ""))
    return None


def _listeners(e: Evidence) -> str | None:
    callables = ("function", "method", "functools.partial", "builtin_function_or_method", "cell")
    if e.type in callables and e.holder and e.holder.container_type in ("list", "set", "dict", "collections.deque"):
        return ("%s registers a callback that is never removed: %s holds %s of them. Unregister it when the "
                "job ends, or keep listeners in a weakref.WeakSet / WeakMethod." % (
                    e.where.capitalize(), _path(e), e.holder.container_len or "many"))
    return None


def _orm_sessions(e: Evidence) -> str | None:
    if e.type and e.type.startswith(("sqlalchemy.orm.session.", "sqlalchemy.orm.state.", "django.db.")):
        return ("%s leaves ORM sessions/states alive (%s): close the session (use `with Session() as s:` or "
                "scoped_session.remove() at task end) so its identity map is released." % (
                    e.where.capitalize(), e.type))
    return None


def _futures(e: Evidence) -> str | None:
    if e.type in ("concurrent.futures._base.Future", "_asyncio.Future", "asyncio.futures.Future", "_asyncio.Task"):
        return ("%s keeps completed futures%s: drop them once their result is read (or use "
                "add_done_callback to remove them from the collection)." % (
                    e.where.capitalize(), " in %s" % _path(e) if _path(e) else ""))
    return None


def _held_from_c(e: Evidence) -> str | None:
    path = _path(e)
    if path.startswith("<atexit callbacks>"):
        return ("%s registers a callback with atexit (%s), and atexit keeps every callback, and the object it "
                "is bound to, until the process exits (%s registered): register once per process, or call "
                "atexit.unregister() when the object is done." % (
                    e.where.capitalize(), path, e.holder.container_len if e.holder else "many"))
    if path.startswith("<signal handlers>"):
        return ("%s installs signal handlers that keep their objects alive (%s): install one handler per "
                "process and restore the previous one when done." % (e.where.capitalize(), path))
    if path.startswith("<") and not (e.holder and e.holder.root_kind == THREAD_STACK):
        # A thread's local is a Python container (its frame's locals): only the other bracketed roots are held
        # from C.
        return ("%s leaves %s objects that no Python container refers to (%s): they are held from C code, by an "
                "extension module or an interpreter registry (codecs, audit hooks, a C library's callback "
                "table); release them through the API that registered them." % (
                    e.where.capitalize(), e.type or "its", path))
    return None


def _dict_cache(e: Evidence) -> str | None:
    if e.holder and e.holder.container_type == "dict" and e.holder.root_kind in ("module-global", "class-attribute"):
        return ("%s adds to %s, a dict that is never evicted (an unbounded cache, %s entries): bound it "
                "(functools.lru_cache(maxsize=…), cachetools.LRUCache/TTLCache) or delete entries when done."
                % (e.where.capitalize(), e.holder.path, e.holder.container_len or "growing"))
    return None


def _long_lived_list(e: Evidence) -> str | None:
    if e.holder and e.holder.container_type in ("list", "collections.deque", "set"):
        return ("%s appends %s objects to %s, which nothing drains (%s items): drain or bound it "
                "(collections.deque(maxlen=…)), or don't keep them." % (
                    e.where.capitalize(), e.type or "its", e.holder.path, e.holder.container_len or "many"))
    return None


PATTERNS: tuple[Callable[[Evidence], str | None], ...] = (
    _held_from_c, _lru_cache, _per_job_loggers, _stored_tracebacks, _listeners, _orm_sessions, _futures,
    _dict_cache, _long_lived_list,
)


def hint(kind: str | None, task: str | None, type_name: str | None, count_per_call: float | None,
         holder: Holder | None = None) -> str:
    """One actionable sentence for a finding."""
    e = Evidence(kind=kind, task=task, type=type_name, count_per_call=count_per_call, holder=holder)
    where = e.where
    if kind == FILE_DESCRIPTORS:
        return ("%s leaves open file descriptors behind%s: close files and sockets when done (`with open(...)`), "
                "or close the objects %s keeps." % (
                    where.capitalize(), " (%s objects pile up)" % type_name if type_name else "",
                    holder.path if holder else "a long-lived list"))
    if kind == UNCOLLECTABLE:
        return ("%s leaves reference cycles that are never collected: re-enable the garbage collector "
                "(gc.enable()), stop calling gc.freeze() per job, or break the cycles (weakref, explicit "
                "cleanup); objects in gc.garbage need their __del__/finalizer fixed." % where.capitalize())
    if kind == FRAGMENTATION:
        return ("%s grows RSS while the memory in use stays flat: the allocator keeps freed memory it cannot "
                "return. Try malloc_trim(0) after large jobs, MALLOC_ARENA_MAX=2, jemalloc, or recycling the "
                "child." % where.capitalize())
    if kind == NATIVE and type_name and holder is not None:
        return ("%s keeps %s objects in %s (%s of them), and their memory is native (allocated outside "
                "Python's allocator, by the library behind them) and goes with each object: remove them from "
                "%s when done or bound it, and close or release those that have a close()/free()/release() "
                "method (a `with` block)." % (
                    where.capitalize(), type_name, holder.path, holder.container_len or "many", holder.path))
    if kind == NATIVE:
        return ("%s grows RSS while the Python heap stays flat: memory allocated outside Python's allocator "
                "(a C extension, ctypes malloc, a native library handle) is not freed." % where.capitalize())
    if kind == PYTHON_OBJECTS:
        for pattern in PATTERNS:
            text = pattern(e)
            if text:
                return text
        if type_name:
            many = "~%.3g " % count_per_call if count_per_call else ""
            return ("%s leaves %s%s objects alive that nothing frees: look for a module-level or class-level "
                    "container (dict cache, list, registry) that %s adds to and never evicts; bound it or "
                    "clear it." % (where.capitalize(), many, type_name, task or "the code"))
        return ("%s grows the Python heap; no single object type stands out in the census, so the growth "
                "is likely in untracked objects (str, bytes) held by a long-lived container." % where.capitalize())
    return "Memory grows after warm-up; run longer for a more specific explanation."
