"""Shared helpers of the harness tests: harness processes, a small HTTP/SSE client, waits.

A :class:`Harness` is ``python -m hyperhive_harness serve`` as a real process with its own
state dir, events db, model file and HOME, running the real ``claude`` against the mock API
(``hyperhive/rehearsal/mock_api.py``, re-exported by ``tests/harness/mock_anthropic.py``)
and talking to a real daemon over its agent socket.

Waiting never sleeps blindly: :func:`eventually` polls a condition under ``trio.fail_after``;
SSE reads wait on the socket.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import h11
import trio

from hyperhive.client import Client
from hyperhive.protocol import HostSend, RecentMessage, RecentReply, SendReply
from hyperhive.protocol import Recent as RecentRequest

from .mock_anthropic import MockAnthropic, RecordedRequest, error

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


async def eventually(
    check: Callable[[], T | None] | Callable[[], Awaitable[T | None]],
    *,
    within: float = 60,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    last: Any = None
    try:
        with trio.fail_after(within):
            while True:
                value = check()
                if isinstance(value, Awaitable):
                    value = await value
                last = value
                if value:
                    return value  # type: ignore[return-value]
                await trio.sleep(interval)
    except trio.TooSlowError:
        raise AssertionError(
            f"timed out after {within} s waiting for {what} (last: {last!r})"
        ) from None


# ---------------------------------------------------------------- events db


def read_events(db: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of a harness's events db as ``{seq, ts, kind, payload}`` (empty if absent)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        try:
            rows = conn.execute(
                "SELECT id, ts, kind, payload_json FROM events ORDER BY id"
            ).fetchall()
        except sqlite3.OperationalError:
            return []
    finally:
        conn.close()
    events = [{"seq": r[0], "ts": r[1], "kind": r[2], "payload": json.loads(r[3])} for r in rows]
    return [e for e in events if kind is None or e["kind"] == kind]


def tool_uses(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every tool_use block in the ``stream`` events."""
    out = []
    for e in events:
        value = e["payload"].get("value") if e["kind"] == "stream" else None
        if isinstance(value, dict) and value.get("type") == "assistant":
            out += [b for b in value["message"].get("content", []) if b.get("type") == "tool_use"]
    return out


def tool_results(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        value = e["payload"].get("value") if e["kind"] == "stream" else None
        if isinstance(value, dict) and value.get("type") == "user":
            content = value.get("message", {}).get("content", [])
            if isinstance(content, list):
                out += [b for b in content if b.get("type") == "tool_result"]
    return out


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if isinstance(b, dict))


# ---------------------------------------------------------------- HTTP


@attrs.frozen
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Where = int | Path


async def _open(where: Where) -> trio.SocketStream:
    """A TCP port on 127.0.0.1, or a unix socket (a harness's ``ui.sock``)."""
    if isinstance(where, Path):
        return await trio.open_unix_socket(str(where))
    return await trio.open_tcp_stream("127.0.0.1", where)


def _host(where: Where) -> str:
    return "localhost" if isinstance(where, Path) else f"127.0.0.1:{where}"


async def http(
    port: Where,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    host: str | None = None,
    origin: str | bool | None = True,
) -> HttpResponse:
    """One HTTP/1.1 request to 127.0.0.1:port (or a unix socket). ``origin=True`` sends the
    page's own origin on POSTs (what a browser does); a string sends that origin;
    None/False sends none."""
    host = host or _host(port)
    hdrs = {"host": host, "connection": "close", **(headers or {})}
    data = b""
    if json_body is not None:
        data = json.dumps(json_body).encode()
        hdrs["content-type"] = "application/json"
    if method != "GET" or data:
        hdrs["content-length"] = str(len(data))
    if method == "POST" and origin:
        hdrs.setdefault("origin", f"http://{host}" if origin is True else str(origin))
    conn = h11.Connection(h11.CLIENT)
    stream = await _open(port)
    async with stream:
        # One write: a server that answers without reading the body (and closes, as asked)
        # must not race the client still sending it (a broken pipe on the body).
        request = conn.send(h11.Request(method=method, target=path, headers=list(hdrs.items())))
        body = conn.send(h11.Data(data=data)) if data else b""
        await stream.send_all(request + body + conn.send(h11.EndOfMessage()))
        status, headers_out, chunks = 0, {}, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers_out = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return HttpResponse(status, headers_out, b"".join(chunks))


