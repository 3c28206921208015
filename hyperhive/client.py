"""A trio client for the daemon's sockets: the admin CLI, the harness (its turn loop, its UI,
its MCP server, ``wake``) and the tests use it.

Its errors are :mod:`hyperhive.errors`'s client family: :class:`~hyperhive.errors.ClientError`
when the daemon answered ``ok: false`` (a real answer: the connection is still good), and its
subclass :class:`~hyperhive.errors.ConnectionLost` when the daemon cannot be reached or the
connection broke (reconnecting may help). ``Client.connect`` alone lets the ``OSError`` of the
connect itself through (the CLI tells a missing socket from a permission problem with it);
:meth:`Client.open` turns it into ``ConnectionLost`` too.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs
import orjson
import trio

from hyperhive.config import MAX_LINE_BYTES, PROTOCOL_VERSION
from hyperhive.errors import ClientError, ConnectionLost, ProtocolError
from hyperhive.kinds import ConnectionRole
from hyperhive.protocol import (
    OVERSIZED,
    REPLIES,
    Hello,
    HelloReply,
    LineBuffer,
    Reply,
    Request,
    encode_request,
    structure,
)
from hyperhive.runtime.send import send_now

R = TypeVar("R", bound=Reply)


class Client:
    """One connection; requests go one at a time, in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = LineBuffer(MAX_LINE_BYTES)
        self._lines: list[bytes] = []
        self._lock = trio.Lock()
        #: The daemon's answer to this connection's ``hello`` (set by :meth:`open`).
        self.hello: HelloReply | None = None

    @classmethod
    async def connect(cls, path: Path | str, *, hello_role: str | None = None) -> Client:
        stream = await trio.open_unix_socket(os.fspath(path))
        client = cls(stream)
        if hello_role is not None:
            hello = Hello(role=ConnectionRole(hello_role), protocol=PROTOCOL_VERSION)
            await client.call(hello)
        return client

    @classmethod
    async def open(cls, path: Path | str, *, role: str) -> Client:
        """Connect and say ``hello`` as ``role``; :attr:`hello` holds the answer (the agent's
        name and role). Not reaching the daemon at all is :class:`ConnectionLost` too."""
        try:
            stream = await trio.open_unix_socket(os.fspath(path))
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {path}: {exc.strerror or exc}") from None
        client = cls(stream)
        try:
            hello = await client.call(Hello(role=role, protocol=PROTOCOL_VERSION))  # type: ignore[arg-type]
        except BaseException:
            with trio.CancelScope(shield=True):
                await client.aclose()
            raise
        assert isinstance(hello, HelloReply)
        client.hello = hello
        return client

    @property
    def name(self) -> str:
        """The name the daemon knows this connection by (after :meth:`open`)."""
        return self.hello.name if self.hello is not None else ""

    @property
    def role(self) -> str:
        return self.hello.role if self.hello is not None else ""

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (a connection that is already broken closes quietly)."""
        with trio.CancelScope(shield=True), contextlib.suppress(OSError, trio.BrokenResourceError):
            await self._stream.aclose()

    async def raw(self, line: bytes) -> dict[str, Any]:
        """Send raw bytes (a line or garbage) and return the next decoded reply object.

        One request at a time: a second caller waits for the first one's reply. The usual
        case costs one trip through the scheduler (waiting for the reply): the lock is taken
        without one when it is free, and the line written at once when the socket takes it
        all (as the daemon writes its replies)."""
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller sends nothing
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()
        try:
            await send_now(self._stream, line)
            return await self._read_reply()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"the connection to the daemon broke: {exc}") from None
        finally:
            self._lock.release()

    async def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a JSON object; return the reply object, ok or not."""
        line = json.dumps(payload, ensure_ascii=False).encode() + b"\n"
        return await self.raw(line)

    async def call(self, request: Request) -> Reply:
        """Send a typed request; return its typed reply. Raises :class:`ClientError` when the
        daemon refuses it (or answers with something that is not its reply), and
        :class:`ConnectionLost` when the connection fails."""
        reply = await self.raw(encode_request(request))
        if not reply.get("ok"):
            raise ClientError(str(reply.get("error", "request failed")))
        reply.pop("ok")
        cls = REPLIES[type(request)]
        if not _has_protocol_field(cls):
            reply.pop("protocol", None)  # the host socket's envelope field
        try:
            return structure(reply, cls, what=f"{request.CMD!r} reply")
        except ProtocolError as exc:
            raise ClientError(f"unexpected reply to {request.CMD!r}: {exc}") from None

    async def receive(self) -> dict[str, Any]:
        """The next line the daemon pushes (after ``watch``), as a JSON object."""
        try:
            return await self._read_reply()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"the connection to the daemon broke: {exc}") from None

    async def _read_reply(self) -> dict[str, Any]:
        while not self._lines:
            data = await self._stream.receive_some(65536)
            if not data:
                raise ConnectionLost("the daemon closed the connection")
            for line in self._buffer.feed(data):
                if line is OVERSIZED:
                    raise ConnectionLost("reply longer than the protocol allows")
                assert isinstance(line, bytes)
                self._lines.append(line)
        line = self._lines.pop(0)
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:  # what orjson refuses (NaN, say), json may read
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
        if not isinstance(obj, dict):
            raise ConnectionLost("reply is not a JSON object")
        return obj


_PROTOCOL_FIELD: dict[Any, bool] = {}


def _has_protocol_field(cls: Any) -> bool:
    """Whether the reply class has a ``protocol`` field (looked up once per class)."""
    has = _PROTOCOL_FIELD.get(cls)
    if has is None:
        has = _PROTOCOL_FIELD[cls] = "protocol" in attrs.fields_dict(cls)
    return has


async def call_once(path: Path | str, request: Request, *, role: str = "cli") -> Reply:
    """Connect, say hello as ``role``, make one request, close (the harness's UI and its
    ``wake`` command use ``cli``, which never makes the daemon hand messages out again)."""
    async with await Client.open(path, role=role) as client:
        return await client.call(request)
