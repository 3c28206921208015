"""Closed sets of values on the wire are enums: typed, strictly decoded, listed in the schema."""

from __future__ import annotations

import re
import types
import typing
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import attrs
import pytest

from hyperhive.config import BACKENDS
from hyperhive.errors import ProtocolError
from hyperhive.kinds import BackendChoice, EventKind
from hyperhive.protocol import (
    AGENT_TABLE,
    CONVERTER,
    EVENT_PAYLOADS,
    HOST_TABLE,
    MANAGER_TABLE,
    REPLIES,
    SYSTEM_MESSAGES,
    AgentInfo,
    ApprovalInfo,
    HelloReply,
    json_schema,
    kinds_js,
    structure,
    system_body,
)
from hyperhive.protocol.system_messages import AgentError, ApprovalResolved

REPO = Path(__file__).resolve().parent.parent
TABLES = (AGENT_TABLE, MANAGER_TABLE, HOST_TABLE)

#: Field names that hold a closed set of values wherever they appear on the wire.
CLOSED_SET_NAMES = {"role", "state", "backend", "transient", "kind", "status", "decided_by"}
#: Fields with one of those names whose values are open (free text, a count, a flag).
OPEN = {("Wake", "transient")}  # a flag: bool


def _wire_classes() -> set[type[Any]]:
    roots: list[type[Any]] = [c for t in TABLES for c in t.by_cmd.values()]
    roots += list(REPLIES.values()) + list(EVENT_PAYLOADS.values()) + list(SYSTEM_MESSAGES.values())
    seen: set[type[Any]] = set()
    while roots:
        cls = roots.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for tp in typing.get_type_hints(cls).values():
            roots += [a for a in _leaves(tp) if attrs.has(a)]
    return seen


def _leaves(tp: Any) -> list[Any]:
    if get_origin(tp) in (typing.Union, types.UnionType, list):
        return [leaf for a in get_args(tp) for leaf in _leaves(a)]
    return [tp]


def _closed(tp: Any) -> bool:
    leaves = [a for a in _leaves(tp) if a is not type(None)]
    return bool(leaves) and all(
        get_origin(a) is Literal or (isinstance(a, type) and issubclass(a, StrEnum)) for a in leaves
    )


def test_no_closed_set_field_is_a_bare_string() -> None:
    checked = []
    for cls in _wire_classes():
        for name, tp in typing.get_type_hints(cls).items():
            if name.rstrip("_") in CLOSED_SET_NAMES and (cls.__name__, name) not in OPEN:
                assert _closed(tp), f"{cls.__name__}.{name} is {tp}, not an enum"
                checked.append(f"{cls.__name__}.{name}")
    # The walk reaches the records, the replies, the events and the system messages.
    for expected in (
        "AgentInfo.state",
        "AgentInfo.backend",
        "AgentInfo.transient",
        "AgentInfo.role",
        "ApprovalInfo.kind",
        "ApprovalInfo.status",
        "ApprovalInfo.decided_by",
        "Hello.role",
        "HelloReply.role",
        "AgentMetaReply.state",
        "HostStatusReply.backend",
        "Spawn.backend",
        "AgentChanged.transient",
        "ApprovalResolved.status",
    ):
        assert expected in checked


def _enum_values(schema: dict[str, Any]) -> list[Any] | None:
    if "enum" in schema:
        return list(schema["enum"])
    for branch in schema.get("anyOf", []):
        if "enum" in branch:
            return list(branch["enum"])
    return None


def test_the_schema_lists_the_values_of_every_closed_set() -> None:
    schema = json_schema()
    objects = [schema["$defs"][name] for name in schema["$defs"]]
    objects += [spec[part] for cmds in schema["sockets"].values() for spec in cmds.values()
                for part in ("request", "reply")]  # fmt: skip
    objects += list(schema["events"].values())
    listed = 0
    for obj in objects:
        for name, prop in obj["properties"].items():
            # ``transient`` of ``wake`` is a flag (boolean); every other one is a set.
            if name in CLOSED_SET_NAMES and prop.get("type") != "boolean":
                values = _enum_values(prop)
                assert values, (name, prop)
                assert all(isinstance(v, str) for v in values)
                listed += 1
    assert listed > 10
    agent = schema["$defs"]["AgentInfo"]["properties"]
    assert _enum_values(agent["state"]) == [
        "registered", "running", "stopped", "crashed", "crash_loop", "destroyed"
    ]  # fmt: skip
    assert _enum_values(agent["transient"]) == [
        "spawning", "starting", "stopping", "restarting", "rebuilding", "destroying"
    ]  # fmt: skip
    assert set(schema["events"]) == {k.value for k in EventKind}


