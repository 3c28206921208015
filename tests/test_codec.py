"""The strict codec: round trips, and every malformed input gets a readable reason."""

import json

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperhive.errors import ProtocolError
from hyperhive.protocol import (
    AGENT_TABLE,
    HOST_TABLE,
    MANAGER_TABLE,
    REPLIES,
    RequestTable,
    Send,
    encode_error,
    encode_request,
    json_schema,
)
from hyperhive.protocol._bounds import bounds_of
from tests.strategies import ALL_REQUEST_CLASSES, requests

TABLES = (AGENT_TABLE, MANAGER_TABLE, HOST_TABLE)


def table_for(request: object) -> RequestTable:
    for table in TABLES:
        if table.by_cmd.get(type(request).CMD) is type(request):
            return table
    raise AssertionError(f"no socket takes {request!r}")


@settings(suppress_health_check=[HealthCheck.too_slow])  # a loaded machine draws slowly
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
        (b'{"cmd": "cancel_loose_end", "kind": "nonsense", "id": 1}', "must be one of 'question'"),
        (b'{"cmd": "send", "to": null, "body": "x"}', "expected a string, got null"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        # hostile shapes: each would raise or recurse inside json/int without the bounds
        (b'{"cmd":"ack","ids":[' + b"9" * 5000 + b"]}", "number longer than 64 digits"),
        (b'{"cmd":"recv","max":' + b"1" * 100_000 + b"}", "number longer than 64 digits"),
        (b'{"cmd":"recv","max":-' + b"1" * 65 + b"}", "number longer than 64 digits"),
        (b'{"cmd":"recv","x":' + b"[" * 33 + b"]" * 33 + b"}", "nested too deeply"),
        (b'{"cmd":"recv","x":' + b'{"a":' * 40 + b"1" + b"}" * 41, "nested too deeply"),
        (b'{"cmd":"send","to":"bob","body":"\\ud800"}', "lone surrogate"),
        (b'{"cmd":"send","to":"bob","body":"x\\uDFFF"}', "lone surrogate"),
        (b'{"cmd":"send","to":"bob","body":"\\ude00\\ud83d"}', "lone surrogate"),
        (b'{"cmd":"status","\\udc00":1}', "lone surrogate"),
        (b'{"cmd":"status","x":["\\ud800"]}', "lone surrogate"),
        (b'{"cmd":"status","cmd":"status"}', "the key 'cmd' more than once"),
        (b'{"cmd":"send","to":"a","to":"b","body":"x"}', "the key 'to' more than once"),
        (b'{"cmd":"recv","x":{"k":1,"k":2}}', "the key 'k' more than once"),
        (b'{"cmd":"recv","wait_seconds":NaN}', "NaN, which is not a JSON number"),
        (b'{"cmd":"recv","wait_seconds":-Infinity}', "-Infinity, which is not a JSON number"),
        # field bounds, declared on the wire classes
        (b'{"cmd":"recv","wait_seconds":1e400}', "wait_seconds must be between 0 and 180"),
        (b'{"cmd":"recv","wait_seconds":180.5}', "wait_seconds must be between 0 and 180"),
        (b'{"cmd":"recv","wait_seconds":-1}', "wait_seconds must be between 0 and 180"),
        (b'{"cmd":"recv","max":0}', "max must be between 1 and 32 @ $.max"),
        (b'{"cmd":"recent","limit":201}', "limit must be between 1 and 200"),
        (b'{"cmd":"ask","question":"q","ttl_seconds":0}', "ttl_seconds must be between 1 and"),
        (b'{"cmd":"ack","ids":[0]}', "ids item 0 must be between 1 and 9223372036854775807"),
        (b'{"cmd":"ack","ids":[1,9223372036854775808]}', "ids item 1 must be between 1"),
        (b'{"cmd":"ack","ids":[' + b"1," * 1024 + b"1]}", "ids must have at most 1024 items"),
        (b'{"cmd":"answer","id":-5,"answer":"x"}', "id must be between 1 and"),
        (b'{"cmd":"send","to":"bob","body":"x","in_reply_to":0}', "in_reply_to must be between"),
        (b'{"cmd":"send","to":"bob","body":"a\\u0000b"}', "body must not contain NUL"),
        (
            b'{"cmd":"wake","from":"\\u0000","body":"b"}',
            "from must not contain NUL (U+0000) @ $.from",
        ),
        (b'{"cmd":"hello","role":"cli","protocol":' + b"9" * 30 + b"}", "64-bit range"),
    ],
)
def test_malformed_requests(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        AGENT_TABLE.decode(line)
    assert reason in str(info.value)


def test_sockets_expose_the_right_commands() -> None:
    # A lead runs request_spawn and the lifecycle verbs on its agent socket (the daemon
    # refuses them for a plain agent); apply_commit and list_containers stay the manager's.
    assert "request_apply_commit" not in AGENT_TABLE.by_cmd
    assert "list_containers" not in AGENT_TABLE.by_cmd
    assert {"request_spawn", "kill", "start", "restart", "update", "get_logs"} <= set(
        AGENT_TABLE.by_cmd
    )
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


def test_bounds_are_checked_on_every_socket() -> None:
    line = b'{"cmd":"approve","id":' + b"1" * 4301 + b"}"
    with pytest.raises(ProtocolError, match="number longer than 64 digits"):
        HOST_TABLE.decode(line)
    with pytest.raises(ProtocolError, match="id must be between 1 and 9223372036854775807"):
        HOST_TABLE.decode(b'{"cmd":"approve","id":9223372036854775808}')
    with pytest.raises(ProtocolError, match="model must not contain NUL"):
        HOST_TABLE.decode(b'{"cmd":"set_model","name":"a","model":"m\\u0000"}')
    with pytest.raises(ProtocolError, match="lines must be between 1 and 500"):
        MANAGER_TABLE.decode(b'{"cmd":"get_logs","agent":"a","lines":501}')


def test_valid_edges_still_decode() -> None:
    # Brackets, digits and escapes inside strings are text, not structure.
    body = "[" * 100 + "{" * 100 + "9" * 200 + "\\ud800" + "\u0000"[:0]
    line = json.dumps({"cmd": "send", "to": "bob", "body": body}).encode()
    assert AGENT_TABLE.decode(line) == Send("bob", body)
    # A surrogate pair is one valid character; NUL is fine where the field allows it.
    pair = AGENT_TABLE.decode(b'{"cmd":"send","to":"bob","body":"\\ud83d\\ude00"}')
    assert pair == Send("bob", "\U0001f600")
    ask = AGENT_TABLE.decode(b'{"cmd":"ask","question":"a\\u0000b"}')
    assert ask.question == "a\x00b"  # type: ignore[attr-defined]
    # Nesting up to the bound parses (and is then refused for its type, not its depth).
    nested = b'{"cmd":"ack","ids":' + b"[" * 31 + b"]" * 31 + b"}"
    with pytest.raises(ProtocolError, match="item 0: expected an integer"):
        AGENT_TABLE.decode(nested)
    # The bounds themselves are accepted.
    assert AGENT_TABLE.decode(b'{"cmd":"ack","ids":[1,9223372036854775807]}') is not None
    recv = AGENT_TABLE.decode(b'{"cmd":"recv","wait_seconds":180,"max":32}')
    assert recv.wait_seconds == 180.0 and recv.max == 32  # type: ignore[attr-defined]
    number = b"1" * 64  # the longest number literal taken, refused by the range check
    with pytest.raises(ProtocolError, match="max must be between 1 and 32"):
        AGENT_TABLE.decode(b'{"cmd":"recv","max":' + number + b"}")


def test_schema_shows_the_bounds() -> None:
    agent = json_schema()["sockets"]["agent"]
    recv = agent["recv"]["request"]["properties"]
    assert recv["max"] == {"type": "integer", "minimum": 1, "maximum": 32}
    assert recv["wait_seconds"] == {"type": "number", "minimum": 0, "maximum": 180}
    ids = agent["ack"]["request"]["properties"]["ids"]
    assert ids["maxItems"] == 1024
    assert ids["items"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
    reply_to = agent["send"]["request"]["properties"]["in_reply_to"]
    assert {"type": "integer", "minimum": 1, "maximum": 2**63 - 1} in reply_to["anyOf"]
    assert agent["send"]["request"]["properties"]["body"]["pattern"] == "^[^\\u0000]*$"


def test_every_id_field_of_every_request_is_bounded() -> None:
    for cls in ALL_REQUEST_CLASSES:
        for field in attrs.fields(cls):
            if field.name in ("id", "in_reply_to", "ids"):
                bounds = bounds_of(field)
                assert bounds is not None, (cls, field.name)
                assert (bounds.items or bounds).minimum == 1, (cls, field.name)


def test_error_replies_never_fail_to_encode() -> None:
    # A reason quoting client text with a lone surrogate still encodes (escaped).
    line = encode_error("bad \ud800 text")
    assert json.loads(line) == {"ok": False, "error": "bad \ud800 text"}
