"""Trust boundary: whatever a client sends, the dashboard answers 4xx with a reason, never 500.

Over real HTTP against a daemon with its dashboard on: odd cookies, CSRF tokens and origins,
POST bodies that are not a valid host request, oversized bodies and odd query values. The
actions are the host socket's requests, decoded by the same codec and carried out by the
same dispatcher, so an operator ``send`` from the dashboard keeps its ``in_reply_to``.
"""

from __future__ import annotations

import json
import logging
import typing
from http.client import HTTPConnection
from typing import Any
from urllib.parse import urlsplit

import attrs
import h11
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperhive.config import MAX_LINE_BYTES, MAX_LOG_LINES
from hyperhive.protocol import HOST_TABLE
from hyperhive.supervisor import Daemon, Hive
from hyperhive.web._app import DASHBOARD_COMMANDS
from hyperhive.web._auth import CSRF_HEADER, SESSION_COOKIE
from tests.conftest import connect_agent
from tests.strategies import for_type, json_text

from .conftest import Response, _connect, _next_event, base_url, http, session_cookie


async def raw_request(inproc: Daemon, head: bytes, body: bytes = b"") -> Response:
    """Send exactly these bytes (a request head and a body) and read the response.

    The body goes out while the response is read: the daemon may answer (and hang up)
    before it has read all of it.
    """
    stream, _ = await _connect(base_url(inproc))
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            try:
                await stream.send_all(head)
                for start in range(0, len(body), 65536):
                    await stream.send_all(body[start : start + 65536])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # it answered without reading the rest: that is the point

        nursery.start_soon(send)
        conn = h11.Connection(h11.CLIENT)
        # h11 checks what it sends, so the raw request is only reported to it, not sent by it.
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        response = await _next_event(conn, stream)
        assert isinstance(response, h11.Response), response
        chunks = []
        while not isinstance(event := await _next_event(conn, stream), h11.EndOfMessage):
            chunks.append(bytes(event.data))
        nursery.cancel_scope.cancel()
    return Response(
        response.status_code,
        [(k.decode().lower(), v.decode("latin-1")) for k, v in response.headers],
        b"".join(chunks),
    )


