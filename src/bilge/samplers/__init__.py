"""Samplers: cheap readings of the current process, stdlib-only.

They run inside users' workers, so every reading is defensive: a failure
yields ``None`` for that field instead of an exception.
"""

import os
from typing import Any

# bilge's own runtime, which the samplers never report on (the demo app is an
# example of user code and is reported like any user's module).
OWN_MODULE_PREFIXES = ("bilge.agent", "bilge.samplers", "bilge.store", "bilge.model", "bilge._bootstrap")


# How holder paths spell what is held outside any module's containers. The
# holder search and the container scans must spell them alike: the analysis
# matches one's paths against the other's (a search path runs through a
# container the scans saw growing).
EXIT_CALLBACKS = "atexit callbacks"  # a registry kept in C: the path reads ``<atexit callbacks>``
LRU_CACHE = "<lru_cache>"  # the cache inside a functools.lru_cache wrapper: ``app.tax_table<lru_cache>``


def code_name(code: Any) -> str:
    """A code object's qualified name where the interpreter has one (3.11+), else its name."""
    return str(getattr(code, "co_qualname", code.co_name))


def thread_local(thread: str, function: str, local: str) -> str:
    """``<thread audit-flusher> frame _flusher() local 'pending'``: a local of a function (its ``code_name``)
    running in a named thread."""
    return "<thread %s> frame %s() local '%s'" % (thread, function, local)


# Where the standard library's and installed packages' source files live.
STDLIB_DIR = os.path.dirname(os.__file__) + os.sep
INSTALLED = "-packages/"  # site-packages, dist-packages


def is_library_file(filename: str) -> bool:
    """True for a source file of the standard library or of an installed package (not the application's)."""
    return filename.startswith(STDLIB_DIR) or INSTALLED in filename


def is_own_module(name: str) -> bool:
    """True for ``bilge`` itself and the modules that run inside workers."""
    return name == "bilge" or name.startswith(OWN_MODULE_PREFIXES)