class SseReader:
    """An open ``GET /events/stream``; ``next_event()`` returns the next data frame."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        self.stream = stream
        self.conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._buf = b""
        self.comments: list[str] = []

    async def _more(self) -> bool:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(65536)
                self.conn.receive_data(data)
                if not data:
                    return False
                continue
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                continue
            if isinstance(event, h11.Data):
                self._buf += bytes(event.data)
                return True
            return False

    async def wait_open(self) -> None:
        """Wait for the response head (the stream is then subscribed on the server)."""
        while not self.status:
            if not await self._more():
                raise EOFError("SSE stream ended before its response head")

    async def next_frame(self) -> dict[str, str]:
        while True:
            while b"\n\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n\n", 1)
                frame: dict[str, str] = {}
                for line in raw.decode().split("\n"):
                    if line.startswith(":"):
                        self.comments.append(line[1:].strip())
                        continue
                    key, _, value = line.partition(":")
                    frame[key] = frame.get(key, "") + value.removeprefix(" ")
                if frame:
                    return frame
            if not await self._more():
                raise EOFError("SSE stream ended")

    async def next_event(self) -> dict[str, Any]:
        while True:
            frame = await self.next_frame()
            if "data" in frame and frame.get("event") != "resync":
                event: dict[str, Any] = json.loads(frame["data"])
                # One frame format (hyperhive.runtime.sse): the SSE event type is the kind.
                assert frame.get("event") == event["kind"], frame
                event["_id"] = frame.get("id")
                return event


@asynccontextmanager
async def open_sse(
    port: Where, path: str = "/events/stream", headers: dict[str, str] | None = None
) -> AsyncIterator[SseReader]:
    conn = h11.Connection(h11.CLIENT)
    stream = await _open(port)
    async with stream:
        hdrs = {"host": _host(port), "accept": "text/event-stream", **(headers or {})}
        await stream.send_all(
            conn.send(h11.Request(method="GET", target=path, headers=list(hdrs.items())))
        )
        await stream.send_all(conn.send(h11.EndOfMessage()))
        reader = SseReader(stream, conn)
        yield reader


# ---------------------------------------------------------------- the daemon side


async def operator_send(host_socket: Path, to: str, body: str) -> int:
    async with await Client.connect(host_socket, hello_role="cli") as client:
        reply = await client.call(HostSend(to=to, body=body))
        assert isinstance(reply, SendReply)
        return reply.id


async def inbox_of(agent_socket: Path, limit: int = 50) -> list[RecentMessage]:
    """An agent's recent inbox through its own socket (as ``cli``: never requeues)."""
    async with await Client.connect(agent_socket, hello_role="cli") as client:
        reply = await client.call(RecentRequest(limit=limit))
        assert isinstance(reply, RecentReply)
        return reply.messages


async def message(agent_socket: Path, message_id: int) -> RecentMessage:
    for m in await inbox_of(agent_socket, 200):
        if m.id == message_id:
            return m
    raise AssertionError(f"message {message_id} not in the inbox of {agent_socket}")


# ---------------------------------------------------------------- harness processes


async def wait_acked(agent_socket: Path, message_id: int) -> RecentMessage:
    """The message once acked (the ack follows ``turn_end``, so it is waited for)."""

    async def acked() -> RecentMessage | None:
        found = await message(agent_socket, message_id)
        return found if found.acked_at is not None else None

    return await eventually(acked, what=f"the ack of message {message_id}")


def for_agent(name: str) -> Callable[[RecordedRequest], bool]:
    """Does a mock request come from ``name``'s claude? (its system prompt names it)."""
    return lambda req: f"You are **{name}**" in req.system_text


