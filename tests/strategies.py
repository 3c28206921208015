"""Hypothesis strategies shared by the tests: wire requests of every type."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, get_args, get_origin

import attrs
from hypothesis import strategies as st

from hyperhive.protocol import AGENT_TABLE, HOST_TABLE, MANAGER_TABLE, Request

json_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)


def for_type(tp: Any) -> st.SearchStrategy[Any]:
    origin = get_origin(tp)
    if tp is int:
        return st.integers(min_value=-(2**53), max_value=2**53)
    if tp is float:
        return finite_floats
    if tp is str:
        return json_text
    if tp is bool:
        return st.booleans()
    if tp is type(None):
        return st.none()
    if origin is list:
        return st.lists(for_type(get_args(tp)[0]), max_size=5)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(for_type(a) for a in get_args(tp)))
    if attrs.has(tp):
        return for_attrs(tp)
    raise TypeError(tp)


def for_attrs(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: for_type(hints[f.name]) for f in attrs.fields(cls)})


ALL_REQUEST_CLASSES: list[type[Request]] = sorted(
    {cls for t in (AGENT_TABLE, MANAGER_TABLE, HOST_TABLE) for cls in t.by_cmd.values()},
    key=lambda c: (c.CMD, c.__name__),
)

requests = st.sampled_from(ALL_REQUEST_CLASSES).flatmap(for_attrs)
