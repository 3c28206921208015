"""Task-group exceptions unwrapped: what actually went wrong, for a readable reason."""

from __future__ import annotations


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
