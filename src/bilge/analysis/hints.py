"""Fix hints derived from the evidence of a finding (never from names alone)."""

from __future__ import annotations

from bilge.analysis.kind import FILE_DESCRIPTORS, FRAGMENTATION, NATIVE, PYTHON_OBJECTS, UNCOLLECTABLE


def hint(kind: str | None, task: str | None, type_name: str | None, count_per_call: float | None) -> str:
    """One actionable sentence for a finding."""
    where = "each call of %s" % task if task else "the process"
    if kind == FILE_DESCRIPTORS:
        return ("%s leaves open file descriptors behind%s: close files and sockets when done (`with open(...)`), "
                "or close the objects a long-lived list keeps." % (
                    where.capitalize(), " (%s objects pile up)" % type_name if type_name else ""))
    if kind == PYTHON_OBJECTS and type_name:
        many = "~%.3g " % count_per_call if count_per_call else ""
        return ("%s leaves %s%s objects alive that nothing frees: look for a module-level or class-level "
                "container (dict cache, list, registry) that %s adds to and never evicts; bound it or "
                "clear it." % (where.capitalize(), many, type_name, task or "the code"))
    if kind == NATIVE:
        return ("%s grows RSS while the Python heap stays flat: memory allocated outside Python's allocator "
                "(a C extension, ctypes malloc, a native library handle) is not freed." % where.capitalize())
    if kind == UNCOLLECTABLE:
        return ("%s leaves reference cycles that are never collected: re-enable the garbage collector "
                "(gc.enable()), stop calling gc.freeze() per job, or break the cycles (weakref, explicit "
                "cleanup); objects in gc.garbage need their __del__/finalizer fixed." % where.capitalize())
    if kind == FRAGMENTATION:
        return ("%s grows RSS while the memory in use stays flat: the allocator keeps freed memory it cannot "
                "return. Try malloc_trim(0) after large jobs, MALLOC_ARENA_MAX=2, jemalloc, or recycling the "
                "child." % where.capitalize())
    if kind == PYTHON_OBJECTS:
        return ("%s grows the Python heap; no single object type stands out in the census, so the growth "
                "is likely in untracked objects (str, bytes) held by a long-lived container." % where.capitalize())
    return "Memory grows after warm-up; run longer for a more specific explanation."
