"""bilge: find, explain and stop memory leaks in long-running Python workers.

This top-level module stays import-light on purpose: the in-process agent
imports ``bilge.agent`` inside users' workers, and that must not drag in
click, rich or numpy.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
