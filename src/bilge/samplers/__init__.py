"""Samplers: cheap readings of the current process, stdlib-only.

They run inside users' workers, so every reading is defensive: a failure
yields ``None`` for that field instead of an exception.
"""
