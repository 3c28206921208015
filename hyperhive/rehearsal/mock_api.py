"""A scripted mock of the Anthropic Messages API, served on 127.0.0.1.

The tests and ``hyperhive rehearse`` use it. Only the remote API is fake: the real ``claude``
binary talks to it over real HTTP/1.1 (a small trio + h11 server, keep-alive, chunked SSE).
No account, no cost: nothing leaves the host.

Start it (the ``mock_api`` fixture in ``tests/harness/conftest.py`` does this)::

    mock = MockAnthropic()
    await nursery.start(mock.serve)          # listening once this returns
    env = mock.claude_env(home_dir)          # env for running claude against it

Script replies. Replies go to the *main* conversation requests only (the ones that carry
``tools``: every turn of the agent loop); side requests (Claude Code's small-model calls
without tools, e.g. a quota probe or a title) get ``mock.side_default``::

    mock.script(tool_use("mcp__hyperhive__send", {"to": "bob", "body": "hi"}), text("sent"))
    mock.script(error(429, "rate_limit_error", "slow down", retry_after=1))
    mock.script(lambda req: text(f"you said {req.last_user_text}"))   # computed reply
    gate = hold(); mock.script(gate)         # answer only after ``gate.release()``
    mock.default = text("ok")                # when the queue is empty (this is the default)
    mock.responder = lambda req: text("hi")  # or compute every unscripted main reply
    mock.script_side(text("a title"))        # rarely needed

Reply builders: ``text(s)``, ``tool_use(name, input, id=None, text=None)`` (optional text block
before the tool call), ``message(*blocks, stop_reason=...)`` with ``text_block``/
``tool_use_block`` for several blocks, ``error(status, type, message, retry_after=None)``
(HTTP error with the API's JSON error body: 401 ``authentication_error``, 429
``rate_limit_error``, 500 ``api_error``, 529 ``overloaded_error``), ``stream_error(type,
message)`` (HTTP 200, then an SSE ``error`` event), ``hold()`` (waits for ``release()``;
a ``Hold`` can carry a reply: ``hold(text("late"))``). Every reply builder takes
``input_tokens``/``output_tokens`` (usage reported by the mock).

Streaming (``"stream": true``) gets SSE (message_start, content_block_start/delta/stop for
text and tool_use, message_delta with stop_reason and usage, message_stop); otherwise one JSON
message. ``POST /v1/messages/count_tokens`` answers ``{"input_tokens": N}``; any other path
gets 404 with an API-style error body (still recorded).

Read what was sent::

    await mock.wait_for_requests(2)          # main requests; kind="all"/"side" also work
    req = mock.main_requests[-1]             # RecordedRequest
    req.model, req.system_text, req.tool_names, req.messages, req.stream, req.headers
    req.last_user_text, req.tool_results     # newest user turn; tool_result blocks seen
    mock.requests                            # everything, side requests and probes included

``wait_for_requests`` waits on an event (no polling) with a deadline (``within``, 30 s).

What Claude Code 2.1.x sends, seen with this mock (``claude_env`` settings):

- One ``POST /v1/messages?beta=true`` per model step, ``stream: true``, carrying every tool
  (built-ins plus ``mcp__<server>__<tool>``); the prompt is the last text block of the first
  user message (earlier blocks are ``<system-reminder>``s; ``last_user_text`` skips them).
  ``messages`` may also hold ``role: "system"`` entries. ``x-api-key`` is the env's key.
- No side requests at all with ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` (without it
  a ``HEAD /api/hello`` probe comes first). ``--continue`` sends no extra request either.
- A failed stream (``stream_error``) is retried streaming, then once *without* streaming:
  that is when the JSON path answers.
- ``CLAUDE_CODE_MAX_RETRIES=0`` makes an error final after one request (~0.4 s); with 1, one
  retry after ~0.5 s (or ``retry-after``). The run then exits 1; its ``result`` event has
  ``is_error: true``, ``terminal_reason: "api_error"``, ``api_error_status`` (429/401/500)
  and ``api_error_type``, and the ``assistant`` event before it has ``error``
  (``rate_limit``, ``authentication_failed``, ...) — while ``subtype`` still says "success".
- ``--allowedTools`` takes several values: put the prompt after ``--``.
- ``--continue -- /compact`` compacts the session: one main request whose newest user text
  asks for "a detailed summary of the conversation so far" (answer it with any text, e.g.
  ``<summary>…</summary>``); stdout has ``system/status`` ``compacting``, then
  ``compact_boundary`` (``compact_metadata.post_tokens``) and a clean ``result``. A session
  holding only one unanswered prompt gets no request: ``compact_result: "failed"``,
  ``compact_error: "Not enough messages to compact."``.
- A 400 "prompt is too long" ends the run with ``terminal_reason: "prompt_too_long"`` when
  the settings say ``autoCompactEnabled: false``; without it claude compacts by itself and
  retries (a summary request, then the prompt again).
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h11
import trio

# ---------------------------------------------------------------- reply builders


@dataclass(frozen=True)
class TextBlock:
    text: str


@dataclass(frozen=True)
class ToolUseBlock:
    name: str
    input: dict[str, Any]
    id: str | None = None


Block = TextBlock | ToolUseBlock


@dataclass(frozen=True)
class Message:
    """A successful assistant message."""

    blocks: tuple[Block, ...]
    stop_reason: str = "end_turn"
    input_tokens: int = 100
    output_tokens: int = 10
    model: str | None = None  # None: echo the request's model


@dataclass(frozen=True)
class Error:
    """An HTTP error with the API's JSON error body."""

    status: int
    type: str
    message: str
    retry_after: float | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StreamError:
    """HTTP 200 and an SSE ``error`` event (a non-streaming request gets HTTP 529/500)."""

    type: str
    message: str


