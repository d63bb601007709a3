"""Short renderings of user values, for ``--show-values`` only.

Stdlib-only; runs inside the worker. Memory holds secrets, so values are
never captured unless the user asked for them. When asked, they are still
rendered without ever running user code: ``repr()`` is called on builtin
atoms only, containers and plain instances are walked by hand, to a small
depth and length, and anything else is shown as ``<TypeName>``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

MAX_CHARS = 120
MAX_ITEMS = 4
MAX_DEPTH = 2
# Bits a rendered int may have before it is only described (repr of a huge int is quadratic).
MAX_INT_BITS = 256


def render(obj: object, depth: int = MAX_DEPTH) -> str:
    """A bounded rendering of ``obj`` that never calls user code."""
    text = _render(obj, depth)
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


_BRACKETS: dict[type, tuple[str, str]] = {list: ("[", "]"), tuple: ("(", ")"), set: ("{", "}"),
                                          frozenset: ("frozenset({", "})")}


def _render(obj: object, depth: int) -> str:
    # Exact types only: a subclass of str or dict may override __repr__ or
    # __iter__, and user code is never run here.
    if type(obj) is str or type(obj) is bytes:
        text = repr(obj[:MAX_CHARS])
        return text if len(obj) <= MAX_CHARS else text + "…"
    if type(obj) is int:
        return repr(obj) if obj.bit_length() <= MAX_INT_BITS else "<int of %d bits>" % obj.bit_length()
    if type(obj) in (float, bool, complex) or obj is None:
        return repr(obj)
    if depth <= 0:
        return "<%s>" % type(obj).__name__
    if type(obj) is dict:
        return _items("{", "}", obj, depth)
    brackets = _BRACKETS.get(type(obj))
    if brackets is not None:
        items = list(itertools.islice(obj, MAX_ITEMS + 1))  # type: ignore[call-overload]
        parts = [_render(x, depth - 1) for x in items[:MAX_ITEMS]] + (["…"] if len(items) > MAX_ITEMS else [])
        return brackets[0] + ", ".join(parts) + brackets[1]
    attributes = _plain_dict(obj)
    if attributes is not None:
        return type(obj).__name__ + _items("(", ")", attributes, depth, keyword=True)
    return "<%s>" % type(obj).__name__


def _items(opening: str, closing: str, mapping: Mapping[Any, object], depth: int, keyword: bool = False) -> str:
    parts = []
    for i, (key, value) in enumerate(mapping.items()):
        if i == MAX_ITEMS:
            parts.append("…")
            break
        name = key if keyword and type(key) is str else _render(key, 0 if type(key) is not str else 1)
        parts.append("%s%s%s" % (name, "=" if keyword else ": ", _render(value, depth - 1)))
    return opening + ", ".join(parts) + closing


def _plain_dict(obj: object) -> dict[str, object] | None:
    try:
        attributes = object.__getattribute__(obj, "__dict__")
    except Exception:  # noqa: BLE001 - slots, builtins, odd descriptors
        return None
    return attributes if type(attributes) is dict else None


def held_item(container: object, item: object) -> str:
    """``item`` as its container holds it: ``key: value`` in a dict, the value alone elsewhere."""
    if type(container) is dict:
        for key, value in container.items():
            if value is item:
                return "%s: %s" % (render(key, 1), render(item))
    return render(item)
