"""The hyperhive tools over MCP's streamable HTTP transport, on a loopback port of the harness.

    claude ──HTTP POST http://127.0.0.1:<port>/mcp/<turn secret>──► McpHost ──► ToolServer

claude reaches the harness's tools with an ``"type": "http"`` MCP server instead of starting
a process: no interpreter is spawned per turn, and the end of a turn does not wait for a
server process to exit (claude polls a stdio server's exit every 50 ms after its SIGINT).

Who may use it: the port is on 127.0.0.1, which every agent of the host shares (containers
share the host's network), so every request is checked on its own: its path must carry the
running turn's secret (:meth:`McpHost.open_turn`, 256 bits, compared in constant time);
between turns no secret is valid, a request carrying an ``Origin`` (a browser) is refused,
and bodies are bounded. A refused request gets a 403 with the reason and the connection is
closed; nothing of the tools is served.

The transport subset claude uses: one JSON-RPC message per ``POST``; a request is answered
``200`` with ``application/json``, a notification ``202``; ``GET`` (a server event stream)
and ``DELETE`` (session end) answer ``405``: the server keeps no session and sends nothing
of its own. ``notifications/cancelled`` cancels the named call, which then answers an error.

- :func:`check_request` — the decision for one request head (pure).
- :func:`serve_connection` — one keep-alive connection (trio + h11).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Final, Protocol

import h11
import trio

from hyperhive_harness.toolserver import INVALID_REQUEST, MAX_LINE, PARSE_ERROR, ToolServer


class McpHost(Protocol):
    """What a connection uses of the harness's host (:class:`hyperhive_harness.mcp_host.McpHost`;
    named here so this module does not point back at the one that imports it)."""

    refused: int
    call_durations: deque[float]

    @property
    def token(self) -> str | None: ...

    @property
    def server(self) -> ToolServer | None: ...

    def running_call(self, msg_id: object) -> AbstractContextManager[trio.CancelScope | None]: ...

    def notified(self, message: dict[str, Any]) -> None: ...


__all__ = ["PATH_PREFIX", "Refusal", "check_request", "serve_connection"]

log = logging.getLogger("hyperhive.mcp")

#: The endpoint is ``PATH_PREFIX + <secret>``.
PATH_PREFIX: Final = "/mcp/"
#: How long a new connection may take to send its first request, and any request its body.
#: Once a request carried the turn's secret, the connection may idle until the turn ends
#: (claude keeps it alive between calls; closing it under a new request would fail that call).
REQUEST_HEAD_SECONDS: Final = 5.0
#: The largest request head accepted (bytes).
MAX_HEAD: Final = 16 * 1024
#: JSON-RPC error code of a call cancelled by ``notifications/cancelled``.
REQUEST_CANCELLED: Final = -32800


class Refusal(Exception):
    """A request the harness does not serve: HTTP ``status`` and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_request(method: str, target: str, headers: dict[str, str], token: str | None) -> bool:
    """Whether a request carrying the running turn's secret is served (``POST``: true) or
    answered 405 (false); :class:`Refusal` when it may not be answered at all."""
    if "origin" in headers:
        raise Refusal(403, "requests from a browser (with an Origin) are refused")
    path = target.split("?", 1)[0]
    if not path.startswith(PATH_PREFIX):
        raise Refusal(404, "no such endpoint")
    if token is None:
        raise Refusal(403, "no turn is running")
    if not hmac.compare_digest(path[len(PATH_PREFIX) :].encode(), token.encode()):
        raise Refusal(403, "wrong secret")
    return method == "POST"


def _jsonrpc_error(msg_id: object, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(65536)
            self.h11.receive_data(data)

    async def send(
        self, status: int, body: bytes = b"", *, content_type: str = "", close: bool = False
    ) -> None:
        headers = [("content-length", str(len(body)))]
        if content_type:
            headers.append(("content-type", content_type))
        if status == 405:
            headers.append(("allow", "POST"))
        if close:
            headers.append(("connection", "close"))
        data = self.h11.send(h11.Response(status_code=status, headers=headers))
        if body:
            data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(data)


async def serve_connection(
    host: McpHost, stream: trio.SocketStream, proven: Callable[[], None] = lambda: None
) -> None:
    """Serve requests on one connection until it closes, a request is refused, or the turn
    that authorised it ends (its scope is then cancelled by :meth:`McpHost.close_turn`).
    ``proven`` is called when a request first carried the turn's secret."""
    conn = _Conn(stream)
    async with stream:
        with contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError
        ):
            authorised = False
            while True:
                wait = float("inf") if authorised else REQUEST_HEAD_SECONDS
                with trio.move_on_after(wait) as head_wait:
                    event = await conn.next_event()
                if head_wait.cancelled_caught or not isinstance(event, h11.Request):
                    return
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                try:
                    served = check_request(
                        event.method.decode(), event.target.decode("latin-1"), headers, host.token
                    )
                    length = int(headers.get("content-length", "0") or 0)
                    if length > MAX_LINE:
                        raise Refusal(413, f"body over {MAX_LINE} bytes")
                except Refusal as refusal:
                    host.refused += 1
                    log.warning("MCP HTTP request refused: %s", refusal.reason)
                    text = f"refused: {refusal.reason}\n".encode()
                    await conn.send(refusal.status, text, content_type="text/plain", close=True)
                    return
                except ValueError:
                    await conn.send(400, b"bad content-length\n", close=True)
                    return
                if not authorised:
                    authorised = True
                    proven()
                body = await _read_body(conn)
                if body is None:
                    return
                if not served:
                    await conn.send(405)
                else:
                    await _post(host, conn, body)
                if conn.h11.our_state is h11.MUST_CLOSE:
                    return
                conn.h11.start_next_cycle()


async def _read_body(conn: _Conn) -> bytes | None:
    chunks = bytearray()
    with trio.move_on_after(REQUEST_HEAD_SECONDS):
        while True:
            event = await conn.next_event()
            if isinstance(event, h11.Data):
                chunks += event.data
                if len(chunks) > MAX_LINE:
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return bytes(chunks)
            else:
                return None
    return None


async def _post(host: McpHost, conn: _Conn, body: bytes) -> None:
    """One JSON-RPC message: a request is answered with its result, anything else ``202``."""
    started = time.perf_counter()
    try:
        message = json.loads(body)
    except ValueError:
        await _answer(conn, _jsonrpc_error(None, PARSE_ERROR, "invalid JSON"))
        return
    if not isinstance(message, dict):
        await _answer(conn, _jsonrpc_error(None, INVALID_REQUEST, "one JSON-RPC object per POST"))
        return
    if "id" not in message or "method" not in message:
        host.notified(message)
        await conn.send(202)
        return
    server = host.server
    if server is None:
        await _answer(conn, _jsonrpc_error(message["id"], INVALID_REQUEST, "no agent yet"))
        return
    with host.running_call(message["id"]) as scope:
        if scope is None:
            answer: dict[str, Any] | None = _jsonrpc_error(
                message["id"], INVALID_REQUEST, "too many calls at once or a duplicate id"
            )
        else:
            answer = None
            with scope:
                answer = await server.handle(message)
            if scope.cancelled_caught:
                answer = _jsonrpc_error(message["id"], REQUEST_CANCELLED, "request cancelled")
    if answer is None:
        await conn.send(202)
        return
    await _answer(conn, answer)
    if message.get("method") == "tools/call" and scope is not None and not scope.cancelled_caught:
        host.call_durations.append(time.perf_counter() - started)


async def _answer(conn: _Conn, obj: dict[str, Any]) -> None:
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    await conn.send(200, data, content_type="application/json")