@dataclass(eq=False)
class Hold:
    """Answer only once ``release()`` is called; ``arrived`` is set when a request takes it."""

    reply: Reply | None = None
    arrived: trio.Event = field(default_factory=trio.Event)
    released: trio.Event = field(default_factory=trio.Event)

    def release(self) -> None:
        self.released.set()


Reply = Message | Error | StreamError | Hold
Responder = Callable[["RecordedRequest"], "Reply"]
Scripted = Reply | Responder


def text_block(text: str) -> TextBlock:
    return TextBlock(text)


def tool_use_block(name: str, input: dict[str, Any], id: str | None = None) -> ToolUseBlock:
    return ToolUseBlock(name, dict(input), id)


def message(
    *blocks: Block,
    stop_reason: str | None = None,
    input_tokens: int = 100,
    output_tokens: int = 10,
    model: str | None = None,
) -> Message:
    if stop_reason is None:
        has_tool = any(isinstance(b, ToolUseBlock) for b in blocks)
        stop_reason = "tool_use" if has_tool else "end_turn"
    return Message(tuple(blocks), stop_reason, input_tokens, output_tokens, model)


def text(s: str, **kw: Any) -> Message:
    return message(TextBlock(s), **kw)


def tool_use(
    name: str, input: dict[str, Any], id: str | None = None, text: str | None = None, **kw: Any
) -> Message:
    blocks: list[Block] = [TextBlock(text)] if text else []
    blocks.append(ToolUseBlock(name, dict(input), id))
    return message(*blocks, **kw)


def error(status: int, type: str, message: str, *, retry_after: float | None = None) -> Error:
    return Error(status, type, message, retry_after)


def stream_error(type: str = "overloaded_error", message: str = "Overloaded") -> StreamError:
    return StreamError(type, message)


def hold(reply: Reply | None = None) -> Hold:
    return Hold(reply)


# ---------------------------------------------------------------- recorded requests

Kind = Literal["main", "side", "count_tokens", "other"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # decoded JSON, or None
    raw: bytes
    kind: Kind
    #: Status code answered (set once the reply was chosen).
    status: int | None = None
    reply: Reply | None = None

    @property
    def model(self) -> str | None:
        model = self._get("model")
        return model if isinstance(model, str) else None

    @property
    def stream(self) -> bool:
        return bool(self._get("stream"))

    @property
    def system_text(self) -> str:
        system = self._get("system")
        if system is None:
            return ""
        if isinstance(system, str):
            return system
        return "\n".join(b.get("text", "") for b in system if isinstance(b, dict))

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self._get("tools") or [])

    @property
    def tool_names(self) -> list[str]:
        return [t.get("name", "") for t in self.tools]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self._get("messages") or [])

    @property
    def last_user_text(self) -> str:
        """Text of the newest user message, without tool results and ``<system-reminder>``s.

        For the first request of a ``claude -p "<prompt>"`` run this is the prompt.
        """
        for msg in reversed(self.messages):
            if msg.get("role") == "user":
                return _content_text(msg.get("content"))
        return ""

    @property
    def user_texts(self) -> list[str]:
        """Text of every user message, oldest first (same filtering as ``last_user_text``)."""
        texts = (_content_text(m.get("content")) for m in self.messages if m.get("role") == "user")
        return [t for t in texts if t]

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """Every ``tool_result`` block in the conversation, oldest first."""
        out: list[dict[str, Any]] = []
        for msg in self.messages:
            content = msg.get("content")
            if isinstance(content, list):
                out.extend(b for b in content if b.get("type") == "tool_result")
        return out

    def _get(self, key: str) -> Any:
        return self.body.get(key) if isinstance(self.body, dict) else None


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        parts = [content]
    elif isinstance(content, list):
        parts = [
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        ]
    else:
        parts = []
    return "\n".join(p for p in parts if not p.lstrip().startswith("<system-reminder>"))


