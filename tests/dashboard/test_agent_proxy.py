"""The dashboard's ``/agent/<name>/`` proxy against an agent UI socket that misbehaves.

An agent is root in its container and can put any server on its UI socket; here a small
h11 server on the real socket path plays that part. The proxy must not pass on what could
run at the dashboard's origin, must not hand the operator's credentials on, must bound what
it reads and waits for, and must close the upstream when the browser leaves.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import h11
import pytest
import trio
from starlette.requests import Request

from hyperhive.config import Paths
from hyperhive.names import InvalidAgentName
from hyperhive.runtime import agent_ui
from hyperhive.supervisor import Daemon, Hive
from hyperhive.web._proxy import (
    MAX_REQUEST_BODY,
    BodyTooLarge,
    UpstreamUnavailable,
    agent_name,
    read_body,
    relayed_headers,
    upstream_headers,
    upstream_target,
)
from hyperhive_harness.page import render_page

from .conftest import Response, base_url, http, session_cookie

# ---------------------------------------------------------------- decisions (sans-IO)


@pytest.mark.parametrize(
    ("path", "query", "target"),
    [
        ("api/state", b"", b"/api/state"),
        ("api/login/start", b"", b"/api/login/start"),
        ("events/stream", b"since=12", b"/events/stream?since=12"),
        ("events/history", b"limit=3", b"/events/history?limit=3"),
        ("", b"", None),
        ("api", b"", None),
        ("static/index.html", b"", None),
        ("api/../../x", b"", None),
        ("api//state", b"", None),
        ("api/state/", b"", None),
        ("api/st ate", b"", None),
        ("api/state", b"a=b#frag", None),
        ("api/state", b"a=<b>", None),
    ],
)
def test_only_the_uis_own_paths_are_forwarded(
    path: str, query: bytes, target: bytes | None
) -> None:
    assert upstream_target(path, query) == target


def test_ui_sockets_sit_beside_the_agent_sockets() -> None:
    paths = Paths(state_dir=Path("/s"), run_dir=Path("/r"))
    assert paths.ui_socket("alice") == Path("/r/agents/alice/ui.sock")
    assert paths.ui_socket("manager") == Path("/r/manager/ui.sock")
    for bad in ("../x", "Alice", "operator", "a/b", ""):
        assert agent_name(bad) is None
        with pytest.raises(InvalidAgentName):
            paths.ui_socket(bad)


def test_the_operators_credentials_stay_in_the_daemon() -> None:
    sent = upstream_headers(
        [
            ("cookie", "hyperhive_session=secret"),
            ("x-csrf-token", "secret"),
            ("authorization", "Bearer secret"),
            ("origin", "http://127.0.0.1:7000"),
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
            ("last-event-id", "7"),
        ],
        b"{}",
    )
    assert dict(sent) == {
        "host": "localhost",
        "connection": "close",
        "content-type": "application/json",
        "accept": "text/event-stream",
        "last-event-id": "7",
        "content-length": "2",
    }


def test_only_inert_responses_pass() -> None:
    ok = relayed_headers(
        200,
        [(b"Content-Type", b"application/json"), (b"Set-Cookie", b"a=b"), (b"Location", b"/")],
    )
    assert ok["content-type"] == "application/json"
    assert "set-cookie" not in ok and "location" not in ok
    assert "sandbox" in ok["content-security-policy"] and ok["x-content-type-options"] == "nosniff"
    assert ok["cache-control"] == "no-store"
    assert relayed_headers(200, [(b"content-type", b"text/event-stream")])["x-accel-buffering"]
    for status, ctype in [
        (200, b"text/html"),
        (200, b"image/svg+xml"),
        (200, b"application/javascript"),
        (200, b""),
        (101, b"application/json"),
    ]:
        with pytest.raises(UpstreamUnavailable):
            relayed_headers(status, [(b"content-type", ctype)] if ctype else [])


# ---------------------------------------------------------------- a hostile agent UI


@attrs.define
class FakeUi:
    """An HTTP server on an agent's UI socket, answering as scripted."""

    requests: list[tuple[str, str, dict[str, str], int]] = attrs.Factory(list)
    stream_closed: trio.Event = attrs.Factory(trio.Event)
    slow_closed: trio.Event = attrs.Factory(trio.Event)

    async def serve(self, path: Path, *, task_status: trio.TaskStatus[None]) -> None:
        sock = trio.socket.socket(socket.AF_UNIX)
        await sock.bind(str(path))
        sock.listen(16)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self.handle, [trio.SocketListener(sock)])
            task_status.started()

    async def handle(self, stream: trio.SocketStream) -> None:
        # The proxy hangs up whenever it is done with an answer: that is not a failure here.
        with contextlib.suppress(trio.BrokenResourceError):
            await self._handle(stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        assert request is not None
        target = request.target.decode()
        headers = {k.decode(): v.decode() for k, v in request.headers}
        self.requests.append((request.method.decode(), target, headers, size))

        async def answer(ctype: str, body: bytes, *extra: tuple[str, str]) -> None:
            head = [("content-type", ctype), ("content-length", str(len(body))), *extra]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=head)) or b"")
            await stream.send_all(conn.send(h11.Data(data=body)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

        path = target.split("?", 1)[0]
        if path == "/api/state":
            await answer(
                "application/json", b'{"label": "alice"}', ("set-cookie", "hyperhive_session=x")
            )
        elif path == "/api/evil":
            await answer("text/html", b"<script>alert(document.cookie)</script>")
        elif path == "/events/stream":
            head = [("content-type", "text/event-stream")]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=head)) or b"")
            await stream.send_all(conn.send(h11.Data(data=b"data: one\n\n")) or b"")
            while await stream.receive_some(65536):
                pass
            self.stream_closed.set()
        elif path == "/api/slow":
            while await stream.receive_some(65536):
                pass
            self.slow_closed.set()
        else:
            await answer("text/html", b"<h1>an agent's own page</h1><script>steal()</script>")


