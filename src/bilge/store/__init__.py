"""The store: one SQLite database per data directory.

``schema`` and ``writer`` are stdlib-only because the agent uses them inside
workers; ``sqlite`` is the read side that turns rows into model dataclasses.
"""