def tool_result_text(block: dict[str, Any]) -> str:
    """The text of one ``tool_result`` block (its content is a string or text blocks)."""
    return _content_text(block.get("content"))


def classify(method: str, path: str, body: Any) -> Kind:
    """``main``: a Messages call carrying tools (the agent loop); ``side``: one without.

    Replace ``MockAnthropic.classify`` for another split (e.g. a run with ``--tools ""``
    and no MCP server sends its turns without tools).
    """
    route = path.split("?", 1)[0].rstrip("/")
    if method == "POST" and route == "/v1/messages":
        if isinstance(body, dict) and body.get("tools"):
            return "main"
        return "side"
    if method == "POST" and route == "/v1/messages/count_tokens":
        return "count_tokens"
    return "other"


# ---------------------------------------------------------------- the server

#: Environment variables stripped from the parent's env so a developer's real credentials
#: or settings never reach a test run.
_STRIP_PREFIXES = ("ANTHROPIC_", "CLAUDE", "AWS_", "GOOGLE_", "VERTEX_", "OTEL_", "MCP_")


class MockAnthropic:
    def __init__(self) -> None:
        self.port: int = 0
        self.requests: list[RecordedRequest] = []
        self.default: Reply = text("ok")
        #: Computes the reply of a main request when the queue is empty (before ``default``).
        self.responder: Responder | None = None
        self.side_default: Reply = text("ok")
        self._queue: list[Scripted] = []
        self._side_queue: list[Scripted] = []
        self._changed = trio.Event()
        self._ids = itertools.count(1)
        self.classify: Callable[[str, str, Any], Kind] = classify

    # -------------------------------------------------------- scripting

    def script(self, *replies: Scripted) -> None:
        """Queue replies for the next main (tool-carrying) requests, in order."""
        self._queue.extend(replies)

    def script_side(self, *replies: Scripted) -> None:
        """Queue replies for the next side requests (Messages calls without tools)."""
        self._side_queue.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted main replies not used yet."""
        return len(self._queue)

    # -------------------------------------------------------- recorded

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def main_requests(self) -> list[RecordedRequest]:
        return self.of_kind("main")

    @property
    def side_requests(self) -> list[RecordedRequest]:
        return self.of_kind("side")

    def of_kind(self, kind: Kind | Literal["all"]) -> list[RecordedRequest]:
        if kind == "all":
            return list(self.requests)
        return [r for r in self.requests if r.kind == kind]

    async def wait_for_requests(
        self, n: int, *, kind: Kind | Literal["all"] = "main", within: float = 30
    ) -> list[RecordedRequest]:
        """Wait until at least ``n`` requests of ``kind`` arrived; return them."""
        with trio.fail_after(within):
            while len(self.of_kind(kind)) < n:
                await self._changed.wait()
        return self.of_kind(kind)

    def claude_env(self, home: Path | str, *, max_retries: int = 1, **extra: str) -> dict[str, str]:
        """Environment for running the real ``claude`` against this mock, isolated in ``home``."""
        return claude_env(self.base_url, home, max_retries=max_retries, **extra)

    # -------------------------------------------------------- serving

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024 * 1024)
        try:
            while True:
                got = await _read_request(conn, stream)
                if got is None:
                    return
                request, body = got
                await self._handle(conn, stream, request, body)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    def _record(self, rec: RecordedRequest) -> None:
        self.requests.append(rec)
        self._changed.set()
        self._changed = trio.Event()

    def _next_reply(self, rec: RecordedRequest) -> Reply:
        queue, default = (
            (self._queue, self.default)
            if rec.kind == "main"
            else (self._side_queue, self.side_default)
        )
        if not queue and rec.kind == "main" and self.responder is not None:
            return self.responder(rec)
        item: Scripted = queue.pop(0) if queue else default
        if callable(item) and not isinstance(item, Hold):
            item = item(rec)
        return item

    async def _handle(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, raw: bytes
    ) -> None:
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in request.headers}
        raw = _decode_body(raw, headers.get("content-encoding", ""))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        method = request.method.decode()
        path = request.target.decode(errors="replace")
        rec = RecordedRequest(method, path, headers, body, raw, self.classify(method, path, body))
        send = _Sender(conn, stream)

        if rec.kind in ("main", "side"):
            reply = self._next_reply(rec)
            self._record(rec)
            while isinstance(reply, Hold):
                reply.arrived.set()
                await reply.released.wait()
                reply = reply.reply if reply.reply is not None else self.default
            rec.reply = reply
            await self._answer_messages(send, rec, reply)
        elif rec.kind == "count_tokens":
            self._record(rec)
            rec.status = 200
            tokens = max(1, len(raw) // 4)
            await send.json(200, {"input_tokens": tokens})
        else:
            self._record(rec)
            rec.status = 404 if method != "HEAD" else 200
            if method == "HEAD":
                await send.empty(200)
            else:
                await send.json(404, _error_body("not_found_error", f"no route {method} {path}"))

    async def _answer_messages(self, send: _Sender, rec: RecordedRequest, reply: Reply) -> None:
        if isinstance(reply, Error):
            rec.status = reply.status
            extra = list(reply.headers)
            if reply.retry_after is not None:
                extra.append(("retry-after", _num(reply.retry_after)))
            await send.json(reply.status, _error_body(reply.type, reply.message), extra)
            return
        if isinstance(reply, StreamError):
            if not rec.stream:
                status = 529 if reply.type == "overloaded_error" else 500
                rec.status = status
                await send.json(status, _error_body(reply.type, reply.message))
                return
            rec.status = 200
            await send.sse_start()
            await send.sse("error", _error_body(reply.type, reply.message))
            await send.end()
            return
        assert isinstance(reply, Message)
        msg_id = f"msg_mock{next(self._ids):06d}"
        model = reply.model or rec.model or "claude-mock"
        content = [self._block_json(b) for b in reply.blocks]
        rec.status = 200
        if not rec.stream:
            await send.json(
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": reply.stop_reason,
                    "stop_sequence": None,
                    "usage": _usage(reply.input_tokens, reply.output_tokens),
                },
            )
            return
        await send.sse_start()
        start: dict[str, Any] = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(reply.input_tokens, 1),
        }
        await send.sse("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(content):
            if block["type"] == "text":
                first: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": part} for part in _split(block["text"])]
            else:
                first = {**block, "input": {}}
                payload = json.dumps(block["input"])
                deltas = [{"type": "input_json_delta", "partial_json": p} for p in _split(payload)]
            await send.sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": first},
            )
            for delta in deltas:
                await send.sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            await send.sse("content_block_stop", {"type": "content_block_stop", "index": index})
        await send.sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": reply.output_tokens},
            },
        )
        await send.sse("message_stop", {"type": "message_stop"})
        await send.end()

    def _block_json(self, block: Block) -> dict[str, Any]:
        if isinstance(block, TextBlock):
            return {"type": "text", "text": block.text}
        return {
            "type": "tool_use",
            "id": block.id or f"toolu_mock{next(self._ids):06d}",
            "name": block.name,
            "input": block.input,
        }


def claude_env(
    base_url: str, home: Path | str, *, max_retries: int = 1, **extra: str
) -> dict[str, str]:
    """The parent's env without Anthropic/Claude settings, pointed at ``base_url``."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES)}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY="test-key",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_ERROR_REPORTING="1",
        ENABLE_TOOL_SEARCH="false",
        CLAUDE_CODE_MAX_RETRIES=str(max_retries),
    )
    env.update(extra)
    return env


