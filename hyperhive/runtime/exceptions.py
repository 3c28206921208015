"""Task-group exceptions unwrapped: what actually went wrong, for a readable reason."""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def innermost(exc: BaseException) -> BaseException:
    """``exc`` with every single-exception group around it removed."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """``Type: message`` of the innermost single exception (task groups unwrapped)."""
    exc = innermost(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def find(exc: BaseException, kind: type[E] | tuple[type[E], ...]) -> E | None:
    """The first exception of ``kind`` in ``exc``, wherever it is in nested task groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find(inner, kind)
            if found is not None:
                return found
    return None
