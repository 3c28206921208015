"""JSON Schema of every request and reply, generated from the attrs classes."""

from __future__ import annotations

import types
import typing
from enum import StrEnum
from typing import Any, Literal, get_args, get_origin

import attrs

from hyperhive.config import PROTOCOL_VERSION
from hyperhive.protocol._bounds import Bounds, bounds_of
from hyperhive.protocol._codec import AGENT_TABLE, HOST_TABLE, MANAGER_TABLE, _wire_name
from hyperhive.protocol._messages import REPLIES, Reply, Request
from hyperhive.protocol.event_payloads import EVENT_PAYLOADS


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = get_origin(tp)
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is type(None):
        return {"type": "null"}
    if origin is list:
        (item,) = get_args(tp)
        return {"type": "array", "items": _type_schema(item, defs)}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(a, defs) for a in get_args(tp)]}
    if attrs.has(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}
            defs[name] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _bounded(schema: dict[str, Any], bounds: Bounds | None) -> dict[str, Any]:
    """Add a field's declared bounds to the branch(es) of its schema they apply to."""
    if bounds is None:
        return schema
    if "anyOf" in schema:
        return {"anyOf": [_bounded(s, bounds) for s in schema["anyOf"]]}
    kind = schema.get("type")
    keywords = bounds.schema()
    if kind in ("integer", "number"):
        keep = {k: v for k, v in keywords.items() if k in ("minimum", "maximum")}
    elif kind == "string":
        keep = {k: v for k, v in keywords.items() if k == "pattern"}
    elif kind == "array":
        keep = {k: v for k, v in keywords.items() if k == "maxItems"}
        if bounds.items is not None:
            schema = {**schema, "items": _bounded(schema["items"], bounds.items)}
    else:
        keep = {}
    return {**schema, **keep}


def _object_schema(cls: type[Any], defs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        wire = _wire_name(field.name)
        props[wire] = _bounded(_type_schema(hints[field.name], defs), bounds_of(field))
        if field.default is attrs.NOTHING:
            required.append(wire)
    props = {**extra.pop("props", {}), **props}
    required = extra.pop("required", []) + required
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        schema["description"] = cls.__doc__.strip()
    return schema


def _request_schema(cls: type[Request], defs: dict[str, Any]) -> dict[str, Any]:
    return _object_schema(cls, defs, props={"cmd": {"const": cls.CMD}}, required=["cmd"])


def _reply_schema(cls: type[Reply], defs: dict[str, Any], *, host: bool) -> dict[str, Any]:
    if not host:
        return _object_schema(cls, defs, props={"ok": {"const": True}}, required=["ok"])
    # Every reply on the host socket carries the protocol version (an envelope field).
    props = {"ok": {"const": True}, "protocol": {"const": PROTOCOL_VERSION}}
    return _object_schema(cls, defs, props=props, required=["ok", "protocol"])


def json_schema() -> dict[str, Any]:
    """One document: per socket, each command's request and reply schema."""
    defs: dict[str, Any] = {}
    sockets: dict[str, Any] = {}
    for table in (AGENT_TABLE, MANAGER_TABLE, HOST_TABLE):
        commands: dict[str, Any] = {}
        for cmd, cls in sorted(table.by_cmd.items()):
            commands[cmd] = {
                "request": _request_schema(cls, defs),
                "reply": _reply_schema(REPLIES[cls], defs, host=table is HOST_TABLE),
            }
        sockets[table.socket_name] = commands
    events = {kind.value: _object_schema(cls, defs) for kind, cls in EVENT_PAYLOADS.items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hyperhive wire protocol",
        "description": (
            "One JSON object per line. Every reply is either the command's reply with "
            '"ok": true, or {"ok": false, "error": "<reason>"}. On the host socket every '
            'reply (errors too) also carries "protocol": the protocol version. After the '
            "reply to watch, the host connection receives watch lines (see watch_line)."
        ),
        "sockets": sockets,
        "events": events,
        "error": {
            "type": "object",
            "properties": {
                "ok": {"const": False},
                "error": {"type": "string"},
                "protocol": {"const": PROTOCOL_VERSION},
            },
            "required": ["ok", "error"],
            "additionalProperties": False,
        },
        "watch_line": {
            "type": "object",
            "description": (
                "One change pushed to a watching host connection: an event of the kinds "
                "in 'events' (agent, pause, approval, question and problem changes)."
            ),
            "properties": {
                "seq": {"type": "integer"},
                "ts": {"type": "number"},
                "kind": {"type": "string"},
                "data": {"type": "object"},
            },
            "required": ["seq", "ts", "kind", "data"],
            "additionalProperties": False,
        },
        "$defs": defs,
    }
