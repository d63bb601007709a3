"""Samplers: cheap readings of the current process, stdlib-only.

They run inside users' workers, so every reading is defensive: a failure
yields ``None`` for that field instead of an exception.
"""

# bilge's own runtime, which the samplers never report on (the demo app is an
# example of user code and is reported like any user's module).
OWN_MODULE_PREFIXES = ("bilge.agent", "bilge.samplers", "bilge.store", "bilge.model", "bilge._bootstrap")


def is_own_module(name: str) -> bool:
    """True for ``bilge`` itself and the modules that run inside workers."""
    return name == "bilge" or name.startswith(OWN_MODULE_PREFIXES)
