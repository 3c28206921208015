"""The harness's connection to its agent socket, with the two failures told apart.

:class:`Disconnected` — the daemon is not there (connect refused, socket missing, the
connection closed mid-request): the turn loop reconnects with backoff.
:class:`Refused` — the daemon answered ``ok: false``: a real answer, not a reason to reconnect.

The turn loop's connection says ``hello`` as ``harness`` (which makes the daemon hand out
again what this agent took but never acked); short-lived connections for the UI and the
``wake`` command say ``hello`` as ``cli`` so they never trigger that.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import trio

from hyperhive.client import Client
from hyperhive.config import PROTOCOL_VERSION
from hyperhive.errors import ClientError, ProtocolError
from hyperhive.kinds import ConnectionRole, PeerRole
from hyperhive.protocol import REPLIES, Hello, HelloReply, Reply, Request, encode_request, structure

R = TypeVar("R", bound=Reply)


class LinkError(Exception):
    pass


class Disconnected(LinkError):
    """The daemon cannot be reached or dropped the connection."""


class Refused(LinkError):
    """The daemon answered ``ok: false``; the message is its reason."""


class DaemonLink:
    def __init__(self, client: Client, hello: HelloReply) -> None:
        self._client = client
        self.hello = hello

    @property
    def name(self) -> str:
        return self.hello.name

    @property
    def role(self) -> str:
        return self.hello.role

    @classmethod
    async def connect(cls, path: Path | str, *, role: str) -> DaemonLink:
        try:
            stream = await trio.open_unix_socket(os.fspath(path))
        except OSError as exc:
            raise Disconnected(f"cannot connect to {path}: {exc.strerror or exc}") from None
        unknown = HelloReply(protocol=PROTOCOL_VERSION, name="", role=PeerRole.AGENT)
        link = cls(Client(stream), unknown)
        try:
            hello = await link.call(Hello(role=ConnectionRole(role), protocol=PROTOCOL_VERSION))
        except BaseException:
            await link.aclose()
            raise
        assert isinstance(hello, HelloReply)
        link.hello = hello
        return link

    async def call(self, request: Request) -> Reply:
        try:
            reply = await self._client.raw(encode_request(request))
        except (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            ClientError,
            ValueError,
        ) as exc:
            raise Disconnected(f"lost the daemon during {request.CMD!r}: {exc}") from None
        if not reply.get("ok"):
            raise Refused(str(reply.get("error", f"{request.CMD!r} was refused")))
        reply.pop("ok")
        try:
            return structure(reply, REPLIES[type(request)], what=f"{request.CMD!r} reply")
        except ProtocolError as exc:
            raise Refused(f"unexpected reply to {request.CMD!r}: {exc}") from None

    async def aclose(self) -> None:
        with (
            trio.CancelScope(shield=True),
            contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self._client.aclose()

    async def __aenter__(self) -> DaemonLink:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def one_call(path: Path | str, request: Request) -> Reply:
    """Connect as ``cli``, make one request, close (the UI and the ``wake`` command)."""
    async with await DaemonLink.connect(path, role="cli") as link:
        return await link.call(request)


__all__ = ["DaemonLink", "Disconnected", "LinkError", "Refused", "one_call"]
