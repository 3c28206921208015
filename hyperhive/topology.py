"""The agent hierarchy as plain functions over a parents mapping.

``parents`` maps each known agent to its parent, ``None`` for a root (only the manager is a
root in a live hive; every other agent defaults to ``manager``). Nothing here does I/O:
the registry keeps the mapping, and the API, the broker's scoped broadcast and the schedules
ask these functions. A mapping that somehow holds a cycle (never written through
:func:`check_parent`) is still walked safely: each walk visits a name at most once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping


class TopologyError(ValueError):
    """A re-parenting that would break the tree (unknown name, self-parent, cycle)."""


Parents = Mapping[str, str | None]


def ancestors(parents: Parents, name: str) -> list[str]:
    """``name``'s parent, its parent's parent, ..., up to a root (``name`` itself excluded).

    Stops at a root, at a parent that is not in the mapping (that parent is still listed),
    or before coming back to a name already seen.
    """
    found: list[str] = []
    seen = {name}
    current = parents.get(name)
    while current is not None and current not in seen:
        found.append(current)
        seen.add(current)
        current = parents.get(current)
    return found


def children(parents: Parents, name: str) -> list[str]:
    """The agents whose parent is ``name``, sorted."""
    return sorted(child for child, parent in parents.items() if parent == name and child != name)


def subtree(parents: Parents, root: str) -> frozenset[str]:
    """``root`` and every agent below it."""
    below: dict[str, list[str]] = {}
    for child, parent in parents.items():
        if parent is not None:
            below.setdefault(parent, []).append(child)
    found = {root}
    todo = [root]
    while todo:
        for child in below.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return frozenset(found)


def in_subtree(parents: Parents, root: str, name: str) -> bool:
    """Whether ``name`` is ``root`` or below it."""
    return name == root or root in ancestors(parents, name)


def check_parent(parents: Parents, child: str, parent: str | None) -> None:
    """Raise :class:`TopologyError` unless ``child`` may get ``parent`` (``None``: a root).

    Refused: a ``child`` or ``parent`` that is not in the mapping, ``child`` as its own
    parent, and a ``parent`` inside ``child``'s subtree (a cycle).
    """
    if child not in parents:
        raise TopologyError(f"unknown agent {child!r}")
    if parent is None:
        return
    if parent not in parents:
        raise TopologyError(f"unknown agent {parent!r}")
    if parent == child:
        raise TopologyError(f"{child!r} cannot be its own parent")
    if in_subtree(parents, child, parent):
        raise TopologyError(
            f"{parent!r} is below {child!r}: making it {child!r}'s parent would make a cycle"
        )


def orphaned_by(parents: Parents, gone: str) -> dict[str, str | None]:
    """The new parent of each child of ``gone`` when ``gone`` leaves: ``gone``'s own parent."""
    new_parent = parents.get(gone)
    return {child: new_parent for child in children(parents, gone)}


def walk(parents: Parents) -> Iterator[tuple[str, int]]:
    """Every agent once, depth-first with its depth, siblings alphabetical.

    Roots first are the agents without a parent or whose parent is not in the mapping;
    agents left over (only in a cycle) follow as roots, so nothing is ever hidden.
    """
    seen: set[str] = set()
    roots = sorted(n for n, p in parents.items() if p is None or p not in parents or p == n)
    for root in [*roots, *sorted(parents)]:
        if root in seen:
            continue
        stack = [(root, 0)]
        while stack:
            name, depth = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            yield name, depth
            stack.extend((child, depth + 1) for child in reversed(children(parents, name)))
