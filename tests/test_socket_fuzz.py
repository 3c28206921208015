"""Fuzzing the three sockets of a real daemon process with invalid requests.

Every line is built to be invalid (hostile JSON shapes, or a request of a real command with
one field of the wrong type, out of its range, missing or unknown), so even host.sock can be
fuzzed without destroying anything. Each must get ``ok: false`` with a reason, the daemon
must stay up, and the same connection must then serve a valid request.
"""

from __future__ import annotations

import json
import socket
import types
import typing
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, Literal, get_args, get_origin

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperhive.client import Client
from hyperhive.config import MAX_JSON_DEPTH, PROTOCOL_VERSION
from hyperhive.protocol import AGENT_TABLE, CONVERTER, HOST_TABLE, MANAGER_TABLE, RequestTable
from hyperhive.protocol._bounds import bounds_of
from hyperhive.protocol._codec import _wire_name
from tests.conftest import SyncDaemon
from tests.strategies import for_attrs

TABLES: dict[str, RequestTable] = {
    "host": HOST_TABLE,
    "manager": MANAGER_TABLE,
    "agent": AGENT_TABLE,
}

# ---------------------------------------------------------------- strategies of invalid lines

#: JSON values by kind, to put where another kind belongs.
VALUES_BY_KIND: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "bool": st.booleans(),
    "int": st.integers(min_value=-(2**70), max_value=2**70),
    "float": st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
    "str": st.text(max_size=10),
    "array": st.lists(st.integers(min_value=0, max_value=9), max_size=3),
    "object": st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
}


def accepted_kinds(tp: Any) -> set[str]:
    """The JSON kinds a field of type ``tp`` takes (a Literal takes only its own values)."""
    origin = get_origin(tp)
    if tp is int:
        return {"int"}
    if tp is float:
        return {"int", "float"}
    if tp is str or (isinstance(tp, type) and issubclass(tp, StrEnum)):
        return {"str"}
    if tp is bool:
        return {"bool"}
    if tp is type(None):
        return {"null"}
    if origin is list:
        return {"array"}
    if origin is Literal:
        return set()
    if origin in (typing.Union, types.UnionType):
        return set().union(*(accepted_kinds(a) for a in get_args(tp)))
    raise TypeError(tp)


def wrong_value(tp: Any) -> st.SearchStrategy[Any]:
    wrong = sorted(set(VALUES_BY_KIND) - accepted_kinds(tp))
    allowed = get_args(tp) if get_origin(tp) is Literal else ()
    return (
        st.sampled_from(wrong)
        .flatmap(lambda kind: VALUES_BY_KIND[kind])
        .filter(lambda v: v not in allowed)
    )


#: Stands for an integer of 10^5 digits in a value; spliced into the line after encoding
#: (beyond any bound, and beyond CPython's own int-to-string limit).
HUGE = "__HUGE_INTEGER__"


def out_of_range(low: float | None, high: float | None, is_int: bool) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = [st.just(HUGE)]
    if low is not None:
        options.append(st.integers(max_value=int(low) - 1, min_value=int(low) - 2**66))
    if high is not None:
        options.append(st.integers(min_value=int(high) + 1, max_value=int(high) + 2**66))
    if not is_int and high is not None:
        options.append(st.floats(min_value=high, exclude_min=True, allow_infinity=False))
    return st.one_of(options)


@st.composite
def bad_field_request(draw: st.DrawFn, table: RequestTable) -> tuple[bytes, str]:
    """A request of a real command of ``table`` with exactly one thing wrong; (line, why)."""
    cmd, cls = draw(st.sampled_from(sorted(table.by_cmd.items())))
    valid = draw(for_attrs(cls))
    obj: dict[str, Any] = {"cmd": cmd, **CONVERTER.unstructure(valid)}
    hints = typing.get_type_hints(cls)
    fields = list(attrs.fields(cls))
    mutations = ["unknown field", "cmd type"]
    if fields:
        mutations += ["wrong type", "missing"]
    if any(bounds_of(f) is not None for f in fields):
        mutations.append("out of range")
    mutation = draw(st.sampled_from(mutations))
    if mutation == "unknown field":
        obj[draw(st.sampled_from(["sender", "principal", "x"]))] = draw(VALUES_BY_KIND["str"])
    elif mutation == "cmd type":
        obj["cmd"] = draw(wrong_value(str))
    elif mutation == "wrong type":
        field = draw(st.sampled_from(fields))
        obj[_wire_name(field.name)] = draw(wrong_value(hints[field.name]))
    elif mutation == "missing":
        required = [f for f in fields if f.default is attrs.NOTHING]
        if required:
            del obj[_wire_name(draw(st.sampled_from(required)).name)]
        else:  # nothing required: put a wrong type in instead
            field = draw(st.sampled_from(fields))
            obj[_wire_name(field.name)] = draw(wrong_value(hints[field.name]))
    else:
        field = draw(st.sampled_from([f for f in fields if bounds_of(f) is not None]))
        bounds = bounds_of(field)
        assert bounds is not None
        wire = _wire_name(field.name)
        if bounds.no_nul:
            obj[wire] = draw(st.text(max_size=5)) + "\x00" + draw(st.text(max_size=5))
        elif bounds.items is not None:  # a list of ids: one id out of range, or too many
            item = bounds.items
            bad = draw(out_of_range(item.minimum, item.maximum, True))
            obj[wire] = [1, bad] if draw(st.booleans()) else list(range(1, 2000))
        else:
            is_int = "float" not in accepted_kinds(hints[field.name])
            obj[wire] = draw(out_of_range(bounds.minimum, bounds.maximum, is_int))
    line = json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()
    huge = draw(st.sampled_from([b"9", b"-9"])) + b"9" * 99_999
    return line.replace(json.dumps(HUGE).encode(), huge), mutation


