"""Dashboard fixtures: a daemon with its dashboard on, a real Chromium, plain HTTP and SSE.

Playwright's sync API must not run inside the trio loop, and its objects belong to the
thread that made them; so one dedicated thread drives Chromium and the tests hand it
closures (``await ui(lambda page: ...)``) while the daemon keeps running in the test's loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import h11
import pytest
import trio

from hyperhive.config import Config
from hyperhive.supervisor import Daemon, Hive, open_daemon
from hyperhive.web._auth import SESSION_COOKIE
from tests.conftest import DaemonProcess, make_paths, need

CHROMIUM = os.environ.get("HYPERHIVE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
#: How long a browser expectation waits before failing (ms).
EXPECT_TIMEOUT_MS = 10_000
#: How long a raw event stream reader waits for the next event (s).
SSE_WAIT = 10

T = TypeVar("T")


# ------------------------------------------------------------------ the daemon


@pytest.fixture
def hive_config(short_tmp: Path) -> Config:
    """Overridden by modules that need another backend."""
    return Config(paths=make_paths(short_tmp), backend="external", dashboard_bind=("127.0.0.1:0",))


@pytest.fixture
async def inproc(hive_config: Config) -> AsyncIterator[Daemon]:
    """The in-process daemon of ``tests/conftest.py``, with the dashboard on a free port."""
    async with open_daemon(hive_config) as d:
        yield d


@pytest.fixture
def hive(inproc: Daemon) -> Hive:
    return inproc.hive


def base_url(inproc: Daemon) -> str:
    return inproc.dashboard_urls[0]


def session_cookie(inproc: Daemon) -> str:
    assert inproc.auth is not None
    return f"{SESSION_COOKIE}={inproc.auth.session}"


# ------------------------------------------------------------------ the browser


class BrowserThread:
    """Chromium, driven from one thread of its own."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self.browser: Any = None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        future = self._pool.submit(fn, *args)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def chromium() -> Iterator[BrowserThread]:
    need(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    thread = BrowserThread()

    def start() -> Any:
        playwright = sync_playwright().start()
        return playwright, playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

    playwright, thread.browser = thread.call(start)
    yield thread
    thread.call(lambda: (thread.browser.close(), playwright.stop()))
    thread.shutdown()


@attrs.define
class UI:
    """A logged-in page; ``await ui(fn, *args)`` runs ``fn(page, *args)`` in the browser thread."""

    thread: BrowserThread
    page: Any
    base: str
    #: Uncaught script errors and any alert/confirm/prompt dialog (the page itself uses none).
    problems: list[str]

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.thread.run(fn, self.page, *args)


def open_dashboard(browser: Any, login_url: str, problems: list[str]) -> tuple[Any, Any]:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))

    def on_dialog(dialog: Any) -> None:
        problems.append(f"{dialog.type} dialog: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(login_url)
    expect(page.locator("body[data-ready=true]")).to_have_count(1)
    expect(page.locator("#conn")).to_have_text("● live")
    return context, page


@pytest.fixture
async def ui(inproc: Daemon, chromium: BrowserThread) -> AsyncIterator[UI]:
    login = inproc.dashboard_login_url()
    assert login is not None
    problems: list[str] = []
    context, page = await chromium.run(open_dashboard, chromium.browser, login, problems)
    try:
        yield UI(chromium, page, base_url(inproc), problems)
    finally:
        with trio.CancelScope(shield=True):
            await chromium.run(context.close)
    assert problems == []


# ------------------------------------------------------------------ plain HTTP (h11 on trio)


@attrs.frozen
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


async def _connect(base: str) -> tuple[trio.SocketStream, str]:
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    return await trio.open_tcp_stream(parts.hostname, parts.port), parts.netloc


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        return event


async def http(
    base: str,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Response:
    """One request on a fresh connection."""
    stream, host = await _connect(base)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        head = {"host": host, "connection": "close", **(headers or {})}
        if body or method == "POST":
            head["content-length"] = str(len(body))
        await stream.send_all(
            conn.send(h11.Request(method=method, target=target, headers=list(head.items()))) or b""
        )
        await stream.send_all(conn.send(h11.Data(data=body)) if body else b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        response = await _next_event(conn, stream)
        assert isinstance(response, h11.Response), response
        chunks = []
        while not isinstance(event := await _next_event(conn, stream), h11.EndOfMessage):
            chunks.append(bytes(event.data))
        return Response(
            response.status_code,
            [(k.decode().lower(), v.decode()) for k, v in response.headers],
            b"".join(chunks),
        )


async def post_json(
    inproc: Daemon, verb: str, payload: dict[str, Any], *, headers: dict[str, str] | None = None
) -> Response:
    return await http(
        base_url(inproc),
        "POST",
        f"/api/{verb}",
        headers={
            "cookie": session_cookie(inproc),
            "content-type": "application/json",
            **(headers or {}),
        },
        body=json.dumps(payload).encode(),
    )


@attrs.frozen
class SSEvent:
    id: int | None
    kind: str
    data: dict[str, Any]


class EventStream:
    """A raw ``GET /api/stream``: frames parsed as they arrive, comments skipped."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection, status: int) -> None:
        self._stream = stream
        self._conn = conn
        self.status = status
        self._buffer = ""

    @classmethod
    async def open(
        cls, inproc: Daemon, *, last_event_id: int | str | None = None, cookie: bool = True
    ) -> EventStream:
        stream, host = await _connect(base_url(inproc))
        conn = h11.Connection(h11.CLIENT)
        headers = {"host": host, "accept": "text/event-stream"}
        if cookie:
            headers["cookie"] = session_cookie(inproc)
        if last_event_id is not None:
            headers["last-event-id"] = str(last_event_id)
        request = h11.Request(method="GET", target="/api/stream", headers=list(headers.items()))
        await stream.send_all(conn.send(request) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        response = await _next_event(conn, stream)
        assert isinstance(response, h11.Response), response
        return cls(stream, conn, response.status_code)

    async def next(self) -> SSEvent:
        """The next event; fails after ``SSE_WAIT`` seconds rather than hang the test."""
        with trio.fail_after(SSE_WAIT):
            return await self._next()

    async def _next(self) -> SSEvent:
        while True:
            frame, sep, rest = self._buffer.partition("\n\n")
            if sep:
                self._buffer = rest
                fields: dict[str, str] = {}
                for line in frame.split("\n"):
                    if line.startswith(":"):
                        continue
                    key, _, value = line.partition(": ")
                    fields[key] = value
                if "event" in fields:
                    seq = fields.get("id")
                    return SSEvent(
                        int(seq) if seq else None, fields["event"], json.loads(fields["data"])
                    )
                continue
            event = await _next_event(self._conn, self._stream)
            if not isinstance(event, h11.Data):
                raise EOFError(f"the stream ended: {event!r}")
            self._buffer += bytes(event.data).decode()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def login(node: DaemonProcess) -> tuple[str, str]:
    """The dashboard of a daemon process, logged in through its one-time link: its base URL
    and a session cookie (``name=value``)."""
    assert node.dashboard_login is not None
    parts = urlsplit(node.dashboard_login)
    base = f"{parts.scheme}://{parts.netloc}"
    response = await http(base, "GET", f"/login?{parts.query}")
    cookie = response.header("set-cookie")
    assert response.status == 303 and cookie is not None and cookie.startswith(SESSION_COOKIE)
    return base, cookie.split(";", 1)[0]
