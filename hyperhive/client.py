"""A trio client for the daemon's sockets (the admin CLI, the harness and the tests use it)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import trio

from hyperhive.config import MAX_LINE_BYTES, PROTOCOL_VERSION
from hyperhive.errors import ClientError, ConnectionLost
from hyperhive.kinds import ConnectionRole
from hyperhive.protocol import (
    OVERSIZED,
    REPLIES,
    Hello,
    LineBuffer,
    Reply,
    Request,
    encode_request,
    structure,
)

R = TypeVar("R", bound=Reply)


class Client:
    """One connection; requests go one at a time, in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = LineBuffer(MAX_LINE_BYTES)
        self._lines: list[bytes] = []
        self._lock = trio.Lock()

    @classmethod
    async def connect(cls, path: Path | str, *, hello_role: str | None = None) -> Client:
        stream = await trio.open_unix_socket(os.fspath(path))
        client = cls(stream)
        if hello_role is not None:
            hello = Hello(role=ConnectionRole(hello_role), protocol=PROTOCOL_VERSION)
            await client.call(hello)
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def raw(self, line: bytes) -> dict[str, Any]:
        """Send raw bytes (a line or garbage) and return the next decoded reply object."""
        async with self._lock:
            await self._stream.send_all(line)
            return await self._read_reply()

    async def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a JSON object; return the reply object, ok or not."""
        line = json.dumps(payload, ensure_ascii=False).encode() + b"\n"
        return await self.raw(line)

    async def call(self, request: Request) -> Reply:
        """Send a typed request; return its typed reply or raise :class:`ClientError`."""
        reply = await self.raw(encode_request(request))
        if not reply.get("ok"):
            raise ClientError(str(reply.get("error", "request failed")))
        reply.pop("ok")
        return structure(reply, REPLIES[type(request)], what=f"{request.CMD!r} reply")

    async def _read_reply(self) -> dict[str, Any]:
        while not self._lines:
            data = await self._stream.receive_some(65536)
            if not data:
                raise ConnectionLost("the daemon closed the connection")
            for line in self._buffer.feed(data):
                if line is OVERSIZED:
                    raise ClientError("reply longer than the protocol allows")
                assert isinstance(line, bytes)
                self._lines.append(line)
        obj = json.loads(self._lines.pop(0))
        if not isinstance(obj, dict):
            raise ClientError("reply is not a JSON object")
        return obj