@pytest.fixture
async def fake_ui(hive: Hive, nursery: trio.Nursery) -> AsyncIterator[FakeUi]:
    await hive.spawn("alice")
    fake = FakeUi()
    await nursery.start(fake.serve, hive.config.paths.ui_socket("alice"))
    yield fake


async def get(inproc: Daemon, path: str, **headers: str) -> Response:
    return await http(
        base_url(inproc), "GET", path, headers={"cookie": session_cookie(inproc), **headers}
    )


async def post(inproc: Daemon, path: str, body: bytes) -> Response:
    assert inproc.auth is not None
    headers = {
        "cookie": session_cookie(inproc),
        "x-csrf-token": inproc.auth.csrf,
        "content-type": "application/json",
    }
    return await http(base_url(inproc), "POST", path, headers=headers, body=body)


async def test_the_page_is_the_daemons_own_never_the_agents(
    hive: Hive, inproc: Daemon, fake_ui: FakeUi
) -> None:
    assert inproc.auth is not None
    page = await get(inproc, "/agent/alice/")
    assert page.status == 200
    assert page.body == render_page(inproc.auth.csrf)[0]
    assert b"steal()" not in page.body
    csp = page.header("content-security-policy") or ""
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("style-src")[0]
    # The agent's socket was only probed for life: no request reached it.
    assert fake_ui.requests == []


async def test_forwarded_requests_carry_no_credentials_and_answers_stay_inert(
    inproc: Daemon, fake_ui: FakeUi
) -> None:
    state = await get(inproc, "/agent/alice/api/state?x=1", **{"last-event-id": "3"})
    assert state.status == 200 and state.json() == {"label": "alice"}
    assert state.header("set-cookie") is None
    assert "sandbox" in (state.header("content-security-policy") or "")
    assert state.header("x-content-type-options") == "nosniff"
    [(method, target, headers, _)] = fake_ui.requests
    assert (method, target) == ("GET", "/api/state?x=1")
    assert headers["last-event-id"] == "3" and headers["host"] == "localhost"
    assert not {"cookie", "x-csrf-token", "origin", "authorization"} & set(headers)

    # Something a browser could run is not passed on at all.
    evil = await get(inproc, "/agent/alice/api/evil")
    assert evil.status == 502 and b"alert" not in evil.body
    assert "content type 'text/html'" in evil.json()["error"]