# ---------------------------------------------------------------- HTTP plumbing


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream
) -> tuple[h11.Request, bytes] | None:
    request: h11.Request | None = None
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, b"".join(chunks)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _decode_body(raw: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    return raw


class _Sender:
    def __init__(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        self.conn = conn
        self.stream = stream

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    def _headers(self, extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        return [("request-id", "req_mock"), *extra]

    async def json(self, status: int, obj: Any, extra: Iterable[tuple[str, str]] = ()) -> None:
        data = json.dumps(obj).encode()
        headers = self._headers(
            [("content-type", "application/json"), ("content-length", str(len(data))), *extra]
        )
        await self._send(h11.Response(status_code=status, headers=headers))
        await self._send(h11.Data(data=data))
        await self._send(h11.EndOfMessage())

    async def empty(self, status: int) -> None:
        await self._send(
            h11.Response(status_code=status, headers=self._headers([("content-length", "0")]))
        )
        await self._send(h11.EndOfMessage())

    async def sse_start(self) -> None:
        headers = self._headers(
            [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        )
        await self._send(h11.Response(status_code=200, headers=headers))

    async def sse(self, event: str, data: Any) -> None:
        await self._send(h11.Data(data=f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())


def _error_body(type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type, "message": message}, "request_id": "req_mock"}


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _split(s: str, size: int = 16) -> list[str]:
    return [s[i : i + size] for i in range(0, len(s), size)] or [""]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