@attrs.define
class Harness:
    name: str
    root: Path
    socket: Path
    env: dict[str, str]
    proc: trio.Process | None = None
    output: list[str] = attrs.Factory(list)
    #: The debugging TCP port, only with ``--ui-port`` in ``args``.
    port: int | None = None
    args: tuple[str, ...] = ()

    @property
    def ui_socket(self) -> Path:
        """Where the harness serves its UI: beside its agent socket unless moved."""
        return Path(self.env.get("HYPERHIVE_UI_SOCKET") or self.socket.with_name("ui.sock"))

    @property
    def state_dir(self) -> Path:
        return Path(self.env["HYPERHIVE_STATE_DIR"])

    @property
    def events_db(self) -> Path:
        return Path(self.env["HYPERHIVE_EVENTS_DB"])

    @property
    def model_file(self) -> Path:
        return Path(self.env["HYPERHIVE_MODEL_FILE"])

    @property
    def home(self) -> Path:
        return Path(self.env["HOME"])

    def command(self) -> list[str]:
        return [sys.executable, "-m", "hyperhive_harness", "serve", *self.args]

    async def start(self, nursery: trio.Nursery, *, within: float = 30) -> None:
        self.output = []
        self.port = None
        proc = await trio.lowlevel.open_process(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=str(ROOT),
        )
        self.proc = proc
        ready = trio.Event()
        nursery.start_soon(self._pump, proc, ready)
        with trio.fail_after(within):
            await ready.wait()
        line = next((x for x in self.output if "hyperhive-harness: ready" in x), None)
        if line is None:
            raise RuntimeError("harness exited before it was ready:\n" + "".join(self.output))
        if " tcp " in line:
            url = line.split(" tcp ", 1)[1].split()[0]
            self.port = int(url.rstrip("/").rsplit(":", 1)[1])

    async def _pump(self, proc: trio.Process, ready: trio.Event) -> None:
        assert proc.stdout is not None
        buf = b""
        async with proc.stdout:
            while True:
                try:
                    data = await proc.stdout.receive_some(65536)
                except trio.ClosedResourceError:
                    break
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    text = raw.decode(errors="replace") + "\n"
                    self.output.append(text)
                    if "hyperhive-harness: ready" in text:
                        ready.set()
        ready.set()

    async def stop(self, sig: int = signal.SIGTERM, *, within: float = 20) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        with trio.fail_after(within):
            return await self.proc.wait()

    async def kill(self) -> int:
        return await self.stop(signal.SIGKILL)

    # -------------------------------------------------------- what it recorded

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return read_events(self.events_db, kind)

    async def wait_for(
        self,
        kind: str,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        *,
        count: int = 1,
        within: float = 60,
    ) -> list[dict[str, Any]]:
        """Wait until the events db holds ``count`` events of ``kind`` matching ``where``."""

        def check() -> list[dict[str, Any]] | None:
            found = [e for e in self.events(kind) if where(e["payload"])]
            return found if len(found) >= count else None

        return await eventually(
            check, within=within, what=f"{count} {kind} event(s) from {self.name}"
        )

    async def get(self, path: str, **kw: Any) -> HttpResponse:
        """A request to the UI on its unix socket (what the daemon's dashboard forwards)."""
        return await http(self.ui_socket, "GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> HttpResponse:
        return await http(
            self.ui_socket, "POST", path, json_body=body if body is not None else {}, **kw
        )

    def failure_help(self) -> str:
        return "".join(self.output[-60:])


def harness_env(
    mock: MockAnthropic, claude: Path, root: Path, socket: Path, **extra: str
) -> dict[str, str]:
    """The environment of one harness: isolated HOME and state, the real claude, the mock."""
    root.mkdir(parents=True, exist_ok=True)
    env = mock.claude_env(root / "home", max_retries=0)
    env.update(
        PYTHONUNBUFFERED="1",
        HYPERHIVE_SOCKET=str(socket),
        HYPERHIVE_STATE_DIR=str(root / "state"),
        HYPERHIVE_EVENTS_DB=str(root / "events.sqlite"),
        HYPERHIVE_MODEL_FILE=str(root / "model"),
        HYPERHIVE_CLAUDE=str(claude),
        HYPERHIVE_RECONNECT_BACKOFF="0.2,0.5,1",
        HYPERHIVE_FAILED_RETRY_DELAY="0",
        HYPERHIVE_RATE_LIMIT_SLEEP="1",
        HYPERHIVE_LOGIN_POLL="0.2",
        HYPERHIVE_CANCEL_GRACE="10",
    )
    env.update(extra)
    return env


@asynccontextmanager
async def running(harness: Harness, nursery: trio.Nursery) -> AsyncIterator[Harness]:
    """Start a harness for the ``async with`` body; kill it afterwards whatever happened."""
    await harness.start(nursery)
    try:
        yield harness
    finally:
        if harness.proc is not None and harness.proc.returncode is None:
            with trio.CancelScope(shield=True):
                await harness.stop()


def make_harness(
    name: str, mock: MockAnthropic, claude: Path, root: Path, socket: Path, **extra: str
) -> Harness:
    return Harness(name, root, socket, harness_env(mock, claude, root / name, socket, **extra))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def login_harness(mock_api: MockAnthropic, claude_bin: Path, tmp: Path, socket: Path) -> Harness:
    """alice, whose claude needs a login: the API refuses (401) and ``claude auth login`` is a
    stand-in that prints the URL and accepts the code ``good-code`` (the other end is
    Anthropic's OAuth service)."""
    login_script = tmp / "fake_login.py"
    login_script.write_text(
        "import sys\n"
        "print('Browser did not open; visit https://claude.ai/oauth/authorize?state=abc', "
        "flush=True)\n"
        "code = sys.stdin.readline().strip()\n"
        "sys.exit(0 if code == 'good-code' else 1)\n"
    )
    mock_api.script(error(401, "authentication_error", "token expired"))
    return make_harness(
        "alice",
        mock_api,
        claude_bin,
        tmp,
        socket,
        HYPERHIVE_LOGIN_CMD=f"{sys.executable} {login_script}",
        HYPERHIVE_LOGIN_POLL="600",  # only the login flow can end the park here
    )
