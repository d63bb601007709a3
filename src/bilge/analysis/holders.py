"""Holder ranking: which of the paths the holder search (and the container scans) found keeps a leak alive.

The agent's holder search names paths from roots to the containers holding
objects of growing types; the container stage follows the lengths of the
containers modules, threads and caches keep. This module decides, from
those, which path holds what grows: a path seen holding more at a later
search, or a container growing at every scan, rather than a big static
table of the same type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bilge.model import THREAD_STACK, ContainerGrowth, Holder, ProcessData


def holder_for(type_name: str | None, groups: Sequence[Sequence[Holder]],
               growing_paths: Sequence[str] = ()) -> Holder | None:
    """The holder of a type's objects: a path whose count grew between searches, else one inside a container
    the scans saw growing (``growing_paths``), else the most-sampled one (when only one search found paths).

    A container that held more of the type at a later search is the one
    growing; a big static table of the same type (say, a module's constant
    dict, a library's closure cells) only ever has the most targets.
    """
    per_process = [[h for h in group if h.type == type_name] for group in groups]
    found = [h for group in per_process for h in group]
    grew = growing(per_process)
    if not grew:
        inside = [h for h in found if within(h.path, growing_paths)]
        if inside:
            return max(inside, key=lambda h: (h.targets, h.t))
    if not grew and any(len({h.started for h in group}) >= 2 for group in per_process):
        # Seen in two searches and held no more the second time: a static
        # table of that type, not what keeps the growth alive. Unless no
        # Python container holds them at all: then say that (held from C).
        from_c = [h for h in found if held_from_c(h)]
        return max(from_c, key=lambda h: (h.targets, h.t)) if from_c else None
    if grew:
        # The path that gained the most between searches: a big static table whose sampled count wobbles
        # (390, then 408) also "held more", by less than what the leak adds.
        gains = gained(per_process)
        return max(grew, key=lambda h: (gains.get(id(h), 0), h.targets, h.t))
    return max(found, key=lambda h: (h.targets, h.t)) if found else None


# A container holding many more objects of a type than the type grew by
# (from the process's first census to the search) held them before the
# growth began: a library's constant table (ssl's error codes, a digraph
# map), not what keeps the leak alive.
STATIC_TARGETS = 2.0
STATIC_SLACK = 100


def plausible(p: ProcessData) -> tuple[Holder, ...]:
    """The process's holders, without those that held more than the type's whole growth.

    A path seen holding more at a later search is kept whatever it held
    before the first census: a constant table does not grow (and a leak
    that began before the censuses, say in an earlier test of the same
    process, has a holder that does).
    """
    if not p.censuses:
        return p.holders
    first = p.censuses[0].types
    grew = {(h.type, h.path) for h in growing([p.holders])}
    out = []
    for h in p.holders:
        if (h.type, h.path) in grew:
            out.append(h)
            continue
        before = [c for c in p.censuses if c.t <= h.t]
        if before and h.type in before[-1].types:
            grown = before[-1].types[h.type][0] - first.get(h.type, (0, 0))[0]
            if h.targets > STATIC_TARGETS * max(grown, 0) + STATIC_SLACK:
                continue
        out.append(h)
    return tuple(out)


def _held_by_c_registry(h: Holder) -> bool:
    """Held by one of the interpreter's registries kept in C (``<atexit callbacks>…``)."""
    return h.root_kind == "registry" and h.path.startswith("<")


def unrooted(h: Holder) -> bool:
    """A climb that reached no root at all (``<held from C>``): held by C code, or garbage no root reaches."""
    return h.root_kind == "unknown"


def held_from_c(h: Holder) -> bool:
    """No Python container holds it: a path from a C-held registry, or from nothing gc-visible."""
    return unrooted(h) or _held_by_c_registry(h)


def runs_through(path: str, other: str) -> bool:
    """Whether holder ``path`` continues ``other`` (``a._X[...]->traceback`` runs through ``a._X[...]``)."""
    return len(path) > len(other) and path.startswith(other) and path[len(other)] in "[.-{ <"


def within(path: str, containers: Iterable[str]) -> bool:
    """Whether holder ``path`` is one of ``containers`` or runs through one of them."""
    return any(path == other or runs_through(path, other) for other in containers)


def gained(groups: Sequence[Sequence[Holder]]) -> dict[int, int]:
    """By ``id`` of each holder: how much more its path held than at its first search in the same process
    (targets, or the container's length when targets are sampled, whichever gained more). A path rooted at a
    C-held registry (``<atexit callbacks>…``) gained all it holds: the search names a registry only when it
    grew since the previous look."""
    gains: dict[int, int] = {}
    for holders in groups:
        first_seen: dict[tuple[str, str], Holder] = {}
        for h in sorted(holders, key=lambda h: h.t):
            first = first_seen.setdefault((h.type, h.path), h)
            gains[id(h)] = h.targets if _held_by_c_registry(h) else max(
                h.targets - first.targets, (h.container_len or 0) - (first.container_len or 0))
    return gains


def growing(groups: Sequence[Sequence[Holder]]) -> list[Holder]:
    """Holders whose path held more at a later search of the same process (one group per process), and those
    rooted at a C-held registry (see ``gained``)."""
    gains = gained(groups)
    return [h for holders in groups for h in holders if gains[id(h)] > 0]


def from_container(g: ContainerGrowth, type_name: str) -> Holder:
    # Found by reading module namespaces (not by a search from the objects):
    # "module-global" covers a class attribute or an object's attribute too;
    # a thread's local and the exit callbacks are named as the holder search
    # names them.
    root_kind = THREAD_STACK if g.path.startswith("<thread ") else \
        "registry" if g.path.startswith("<") else "module-global"
    return Holder(t=0.0, started=0.0, type=type_name, path=g.path, root_kind=root_kind,
                  container_type=g.container_type, container_len=g.last, targets=g.last - g.first)


def is_weak(type_name: str) -> bool:
    return type_name.startswith(("weakref.", "_weakref"))