def _deep(depth: int, open_: bytes, close: bytes) -> bytes:
    return open_ * depth + close * depth


HOSTILE_LINES: list[bytes] = [
    b'{"cmd":"ack","ids":[' + b"7" * 100_000 + b"]}",
    b'{"cmd":"approve","id":' + b"1" * 100_000 + b"}",
    b'{"cmd":"status","x":' + b"1" * 4301 + b".5e" + b"9" * 100 + b"}",
    _deep(100_000, b"[", b"]"),
    b'{"cmd":"status","x":' + _deep(100_000, b"[", b"]") + b"}",
    b'{"cmd":"status","x":' + b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 2),
    b'{"cmd":"send","to":"manager","body":"\\ud800"}',
    b'{"cmd":"send","to":"manager","body":"x\\udfff"}',
    b'{"cmd":"status","\\udc00":1}',
    b'{"cmd":"status","cmd":"status"}',
    b'{"cmd":"send","to":"manager","to":"operator","body":"x"}',
    b'{"cmd":"recv","wait_seconds":NaN}',
    b'{"cmd":"recv","wait_seconds":Infinity}',
    b'{"cmd":"recv","wait_seconds":1e400}',
    b'{"cmd":"send","to":"manager","body":"a\\u0000b"}',
    b'{"cmd":"send","to":"\\u0000","body":"x"}',
    b'{"cmd":"spawn","name":"a\\u0000b"}',
    b'{"cmd":"set_model","name":"alice","model":"m\\u0000"}',
    b'{"cmd":"wake","from":"x\\u0000","body":"b"}',
    b'{"cmd":"logs","name":"alice","lines":' + b"9" * 64 + b"}",
    b'{"cmd":"status\\u0000"}',
    b"\x00\x00\x00",
    b'{"cmd":"get_agent_meta","name":"../../etc/passwd\\u0000"}',
]

hostile = st.one_of(
    # by index: hypothesis would print every line in full on a failure
    st.integers(min_value=0, max_value=len(HOSTILE_LINES) - 1).map(HOSTILE_LINES.__getitem__),
    st.binary(max_size=64).map(lambda b: b.replace(b"\n", b"")),
)


# ---------------------------------------------------------------- the daemon side


def _request(sock: socket.socket, line: bytes) -> dict[str, Any]:
    sock.sendall(line + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        data = sock.recv(65536)
        assert data, f"the daemon closed the connection after {line[:80]!r}"
        reply += data
    obj = json.loads(reply)
    assert isinstance(obj, dict)
    return obj


@pytest.fixture
def fuzz_daemon(sync_daemon: SyncDaemon) -> Iterator[SyncDaemon]:
    """The daemon with one agent, ``alice``, spawned by the operator on host.sock."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sync_daemon.paths.host_socket))
        assert _request(sock, b'{"cmd":"spawn","name":"alice"}')["ok"] is True
    yield sync_daemon
    assert sync_daemon.alive()


def _socket_path(daemon: SyncDaemon, which: str) -> str:
    paths = daemon.paths
    return str(
        {
            "host": paths.host_socket,
            "manager": paths.agent_socket("manager"),
            "agent": paths.agent_socket("alice"),
        }[which]
    )


def _fuzz(daemon: SyncDaemon, which: str, lines: list[bytes]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(_socket_path(daemon, which))
        for line in lines:
            reply = _request(sock, line)
            assert reply["ok"] is False, (which, line[:200], reply)
            assert isinstance(reply["error"], str) and reply["error"], reply
            assert "internal error" not in reply["error"], (which, line[:200], reply)
            # The same connection then serves a valid request.
            assert _request(sock, b'{"cmd":"status"}')["ok"] is True
    assert daemon.alive()


FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("which", ["host", "manager", "agent"])
def test_hostile_json_shapes_get_reasons(fuzz_daemon: SyncDaemon, which: str) -> None:
    _fuzz(fuzz_daemon, which, HOSTILE_LINES)


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("which", ["host", "manager", "agent"])
def test_fuzzed_requests_get_reasons(
    fuzz_daemon: SyncDaemon, which: str, data: st.DataObject
) -> None:
    table = TABLES[which]
    lines = data.draw(
        st.lists(st.one_of(bad_field_request(table).map(lambda lm: lm[0]), hostile), max_size=4)
    )
    _fuzz(fuzz_daemon, which, lines)


async def test_client_sees_the_reason_for_a_field_out_of_range(fuzz_daemon: SyncDaemon) -> None:
    # The codec's reason names the field and its range, for a person to act on.
    async with await Client.connect(_socket_path(fuzz_daemon, "host")) as host:
        reply = await host.request({"cmd": "approve", "id": 2**63})
        assert reply == {
            "ok": False,
            "protocol": PROTOCOL_VERSION,  # every host reply carries it
            "error": (
                "invalid 'approve' request: id must be between 1 and 9223372036854775807 @ $.id"
            ),
        }
