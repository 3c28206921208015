"""The codec's two JSON parsers read every line the same way.

Request lines are parsed by ``orjson`` when it is sure to agree with the standard library's
strict parse (with its duplicate-key, NaN and surrogate checks), and by the latter otherwise.
These tests draw JSON texts with the shapes where the two differ (duplicate keys, ``:`` in
strings, ``\\u`` escapes, integers beyond 64 bits, NaN/Infinity, deep nesting, invalid UTF-8)
and check that :func:`load_json_line` gives exactly what the reference parse gives: the same
value with the same types, or the same refusal.
"""

import json
import math

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperhive.errors import ProtocolError
from hyperhive.protocol import AGENT_TABLE, Recv, Send, Status, encode_reply
from hyperhive.protocol._codec import _load_checked, load_json_line
from hyperhive.protocol._messages import SendReply, StatusReply

_TEXT = st.text(alphabet=st.sampled_from('ab:"\\\n\x00\x1fé😀\ud800\udc00{}[], '), max_size=8)
_NUMBERS = st.sampled_from(
    [
        "0",
        "-0",
        "-0.0",
        "1",
        "1.5",
        "1e2",
        "1E-7",
        "1e400",
        "-1e400",
        "NaN",
        "Infinity",
        "-Infinity",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "18446744073709551616",
        "1" * 30,
        "1" * 70,
        "0.1234567890123456789",
        "2.5e-324",
        "01",
    ]
)


def _string(text: str, ascii_only: bool) -> str:
    return json.dumps(text, ensure_ascii=ascii_only)


@st.composite
def _json_text(draw: st.DrawFn, depth: int = 0) -> str:
    """A JSON-like text: objects may repeat keys, strings may hold any of the odd characters."""
    kinds = ["null", "bool", "number", "string"] + (["array", "object"] if depth < 4 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "null":
        return "null"
    if kind == "bool":
        return draw(st.sampled_from(["true", "false"]))
    if kind == "number":
        return draw(_NUMBERS)
    if kind == "string":
        return _string(draw(_TEXT), draw(st.booleans()))
    if kind == "array":
        items = draw(st.lists(_json_text(depth + 1), max_size=3))
        return "[" + ",".join(items) + "]"
    keys = draw(st.lists(_TEXT, max_size=3))
    if keys and draw(st.booleans()):
        keys.append(draw(st.sampled_from(keys)))  # a duplicate key
    ascii_only = draw(st.booleans())
    pairs = [_string(k, ascii_only) + draw(st.sampled_from([":", " : "])) for k in keys]
    return "{" + ",".join(p + draw(_json_text(depth + 1)) for p in pairs) + "}"


def _outcome(parse: object, line: bytes) -> tuple[str, object]:
    try:
        return "value", parse(line)  # type: ignore[operator]
    except ProtocolError as exc:
        return "refused", str(exc)


def _typed(value: object) -> object:
    """The value with each scalar's type attached: 1, 1.0 and True must not compare equal."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, float) and math.copysign(1.0, value) < 0 and value == 0:
        return ("float", "-0.0")
    return (type(value).__name__, value)


def _same_reading(line: bytes) -> None:
    fast = _outcome(lambda b: load_json_line(b, what="request"), line)
    reference = _outcome(lambda b: _load_checked(b, "request"), line)
    assert fast[0] == reference[0], (line, fast, reference)
    if fast[0] == "value":
        assert _typed(fast[1]) == _typed(reference[1]), line
    else:
        assert fast[1] == reference[1], line


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=400)
@given(_json_text(), st.sampled_from(["", " ", "\t"]))
def test_both_parsers_read_every_text_the_same(text: str, pad: str) -> None:
    _same_reading((pad + text + pad).encode("utf-8", "surrogatepass"))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=60))
def test_both_parsers_read_any_bytes_the_same(data: bytes) -> None:
    _same_reading(data)


@pytest.mark.parametrize(
    "line",
    [
        b'{"cmd":"send","to":"a","to":"b","body":"x"}',
        b'{"cmd":"send","to":"a","body":"x:y","to":"b"}',
        b'{"cmd":"send","to":"a:","body":"x","to":"b"}',
        b'{"cmd":"send","to":"a","body":"\\u003a","to":"b"}',
        b'{"a":{"k":1,"k":2}}',
        b'[{"k":1,"k":":"}]',
        b'{"cmd":"ack","ids":[18446744073709551616]}',
        b'{"cmd":"ack","ids":[-9223372036854775809]}',
        b'{"cmd":"recv","wait_seconds":NaN}',
        b'{"cmd":"recv","wait_seconds":1e400}',
        b'{"cmd":"send","to":"bob","body":"\\ud800"}',
        b'{"cmd":"send","to":"bob","body":"\xed\xa0\x80"}',
        b"\xef\xbb\xbf{}",
    ],
)
def test_the_shapes_where_the_parsers_differ(line: bytes) -> None:
    _same_reading(line)


def test_a_duplicate_key_is_refused_even_with_colons_elsewhere() -> None:
    for line in (
        b'{"cmd":"send","to":"a","body":"x:y","to":"b"}',
        b'{"cmd":"send","to":"a","body":"\\u003a","to":"b"}',
    ):
        with pytest.raises(ProtocolError, match="the key 'to' more than once"):
            AGENT_TABLE.decode(line)


def test_common_lines_decode() -> None:
    assert AGENT_TABLE.decode(b'{"cmd":"send","to":"bob","body":"a: b"}') == Send("bob", "a: b")
    assert AGENT_TABLE.decode(b' {"cmd" : "status"} ') == Status()
    recv = AGENT_TABLE.decode(b'{"cmd":"recv","wait_seconds":1.5,"max":3}')
    assert recv == Recv(wait_seconds=1.5, max=3)
    with pytest.raises(ProtocolError, match="invalid 'recv' request: expected a number"):
        AGENT_TABLE.decode(b'{"cmd":"recv","wait_seconds":"1"}')


def test_replies_hold_what_the_standard_library_would_write() -> None:
    for reply, protocol in ((StatusReply(unread=3), None), (SendReply(id=7, ids=[7]), 1)):
        line = encode_reply(reply, protocol=protocol)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        envelope = {"ok": True} if protocol is None else {"ok": True, "protocol": protocol}
        expected = json.dumps({**envelope, **attrs.asdict(reply)}, separators=(",", ":"))
        assert line == expected.encode() + b"\n"


def test_a_reply_orjson_refuses_still_goes_out() -> None:
    line = encode_reply(SendReply(id=1, ids=[2**64]))  # beyond orjson's 64 bits
    assert json.loads(line) == {"ok": True, "id": 1, "ids": [2**64]}