async def test_request_bodies_are_bounded(hive: Hive, inproc: Daemon, fake_ui: FakeUi) -> None:
    # A declared length over the bound is refused before any of the body is read.
    assert inproc.auth is not None
    netloc = base_url(inproc).split("//", 1)[1]
    host, port = netloc.rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        conn = h11.Connection(h11.CLIENT)
        headers = [
            ("host", netloc),
            ("cookie", session_cookie(inproc)),
            ("x-csrf-token", inproc.auth.csrf),
            ("content-type", "application/json"),
            ("content-length", str(MAX_REQUEST_BODY + 1)),
        ]
        request = h11.Request(method="POST", target="/agent/alice/api/send", headers=headers)
        await stream.send_all(conn.send(request) or b"")
        with trio.fail_after(10):
            while (event := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
        assert isinstance(event, h11.Response) and event.status_code == 413
    fine = await post(inproc, "/agent/alice/api/state", json.dumps({"body": "hi"}).encode())
    assert fine.status == 200
    assert [(m, t, n) for m, t, _, n in fake_ui.requests] == [("POST", "/api/state", 14)]


async def test_an_undeclared_body_is_read_only_up_to_the_bound() -> None:
    chunk = b"x" * 65536
    handed = 0

    async def receive() -> dict[str, object]:
        nonlocal handed
        handed += 1
        return {"type": "http.request", "body": chunk, "more_body": True}  # never ends

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    with pytest.raises(BodyTooLarge):
        await read_body(request)
    assert handed == MAX_REQUEST_BODY // len(chunk) + 1


async def test_streams_pass_as_they_come_and_end_upstream_when_the_browser_leaves(
    inproc: Daemon, fake_ui: FakeUi
) -> None:
    parts = base_url(inproc).split("//", 1)[1]
    host, port = parts.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h11.Connection(h11.CLIENT)
    headers = [("host", parts), ("cookie", session_cookie(inproc)), ("accept", "text/event-stream")]
    request = h11.Request(method="GET", target="/agent/alice/events/stream", headers=headers)
    await stream.send_all(conn.send(request) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
    got = b""
    status = 0
    with trio.fail_after(10):
        # The first frame arrives while the upstream keeps its stream open.
        while b"data: one\n\n" not in got:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                assert dict(event.headers)[b"content-type"] == b"text/event-stream"
            elif isinstance(event, h11.Data):
                got += bytes(event.data)
    assert status == 200 and not fake_ui.stream_closed.is_set()
    await stream.aclose()
    with trio.fail_after(10):
        await fake_ui.stream_closed.wait()


async def test_an_upstream_that_does_not_answer_is_given_up(
    inproc: Daemon, fake_ui: FakeUi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_ui, "HEAD_TIMEOUT", 0.5)
    slow = await get(inproc, "/agent/alice/api/slow")
    assert slow.status == 502 and "no answer" in slow.json()["error"]
    with trio.fail_after(10):
        await fake_ui.slow_closed.wait()


async def test_no_ui_up_is_a_readable_502(hive: Hive, inproc: Daemon) -> None:
    await hive.spawn("alice")
    path = hive.config.paths.ui_socket("alice")
    for state in ("absent", "stale"):
        if state == "stale":  # a socket file nothing listens on any more
            with socket.socket(socket.AF_UNIX) as dead:
                dead.bind(str(path))
        page = await get(inproc, "/agent/alice/")
        assert page.status == 502 and (page.header("content-type") or "").startswith("text/html")
        assert b"alice's UI is not up" in page.body and b'href="/"' in page.body
        api = await get(inproc, "/agent/alice/api/state")
        assert api.status == 502 and "alice's UI is not up" in api.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/agent/Alice/", 404),
        ("GET", "/agent/operator/api/state", 404),
        ("GET", "/agent/alice/static/x.js", 404),
        ("GET", "/agent/alice/api", 404),
        ("GET", "/agent/alice", 308),
        ("PUT", "/agent/alice/api/state", 405),
    ],
)
async def test_names_and_paths_are_checked_first(
    inproc: Daemon, method: str, path: str, status: int
) -> None:
    reply = await http(base_url(inproc), method, path, headers={"cookie": session_cookie(inproc)})
    assert reply.status == status


async def test_nothing_without_the_login_and_no_post_without_the_token(
    inproc: Daemon, fake_ui: FakeUi
) -> None:
    for path in ("/agent/alice", "/agent/alice/", "/agent/alice/api/state"):
        assert (await http(base_url(inproc), "GET", path)).status == 401
    no_token = await http(
        base_url(inproc),
        "POST",
        "/agent/alice/api/state",
        headers={"cookie": session_cookie(inproc), "content-type": "application/json"},
        body=b"{}",
    )
    assert no_token.status == 403
    assert fake_ui.requests == []
