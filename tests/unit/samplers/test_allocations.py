"""Naming allocation sites: who owns a source file."""

from __future__ import annotations

import inspect

import pytest

from bilge.samplers.allocations import owner_of


def test_ownership_of_source_files() -> None:
    """User code, the standard library and installed packages are told apart, with distribution and version."""
    assert owner_of(__file__) == "user"
    assert owner_of("<string>") == owner_of("<sqlalchemy generated __init__ for class a.B>") == "generated"
    assert owner_of("<frozen importlib._bootstrap>") == "stdlib"
    assert owner_of(inspect.getsourcefile(inspect)) == "stdlib"
    owner = owner_of(inspect.getsourcefile(pytest))
    assert owner.startswith("third-party:pytest ")