def test_a_value_outside_the_set_is_refused_with_the_allowed_values() -> None:
    with pytest.raises(ProtocolError) as refused:
        AGENT_TABLE.decode(b'{"cmd": "hello", "role": "root", "protocol": 1}')
    assert "must be one of 'harness', 'mcp', 'cli' @ $.role" in str(refused.value)
    with pytest.raises(ProtocolError, match=r"expected a string, got a number @ \$\.role"):
        AGENT_TABLE.decode(b'{"cmd": "hello", "role": 1, "protocol": 1}')
    with pytest.raises(ProtocolError, match="must be one of 'auto', 'nspawn', 'process'"):
        HOST_TABLE.decode(b'{"cmd": "spawn", "name": "a", "backend": "docker"}')
    # A reply is decoded as strictly: a state the client does not know is refused.
    reply = {"protocol": 1, "name": "a", "role": "superuser"}
    with pytest.raises(ProtocolError, match="must be one of 'operator', 'manager', 'agent'"):
        structure(reply, HelloReply, what="reply")


def test_enum_values_travel_as_the_same_strings() -> None:
    hello = AGENT_TABLE.decode(b'{"cmd":"hello","role":"harness","protocol":1}')
    assert hello == AGENT_TABLE.decode(b'{"protocol":1,"role":"harness","cmd":"hello"}')
    raw = {
        "id": 1, "agent": "a", "kind": "apply_commit", "commit_ref": "abcdef0",
        "requested_at": 1.0, "status": "denied", "resolved_at": 2.0, "note": None,
        "description": None, "fetched_sha": None, "decided_by": "operator", "node": None,
    }  # fmt: skip
    info = structure(raw, ApprovalInfo, what="approval")
    assert CONVERTER.unstructure(info) == raw
    assert type(CONVERTER.unstructure(info)["status"]) is str
    assert "AgentInfo" in {c.__name__ for c in _wire_classes()} and attrs.has(AgentInfo)


def test_system_messages_keep_their_body_format() -> None:
    assert (
        system_body(AgentError(agent="a", error="x")) == 'agent_error {"agent": "a", "error": "x"}'
    )
    info = structure(
        {"id": 3, "agent": "a", "kind": "spawn", "commit_ref": None, "status": "approved",
         "note": None},
        ApprovalResolved,
        what="message",
    )  # fmt: skip
    assert system_body(info) == (
        'approval_resolved {"agent": "a", "commit_ref": null, "id": 3, "kind": "spawn", '
        '"note": null, "status": "approved"}'
    )


def test_the_dashboard_listens_to_the_kinds_the_daemon_defines() -> None:
    js = kinds_js()
    listed = re.search(r"EVENT_KINDS = Object\.freeze\(\[(.*)\]\)", js)
    assert listed is not None
    assert re.findall(r"'(\w+)'", listed.group(1)) == [k.value for k in EventKind]
    dashboard = (REPO / "hyperhive/web/static/dashboard.js").read_text()
    assert "import { EVENT_KINDS } from './kinds.js';" in dashboard
    # No hand-kept copy: no event kind is spelled in a list in the page's code.
    assert "'agent_purged'" not in dashboard and "'space_changed'" not in dashboard


def test_the_daemon_publishes_only_typed_events() -> None:
    raw = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "hyperhive").rglob("*.py"))
        if path.name != "events.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if ".publish(" in line
    ]
    assert raw == [], "use EventHub.emit(payload) with a class of protocol.event_payloads"


def test_the_configured_backends_are_the_enum() -> None:
    assert tuple(BackendChoice) == BACKENDS