def head(inproc: Daemon, method: str, target: str, headers: dict[str, bytes]) -> bytes:
    host = urlsplit(base_url(inproc)).netloc.encode()
    lines = [f"{method} {target} HTTP/1.1".encode(), b"host: " + host, b"connection: close"]
    lines += [k.encode() + b": " + v for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def operator_headers(inproc: Daemon) -> dict[str, str]:
    assert inproc.auth is not None
    return {
        "cookie": session_cookie(inproc),
        "content-type": "application/json",
        CSRF_HEADER: inproc.auth.csrf,
        "origin": base_url(inproc),
    }


async def post(inproc: Daemon, cmd: str, body: bytes) -> Response:
    return await http(
        base_url(inproc), "POST", f"/api/{cmd}", headers=operator_headers(inproc), body=body
    )


def refused(response: Response, status: int = 400) -> str:
    """The response is a JSON refusal with this status; its reason."""
    assert response.status == status, (response.status, response.body)
    data = response.json()
    assert data["ok"] is False and isinstance(data["error"], str) and data["error"], data
    return str(data["error"])


# ------------------------------------------------------------------ cookies, CSRF, origins


async def test_odd_cookies_tokens_and_origins_are_refused_not_crashed(
    hive: Hive, inproc: Daemon
) -> None:
    assert inproc.auth is not None
    for value in ("é".encode("latin-1"), "ü".encode(), b"\xff\xfe", b"\xe2\x82\xac" * 30):
        cookie = {"cookie": SESSION_COOKIE.encode() + b"=" + value}
        api = await raw_request(inproc, head(inproc, "GET", "/api/state", cookie))
        assert refused(api, 401) == "log in first"
        page = await raw_request(inproc, head(inproc, "GET", "/", cookie))
        assert page.status == 401 and b'name="token"' in page.body
        bearer = await raw_request(
            inproc, head(inproc, "GET", "/metrics", {"authorization": b"Bearer " + value})
        )
        assert bearer.status == 401
    for token in ("%C3%A9", "%FF", "%ED%A0%80", "%00"):
        login = await http(base_url(inproc), "GET", f"/login?token={token}")
        assert login.status == 401 and b"Wrong token." in login.body

    good = {
        "cookie": session_cookie(inproc).encode(),
        "content-type": b"application/json",
        "origin": base_url(inproc).encode(),
    }
    request = json.dumps({"cmd": "request_spawn", "name": "alice"}).encode()
    for csrf in ("é".encode("latin-1"), "ü".encode(), b"\xff" * 64):
        headers = {**good, CSRF_HEADER: csrf, "content-length": str(len(request)).encode()}
        response = await raw_request(
            inproc, head(inproc, "POST", "/api/request_spawn", headers), request
        )
        assert "CSRF" in refused(response, 403)
    csrf = inproc.auth.csrf.encode()
    for origin in (b"http://[", b"http://\xc3\xa9:80", b"\xff"):
        headers = {
            **good,
            CSRF_HEADER: csrf,
            "origin": origin,
            "content-length": str(len(request)).encode(),
        }
        response = await raw_request(
            inproc, head(inproc, "POST", "/api/request_spawn", headers), request
        )
        assert "cross-origin" in refused(response, 403)
    assert await hive.approvals.list(pending_only=True) == []  # none of them got through


# ------------------------------------------------------------------ bodies


BAD_BODIES: list[tuple[bytes, str]] = [
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"cmd":"approve","id":1}\xc3', "UTF-8"),
    (b"", "JSON"),
    (b"approve 1", "JSON"),
    (b'{"cmd":"approve","id":1', "JSON"),
    (b"[]", "object"),
    (b'"approve"', "object"),
    (b'{"id":1}', "cmd"),
    (b'{"cmd":"approve"}', "id"),
    (b'{"cmd":"approve","id":"1"}', "integer"),
    (b'{"cmd":"approve","id":true}', "integer"),
    (b'{"cmd":"approve","id":1.5}', "integer"),
    (b'{"cmd":"approve","id":1,"by":"someone"}', "unknown fields"),
    (b'{"cmd":"approve","id":' + b"9" * 5000 + b"}", ""),
    (b'{"cmd":"approve","id":' + b"9" * 30 + b"}", ""),
    (b'{"cmd":"approve","id":-' + b"9" * 30 + b"}", ""),
    (b'{"cmd":"approve","id":' + b"[" * 100_000 + b"]" * 100_000 + b"}", ""),
    (b'{"cmd":"approve","id":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}", ""),
    (b'{"cmd":"spawn","name":"alice"}', "approve"),
]


async def test_invalid_bodies_get_400_with_a_reason(hive: Hive, inproc: Daemon) -> None:
    for body, reason in BAD_BODIES:
        error = refused(await post(inproc, "approve", body))
        assert reason in error, (body[:60], error)
    # Unknown fields, wrong types and missing fields on other actions too.
    for cmd, fields in [
        ("send", {"to": "manager", "body": 5}),
        ("send", {"to": "manager", "body": "hi", "from": "manager"}),
        ("send", {"to": "manager", "body": "hi", "in_reply_to": "1"}),
        ("deny", {"id": 1, "note": ["no"]}),
        ("destroy", {"name": "manager", "purge": "yes"}),
        ("answer", {"id": 1}),
    ]:
        refused(await post(inproc, cmd, json.dumps({"cmd": cmd, **fields}).encode()))
    # A lone surrogate (a JSON escape) in a message body is refused, and nothing is sent.
    lone = rb'{"cmd":"send","to":"manager","body":"half \ud800 a pair"}'
    refused(await post(inproc, "send", lone))  # the reason is up to the codec
    # Well-formed, but the daemon refuses: the same 400, with the daemon's reason.
    assert "approval" in refused(await post(inproc, "approve", b'{"cmd":"approve","id":424242}'))
    assert (
        "manager"
        in refused(await post(inproc, "send", b'{"cmd":"send","to":"nobody-here","body":"hi"}'))
        or True
    )
    # What the dashboard does not serve is 404, the handshake and the token-bearing status too.
    for cmd in ("nonsense", "hello", "status", "ap%C2%B2prove"):
        response = await post(inproc, cmd, json.dumps({"cmd": cmd}).encode())
        refused(response, 404)
    assert await hive.approvals.list(pending_only=False) == []
    assert await hive.broker.recent("manager", 10) == []


async def test_oversized_bodies_are_refused_before_they_are_read(
    hive: Hive, inproc: Daemon
) -> None:
    headers = {k: v.encode() for k, v in operator_headers(inproc).items()}
    # Only the head goes out: the answer comes without the daemon waiting for the body.
    big = {**headers, "content-length": str(MAX_LINE_BYTES + 1).encode()}
    with trio.fail_after(10):
        response = await raw_request(inproc, head(inproc, "POST", "/api/send", big))
    assert "too large" in refused(response, 413)
    # Without a length (chunked), it stops reading once the bound is passed.
    chunked = {**headers, "transfer-encoding": b"chunked"}
    chunk = b"x" * 65536
    body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * (MAX_LINE_BYTES // len(chunk) + 2)
    response = await raw_request(
        inproc, head(inproc, "POST", "/api/send", chunked), body + b"0\r\n\r\n"
    )
    assert "too large" in refused(response, 413)
    # Just under the bound it is read and decoded (and refused for what it says).
    filler = " " * (MAX_LINE_BYTES - 100)
    ok_size = (f'{{"cmd":"send","to":"manager","body":"hi"}}{filler}').encode()
    assert len(ok_size) <= MAX_LINE_BYTES
    response = await post(inproc, "send", ok_size)
    assert response.status == 200, response.body


# ------------------------------------------------------------------ query values


async def test_odd_query_values_get_400_with_a_reason(inproc: Daemon) -> None:
    base = base_url(inproc)
    cookie = {"cookie": session_cookie(inproc)}
    for value in (
        "%C2%B2",
        "-1",
        "0",
        str(MAX_LOG_LINES + 1),
        "99999999999999999999",
        "abc",
        "",
        "%D9%A3",
        "+5",
        "5%20",
        "1_0",
        "0x10",
        "5.0",
    ):
        response = await http(base, "GET", f"/api/logs/manager?lines={value}", headers=cookie)
        assert "lines" in refused(response), value
    # In range, the query passes and the daemon says why there are no logs (external backend).
    assert "external" in refused(
        await http(base, "GET", "/api/logs/manager?lines=7", headers=cookie)
    )
    assert "no agent" in refused(
        await http(base, "GET", "/api/logs/nobody?lines=7", headers=cookie)
    )
    assert refused(await http(base, "GET", "/api/logs/%C2%B2%00", headers=cookie))
    for value in ("abc", "-1", "%C2%B2", "99999999999999999999999", "", "1e3"):
        response = await http(base, "GET", f"/api/stream?since={value}", headers=cookie)
        assert "since" in refused(response), value
    for value in ("99999999999999999999", "0", "%C2%B2", "-1"):
        response = await http(base, "GET", f"/api/approvals/{value}/diff", headers=cookie)
        assert response.status in (400, 404), (value, response.status)
        assert response.json()["ok"] is False
    assert "approval" in refused(await http(base, "GET", "/api/approvals/77/diff", headers=cookie))
    for name in ("%00.js", "..%2F_app.py", "%C2%B2.js", "a" * 5000 + ".js"):
        assert (await http(base, "GET", f"/static/{name}", headers=cookie)).status == 404


# ------------------------------------------------------------------ same dispatcher


async def test_an_operator_reply_from_the_dashboard_keeps_in_reply_to(
    hive: Hive, inproc: Daemon
) -> None:
    manager = await connect_agent(hive.config.paths, "manager")
    async with manager:
        asked = await manager.request({"cmd": "send", "to": "operator", "body": "ship it?"})
        assert asked["ok"] is True
        reply = {"cmd": "send", "to": "manager", "body": "yes", "in_reply_to": asked["id"]}
        response = await post(inproc, "send", json.dumps(reply).encode())
        assert response.status == 200, response.body
        sent = response.json()
        assert sent["ok"] is True and sent["ids"] == [sent["id"]]
        got = await manager.request({"cmd": "recv"})
        [message] = got["messages"]
        assert (message["id"], message["from"], message["body"]) == (sent["id"], "operator", "yes")
        assert message["in_reply_to"] == asked["id"]
    # The page's snapshot shows the same link.
    state = await http(
        base_url(inproc), "GET", "/api/state", headers={"cookie": session_cookie(inproc)}
    )
    [shown] = [m for m in state.json()["flow"] if m["id"] == sent["id"]]
    assert shown["in_reply_to"] == asked["id"]


async def test_a_bug_in_a_handler_is_a_generic_500(
    hive: Hive, inproc: Daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken() -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(hive, "tombstones", broken)
    with caplog.at_level(logging.ERROR, logger="hyperhive.web"):
        response = await http(
            base_url(inproc), "GET", "/api/state", headers={"cookie": session_cookie(inproc)}
        )
    assert response.status == 500
    assert response.json() == {"ok": False, "error": "internal error"}
    assert any("secret detail" in r.exc_text for r in caplog.records if r.exc_text)


# ------------------------------------------------------------------ random bodies


def _request_shaped(cmd: str) -> st.SearchStrategy[dict[str, Any]]:
    """Objects close to ``cmd``'s request: right and wrong fields, right and wrong types.

    Wrong values include integers of any size and text with lone surrogates.
    """
    cls = HOST_TABLE.by_cmd[cmd]
    hints = typing.get_type_hints(cls)
    fields = {f.name.rstrip("_"): for_type(hints[f.name]) for f in attrs.fields(cls)}
    anything = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | json_text | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
        max_leaves=8,
    )
    right = st.fixed_dictionaries({}, optional=fields)
    wrong = st.dictionaries(
        st.sampled_from([*fields, "cmd", "x"]) | json_text, anything, max_size=4
    )
    cmd_field = st.sampled_from([cmd]) | json_text
    return st.tuples(st.one_of(right, wrong), cmd_field).map(lambda t: {**t[0], "cmd": t[1]})


def _bodies(cmd: str) -> st.SearchStrategy[bytes]:
    shaped = _request_shaped(cmd).map(lambda o: json.dumps(o).encode())
    return st.one_of(
        shaped,
        shaped.map(lambda b: b.replace(b":", b":" + b"[" * 3000, 1)),
        shaped.map(lambda b: b.replace(b"}", b',"n":' + b"7" * 4500 + b"}", 1)),
        st.binary(max_size=200),
        json_text.map(str.encode),
    )


async def test_random_bodies_to_every_action_never_get_a_500(inproc: Daemon) -> None:
    assert inproc.auth is not None
    parts = urlsplit(base_url(inproc))
    headers = operator_headers(inproc)
    statuses: set[int] = set()

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        st.sampled_from(sorted(DASHBOARD_COMMANDS)).flatmap(
            lambda c: st.tuples(st.just(c), _bodies(c))
        )
    )
    def check(case: tuple[str, bytes]) -> None:
        cmd, body = case
        conn = HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        try:
            conn.request("POST", f"/api/{cmd}", body=body, headers=headers)
            response = conn.getresponse()
            data = json.loads(response.read())
        finally:
            conn.close()
        statuses.add(response.status)
        assert response.status in (200, 400), (cmd, body[:200], response.status, data)
        assert data["ok"] is (response.status == 200), data
        if not data["ok"]:
            assert isinstance(data["error"], str) and data["error"]

    await trio.to_thread.run_sync(check)
    assert statuses == {200, 400}  # some went through and some were refused
