"""Leak signatures: one stable id per leak, the same in every child, after a restart, on every host and deploy.

A signature hashes what identifies a leak and nothing that changes with
where or when it was seen. A leak is its task and what keeps it alive:

- with a holder: the task and the holder's *root*, the named container
  the path starts from, with subscripts, addresses and thread numbers taken
  out (``shop.cache._RENDERED['inv-17']['lines']`` and
  ``shop.cache._RENDERED[...]`` are one holder, ``shop.cache._RENDERED``).
  The leaking type is left out here: what a census finds growing fastest
  under one holder (the dict of a statement, or its list of lines) differs
  between children of the same worker;
- without one: the task, the leaking type and the allocation site's file
  relative to its package, *without* the line: the part after
  ``site-packages/`` (or ``dist-packages/``), else the file's last two path
  components (``proj/tasks.py``), so ``/srv/release-41/`` and
  ``/srv/release-42/`` agree; the line is left out because an edit above it
  in the next deploy would otherwise split one leak into two.

Not the kind either: whether a child's growth reads as Python objects,
native memory or fragmentation moves with its allocator's state. Nor the
size: a leak that grows faster after a deploy keeps its id.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from bilge.model import Finding

LENGTH = 12  # hex digits: 48 bits, collision-free for any fleet's handful of leaks
_SUBSCRIPT = re.compile(r"\[[^\[\]]*\]")
_ADDRESS = re.compile(r"\s*(?:at\s+)?0x[0-9a-fA-F]+")
_ANGLED = re.compile(r"<[^<>]*>")
_DIGITS = re.compile(r"\d+")
_LINE = re.compile(r":\d+$")
_PACKAGES = re.compile(r".*/(?:site|dist)-packages/")


def holder_shape(holder: str | None) -> str:
    """The holder path with what differs between processes and runs taken out."""
    if not holder:
        return ""
    shape = _ADDRESS.sub("", holder)
    previous = None
    while previous != shape:  # nested subscripts, innermost first
        previous, shape = shape, _SUBSCRIPT.sub("\x00", shape)
    shape = shape.replace("\x00", "[]")
    return _ANGLED.sub(lambda m: _DIGITS.sub("#", m.group(0)), shape)


def holder_root(holder: str | None) -> str:
    """The named container a holder path starts from, in its shape (``""`` when there is no holder)."""
    return re.split(r"\[|->", holder_shape(holder), maxsplit=1)[0]


def site_file(location: str | None) -> str:
    """The allocation site's file relative to its package, without the line."""
    if not location:
        return ""
    path = _LINE.sub("", location).replace("\\", "/")
    inside = _PACKAGES.sub("", path)
    if inside != path:
        return inside
    return "/".join(path.split("/")[-2:])


def of(finding: Finding) -> str:
    """The finding's signature: ``LENGTH`` hex digits."""
    if finding.holder:
        parts: tuple[str, ...] = ("held", finding.task or "", holder_root(finding.holder))
    else:
        parts = ("allocated", finding.task or "", finding.type or "", site_file(finding.location))
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:LENGTH]


def stamped(findings: Sequence[Finding], earlier: Mapping[str, float] | None) -> tuple[Finding, ...]:
    """``findings`` with their signatures, and whether each is new since the earlier runs recorded theirs.

    Args:
        earlier: signature -> start of the first earlier run that found it;
            None when no earlier run was diagnosed (nothing is called new).
    """
    out = []
    for f in findings:
        sig = of(f)
        since = earlier.get(sig) if earlier is not None else None
        out.append(replace(f, signature=sig, seen_since=since, new=None if earlier is None else since is None))
    return tuple(out)


def novelty(f: Finding) -> str:
    """What the report says of a finding's history in its data dir ("" when there is nothing to compare)."""
    if f.new:
        return "new since the previous run"
    if f.seen_since is not None:
        return "seen since " + time.strftime("%Y-%m-%d %H:%M", time.localtime(f.seen_since))
    return ""
