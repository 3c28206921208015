"""A small MCP server for the hyperhive tools: JSON-RPC lines over any trio stream.

Why not the MCP SDK's server: importing it costs ~1.2 s and ~38 MB, which the long-running
harness would carry for good (or every turn would pay again in a new process). The tools
need only a handful of methods (``server/discover``, ``initialize``, ``ping``,
``tools/list``, ``tools/call``, ``notifications/cancelled``), served here with pydantic
(already loaded by the harness) for the argument schemas and checks.

- :class:`ToolServer` — tools registered with :meth:`ToolServer.add_tool` (an async function
  whose parameters are ``Annotated[type, Field(...)]``), the same call as the SDK's
  ``MCPServer.add_tool``; :meth:`ToolServer.handle` answers one decoded message (sans-IO
  apart from running the tool); :meth:`ToolServer.serve` runs a session on a byte stream.
- Arguments are checked strictly: unknown keys are refused, no silent coercion
  (``"5"`` is not an int); a refusal is a tool error the model can read and fix.
- :class:`ToolError` — raise it from a tool with a text the model must read; any other
  exception becomes an opaque "internal error" (logged with its traceback).

Untrusted input is bounded: lines of at most :data:`MAX_LINE` bytes, at most
:data:`MAX_IN_FLIGHT` calls running at once per session.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import typing
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

import pydantic
import trio

__all__ = [
    "HANDSHAKE_VERSIONS",
    "MAX_IN_FLIGHT",
    "MAX_LINE",
    "ToolError",
    "ToolServer",
    "call_key",
]

log = logging.getLogger("hyperhive.mcp")

#: Protocol revisions with the ``initialize`` handshake, oldest first.
HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
#: The longest JSON-RPC line a client may send (bytes).
MAX_LINE: Final = 1 << 20
#: Calls one session may have running at once (a long ``recv`` is one).
MAX_IN_FLIGHT: Final = 16
#: How many tool-call durations are kept for the statistics.
KEPT_DURATIONS: Final = 1000

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602

ToolFn = Callable[..., Awaitable[str]]


class ToolError(Exception):
    """A tool failure the model must read: the text becomes the tool result (an error)."""


class _Tool:
    def __init__(self, fn: ToolFn, name: str, description: str) -> None:
        self.fn = fn
        self.name = name
        self.description = description
        hints = typing.get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (hints[param.name], default)
        self.model: type[pydantic.BaseModel] = pydantic.create_model(
            f"{name}Arguments",
            __config__=pydantic.ConfigDict(extra="forbid", strict=True),
            **fields,
        )
        schema = self.model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        self.input_schema = schema

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
        }

    def parse(self, arguments: object) -> dict[str, Any]:
        """The checked arguments, or :class:`ToolError` saying what is wrong."""
        if arguments is None:
            arguments = {}
        try:
            parsed = self.model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            raise ToolError(f"invalid arguments for {self.name}: {_explain(exc)}") from None
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}


def _explain(exc: pydantic.ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        if err["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown argument")
        elif err["type"] == "missing":
            problems.append(f"{where}: missing")
        else:
            problems.append(f"{where}: {err['msg']} (got {err.get('input')!r:.60})")
    return "; ".join(problems)


def _result(text: str, *, error: bool) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": error}


def _error(msg_id: object, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


class ToolServer:
    """The tools of one identity (an agent or the manager), served to any number of sessions."""

    def __init__(self, name: str, *, instructions: str = "", version: str = "1") -> None:
        self.name = name
        self.instructions = instructions
        self.version = version
        self._tools: dict[str, _Tool] = {}
        #: Seconds from a ``tools/call`` line read to its answer written, newest last.
        self.call_durations: deque[float] = deque(maxlen=KEPT_DURATIONS)

    def add_tool(
        self,
        fn: ToolFn,
        name: str | None = None,
        description: str | None = None,
        structured_output: bool | None = False,  # the SDK's signature; text results only
    ) -> None:
        tool_name = name or fn.__name__
        self._tools[tool_name] = _Tool(fn, tool_name, description or "")

    @property
    def tool_names(self) -> list[str]:
        return list(self._tools)

    # ------------------------------------------------------------ one message

    async def handle(self, message: object) -> dict[str, Any] | None:
        """The answer to one decoded JSON-RPC message (``None`` for a notification)."""
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return _error(None, INVALID_REQUEST, "not a JSON-RPC 2.0 message")
        method = message.get("method")
        msg_id = message.get("id")
        if "id" not in message:  # a notification: nothing to answer
            return None
        if not isinstance(method, str):
            return _error(msg_id, INVALID_REQUEST, "no method")
        params = message.get("params") or {}
        if not isinstance(params, dict):
            return _error(msg_id, INVALID_PARAMS, "params must be an object")
        if method == "initialize":
            result: dict[str, Any] = self._initialize(params)
        elif method == "server/discover":
            result = self._discover()
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            result = {"tools": [t.describe() for t in self._tools.values()]}
        elif method == "tools/call":
            result = await self._call(params)
        else:
            return _error(msg_id, METHOD_NOT_FOUND, f"method not found: {method}")
        return {"jsonrpc": "2.0", "id": msg_id, "result": result}

    def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        asked = params.get("protocolVersion")
        version = asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1]
        return {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": self.name, "version": self.version},
            "instructions": self.instructions,
        }

    def _discover(self) -> dict[str, Any]:
        """The 2026-07-28 probe, answered with the ``initialize`` revisions we speak: claude
        then goes on to ``initialize`` at once (after "method not found" it waited ~0.1 s
        longer on a loaded machine)."""
        return {
            "supportedVersions": list(HANDSHAKE_VERSIONS),
            "capabilities": {"tools": {"listChanged": False}},
            "instructions": self.instructions,
            "resultType": "complete",
        }

    async def _call(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return _result(f"unknown tool: {name!r}", error=True)
        try:
            text = await tool.fn(**tool.parse(params.get("arguments")))
        except ToolError as exc:
            return _result(str(exc), error=True)
        except Exception:
            log.exception("tool %s failed", tool.name)
            return _result(f"internal error in tool {tool.name} (see the harness log)", error=True)
        return _result(text, error=False)

    # ------------------------------------------------------------ a session

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve one MCP session on ``stream`` (newline-delimited JSON-RPC) until it ends.

        Requests run concurrently (a long ``recv`` does not hold up a ``send``); a
        ``notifications/cancelled`` cancels its request. Returns when the peer closes.
        """
        write_lock = trio.Lock()
        running: dict[object, trio.CancelScope] = {}

        async def write(obj: dict[str, Any]) -> None:
            data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            async with write_lock:
                await stream.send_all(data)

        async def run(
            message: dict[str, Any], key: object, scope: trio.CancelScope, started: float
        ) -> None:
            with scope:
                try:
                    answer = await self.handle(message)
                    if answer is not None:
                        with trio.CancelScope(shield=True):
                            await write(answer)
                finally:
                    running.pop(key, None)
            if message.get("method") == "tools/call" and not scope.cancelled_caught:
                self.call_durations.append(time.perf_counter() - started)

        async with trio.open_nursery() as nursery:
            try:
                async for line in _lines(stream):
                    started = time.perf_counter()
                    try:
                        message = json.loads(line)
                    except ValueError:
                        await write(_error(None, PARSE_ERROR, "invalid JSON"))
                        continue
                    if not isinstance(message, dict):
                        await write(_error(None, INVALID_REQUEST, "not a JSON-RPC object"))
                        continue
                    if "id" not in message:
                        self._notified(message, running)
                        continue
                    if "method" not in message:
                        continue  # an answer to a request of ours: we send none
                    key = call_key(message["id"])
                    if len(running) >= MAX_IN_FLIGHT or key in running:
                        why = "duplicate request id" if key in running else "too many calls at once"
                        await write(_error(message["id"], INVALID_REQUEST, why))
                        continue
                    running[key] = scope = trio.CancelScope()
                    nursery.start_soon(run, message, key, scope, started)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except _LineTooLong:
                log.warning("an MCP client sent a line over %d bytes; session closed", MAX_LINE)
            nursery.cancel_scope.cancel()

    def _notified(self, message: dict[str, Any], running: dict[object, trio.CancelScope]) -> None:
        if message.get("method") == "notifications/cancelled":
            params = message.get("params")
            if isinstance(params, dict):
                scope = running.get(call_key(params.get("requestId")))
                if scope is not None:
                    scope.cancel()


def call_key(msg_id: object) -> object:
    """A request id as a dict key (ids may be numbers or strings; 1 and "1" differ)."""
    return (type(msg_id).__name__, msg_id) if isinstance(msg_id, int | str) else None


class _LineTooLong(Exception):
    pass


async def _lines(stream: trio.abc.ReceiveStream) -> typing.AsyncIterator[bytes]:
    """Complete lines from ``stream`` (newline dropped, blank lines skipped), bounded."""
    buf = bytearray()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        buf += data
        while True:
            end = buf.find(b"\n")
            if end < 0:
                break
            line = bytes(buf[:end])
            del buf[: end + 1]
            if line.strip():
                yield line
        if len(buf) > MAX_LINE:
            raise _LineTooLong
