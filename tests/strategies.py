"""Hypothesis strategies shared by the tests: wire requests of every type."""

from __future__ import annotations

import types
import typing
from enum import StrEnum
from typing import Any, Literal, get_args, get_origin

import attrs
from hypothesis import strategies as st

from hyperhive.protocol import AGENT_TABLE, HOST_TABLE, MANAGER_TABLE, Request
from hyperhive.protocol._bounds import Bounds, bounds_of

json_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)


def for_type(tp: Any, bounds: Bounds | None = None) -> st.SearchStrategy[Any]:
    """Values of ``tp`` the codec accepts (within ``bounds`` when the field declares some)."""
    origin = get_origin(tp)
    low = None if bounds is None else bounds.minimum
    high = None if bounds is None else bounds.maximum
    if tp is int:
        return st.integers(
            min_value=-(2**53) if low is None else int(low),
            max_value=2**53 if high is None else int(high),
        )
    if tp is float:
        if low is None and high is None:
            return finite_floats
        return st.floats(min_value=low, max_value=high, allow_nan=False)
    if tp is str:
        if bounds is not None and bounds.no_nul:
            return json_text.map(lambda t: t.replace("\x00", ""))
        return json_text
    if tp is bool:
        return st.booleans()
    if tp is type(None):
        return st.none()
    if origin is list:
        most = 5 if bounds is None or bounds.max_items is None else min(5, bounds.max_items)
        items = None if bounds is None else bounds.items
        return st.lists(for_type(get_args(tp)[0], items), max_size=most)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return st.sampled_from(list(tp))
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(for_type(a, bounds) for a in get_args(tp)))
    if attrs.has(tp):
        return for_attrs(tp)
    raise TypeError(tp)


def for_attrs(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(
        cls, **{f.name: for_type(hints[f.name], bounds_of(f)) for f in attrs.fields(cls)}
    )


ALL_REQUEST_CLASSES: list[type[Request]] = sorted(
    {cls for t in (AGENT_TABLE, MANAGER_TABLE, HOST_TABLE) for cls in t.by_cmd.values()},
    key=lambda c: (c.CMD, c.__name__),
)

requests = st.sampled_from(ALL_REQUEST_CLASSES).flatmap(for_attrs)
