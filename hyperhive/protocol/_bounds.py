"""Value bounds declared on the fields of wire classes, checked by the codec at decode time.

A request field that takes a number, a list or text that must stay clean carries a
:class:`Bounds` in its attrs metadata (see :func:`wire`). The codec refuses a value outside
them with the reason :meth:`Bounds.violation` gives, and the JSON Schema shows them as
``minimum``/``maximum``/``maxItems``/``pattern``. No I/O here.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

#: The attrs metadata key under which a field's :class:`Bounds` is stored.
BOUNDS_KEY: Final = "hyperhive.bounds"


@attrs.frozen
class Bounds:
    """What values a field admits beyond its type."""

    minimum: int | float | None = None
    maximum: int | float | None = None
    #: For a list: the most items it may hold.
    max_items: int | None = None
    #: For a list: the bounds of each item.
    items: Bounds | None = None
    #: For text: refuse U+0000 (it would end up in a command line or a file name).
    no_nul: bool = False

    def violation(self, value: object) -> str | None:
        """Why ``value`` (already of the field's type) is out of bounds, or None."""
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            low, high = self.minimum, self.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                return f"must be between {low} and {high}"
        if isinstance(value, list):
            if self.max_items is not None and len(value) > self.max_items:
                return f"must have at most {self.max_items} items, got {len(value)}"
            if self.items is not None:
                for index, item in enumerate(value):
                    reason = self.items.violation(item)
                    if reason is not None:
                        return f"item {index} {reason}"
        if isinstance(value, str) and self.no_nul and "\x00" in value:
            return "must not contain NUL (U+0000)"
        return None

    def schema(self) -> dict[str, Any]:
        """These bounds as JSON Schema keywords."""
        out: dict[str, Any] = {}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.max_items is not None:
            out["maxItems"] = self.max_items
        if self.no_nul:
            out["pattern"] = "^[^\\u0000]*$"
        return out


def bounds_of(field: attrs.Attribute[Any]) -> Bounds | None:
    found = field.metadata.get(BOUNDS_KEY)
    return found if isinstance(found, Bounds) else None


def wire(bounds: Bounds) -> dict[str, Any]:
    """The attrs metadata that declares ``bounds`` on a field: ``attrs.field(metadata=wire(…))``."""
    return {BOUNDS_KEY: bounds}
