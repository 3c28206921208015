"""The strict codec: round trips, and every malformed input gets a readable reason."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperhive.errors import ProtocolError
from hyperhive.protocol import (
    AGENT_TABLE,
    HOST_TABLE,
    MANAGER_TABLE,
    REPLIES,
    RequestTable,
    Send,
    encode_request,
    json_schema,
)
from tests.strategies import ALL_REQUEST_CLASSES, requests

TABLES = (AGENT_TABLE, MANAGER_TABLE, HOST_TABLE)


def table_for(request: object) -> RequestTable:
    for table in TABLES:
        if table.by_cmd.get(type(request).CMD) is type(request):
            return table
    raise AssertionError(f"no socket takes {request!r}")


@given(requests)
def test_every_request_round_trips(request: object) -> None:
    line = encode_request(request)  # type: ignore[arg-type]
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert table_for(request).decode(line[:-1]) == request


@given(st.binary(max_size=300))
def test_garbage_bytes_never_escape_as_other_errors(data: bytes) -> None:
    for table in TABLES:
        try:
            table.decode(data)
        except ProtocolError as exc:
            assert str(exc)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=10,
    )
)
def test_random_json_is_refused_or_decoded(value: object) -> None:
    line = json.dumps(value).encode()
    for table in TABLES:
        try:
            decoded = table.decode(line)
        except ProtocolError as exc:
            assert str(exc)
        else:
            assert isinstance(value, dict) and value["cmd"] == decoded.CMD


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xff\xfe", "not valid UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"to": "bob"}', 'no "cmd"'),
        (b'{"cmd": 5}', '"cmd" must be a string'),
        (b'{"cmd": "launch_missiles"}', "unknown command 'launch_missiles'"),
        (b'{"cmd": "send", "to": "bob"}', "required field missing @ $.body"),
        (b'{"cmd": "send", "to": "bob", "body": "x", "from": "alice"}', "unknown fields: from"),
        (b'{"cmd": "recv", "max": "5"}', "expected an integer, got a string @ $.max"),
        (b'{"cmd": "recv", "ack": 1}', "expected true or false"),
        (b'{"cmd": "recv", "max": true}', "expected an integer, got a boolean"),
        (b'{"cmd": "recv", "max": 1.5}', "expected an integer, got a number"),
        (b'{"cmd": "ack", "ids": [1, "2"]}', "item 1: expected an integer"),
        (b'{"cmd": "ack", "ids": "12"}', "expected an array"),
        (b'{"cmd": "cancel_loose_end", "kind": "reminder", "id": 1}', "must be one of 'question'"),
        (b'{"cmd": "send", "to": null, "body": "x"}', "expected a string, got null"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ],
)
def test_malformed_requests(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        AGENT_TABLE.decode(line)
    assert reason in str(info.value)


def test_sockets_expose_the_right_commands() -> None:
    assert "request_spawn" not in AGENT_TABLE.by_cmd
    assert "request_spawn" in MANAGER_TABLE.by_cmd
    assert "approve" in HOST_TABLE.by_cmd and "approve" not in MANAGER_TABLE.by_cmd
    assert AGENT_TABLE.decode(b'{"cmd":"send","to":"bob","body":"hi"}') == Send("bob", "hi")


def test_schema_covers_every_command() -> None:
    schema = json_schema()
    for table in TABLES:
        commands = schema["sockets"][table.socket_name]
        assert set(commands) == set(table.by_cmd)
        for cmd, cls in table.by_cmd.items():
            request = commands[cmd]["request"]
            assert request["properties"]["cmd"] == {"const": cmd}
            assert request["additionalProperties"] is False
            assert cls in REPLIES
    wake = schema["sockets"]["agent"]["wake"]["request"]
    assert wake["required"] == ["cmd", "from", "body"]
    assert len(ALL_REQUEST_CLASSES) >= 30
