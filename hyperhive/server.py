"""Unix-socket servers speaking JSON lines; the identity of a caller is the socket it used.

:func:`serve_unix_socket` binds one socket for one :class:`Principal`, and
:func:`handle_connection` runs the request/reply loop of one connection: bytes in through
the sans-IO :class:`LineBuffer`, each line decoded by the socket's request table, handed to
the dispatcher, and the reply (or ``{"ok": false, "error": …}``) written back. Nothing a
client sends can end the loop except closing the connection.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket as stdlib_socket
from collections import deque
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import attrs
import trio

from hyperhive.config import MAX_SOCKET_PATH
from hyperhive.errors import ProtocolError, RequestRefused
from hyperhive.protocol import (
    AGENT_TABLE,
    HOST_TABLE,
    MANAGER_TABLE,
    LineBuffer,
    Oversized,
    Reply,
    Request,
    RequestTable,
    encode_error,
    encode_reply,
)

log = logging.getLogger(__name__)
RECEIVE_CHUNK = 64 * 1024


class SocketKind(StrEnum):
    HOST = "host"
    MANAGER = "manager"
    AGENT = "agent"


@attrs.frozen
class Principal:
    """Who is on the other end: fixed by the socket, never by a payload."""

    kind: SocketKind
    #: ``operator`` on the host socket, ``manager`` on the manager's, the agent's name otherwise.
    name: str

    @property
    def table(self) -> RequestTable:
        return {
            SocketKind.HOST: HOST_TABLE,
            SocketKind.MANAGER: MANAGER_TABLE,
            SocketKind.AGENT: AGENT_TABLE,
        }[self.kind]


@attrs.define
class Connection:
    """Per-connection state the dispatcher may keep (what the client said in ``hello``)."""

    principal: Principal
    peer_pid: int | None
    role: str | None = None


class Endpoint(Protocol):
    """What a socket serves: the daemon's API, seen from one connection's loop."""

    async def dispatch(self, conn: Connection, request: Request) -> Reply: ...

    def blocks(self, request: Request) -> bool:
        """True for requests that may wait long (a long-poll): the loop watches for hang-ups."""
        ...

    async def reply_lost(self, conn: Connection, request: Request, reply: Reply) -> None:
        """A reply was produced but never reached the client (it hung up)."""
        ...

    def closed(self, conn: Connection) -> None: ...


def _peer_pid(stream: trio.SocketStream) -> int | None:
    try:
        creds = stream.socket.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PEERCRED, 12)
    except OSError:
        return None
    return int.from_bytes(creds[:4], "little")


Frame = bytes | Oversized


async def handle_connection(
    stream: trio.SocketStream, principal: Principal, endpoint: Endpoint
) -> None:
    conn = Connection(principal, _peer_pid(stream))
    buffer = LineBuffer()
    pending: deque[Frame] = deque()
    try:
        while True:
            if not pending:
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    return
                pending.extend(buffer.feed(data))
                continue
            line = pending.popleft()
            request: Request | None = None
            reply: Reply | None = None
            if isinstance(line, bytes):
                request, reply, wire, hung_up = await _answer(
                    conn, line, endpoint, stream, buffer, pending
                )
                if hung_up:
                    if request is not None and reply is not None:
                        with trio.CancelScope(shield=True):
                            await endpoint.reply_lost(conn, request, reply)
                    return
            else:
                wire = encode_error(
                    f"request line longer than {buffer.max_line} bytes; it was discarded"
                )
            try:
                await stream.send_all(wire)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if request is not None and reply is not None:
                    with trio.CancelScope(shield=True):
                        await endpoint.reply_lost(conn, request, reply)
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        endpoint.closed(conn)
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _answer(
    conn: Connection,
    line: bytes,
    endpoint: Endpoint,
    stream: trio.SocketStream,
    buffer: LineBuffer,
    pending: deque[Frame],
) -> tuple[Request | None, Reply | None, bytes, bool]:
    """Decode and dispatch one line: (request, reply, bytes to send, client hung up)."""
    try:
        request = conn.principal.table.decode(line)
    except ProtocolError as exc:
        return None, None, encode_error(str(exc)), False
    try:
        if endpoint.blocks(request):
            reply, hung_up = await _dispatch_watching(
                conn, request, endpoint, stream, buffer, pending
            )
            if reply is None:
                return request, None, b"", True
        else:
            reply, hung_up = await endpoint.dispatch(conn, request), False
        return request, reply, encode_reply(reply), hung_up
    except RequestRefused as exc:
        return request, None, encode_error(str(exc)), False
    except Exception as exc:
        # A bug must not take the daemon down; the caller learns something went wrong.
        log.exception(
            "internal error while handling a request on the %s socket", conn.principal.kind
        )
        return request, None, encode_error(f"internal error: {type(exc).__name__}: {exc}"), False


async def _dispatch_watching(
    conn: Connection,
    request: Request,
    endpoint: Endpoint,
    stream: trio.SocketStream,
    buffer: LineBuffer,
    pending: deque[Frame],
) -> tuple[Reply | None, bool]:
    """Dispatch while reading the socket: a hang-up cancels the request.

    Without this a long-poll ``recv`` of a client that went away would stay parked and,
    woken by the next send, take that message for nobody. Requests the client pipelined
    meanwhile are buffered for their turn.
    """
    reply: Reply | None = None
    failure: Exception | None = None
    hung_up = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal hung_up
            while True:
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    hung_up = True
                    nursery.cancel_scope.cancel()
                    return
                pending.extend(buffer.feed(data))

        async def run() -> None:
            nonlocal reply, failure
            try:
                reply = await endpoint.dispatch(conn, request)
            except Exception as exc:  # re-raised below, outside the task group
                failure = exc
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(run)
    if failure is not None:
        raise failure
    return reply, hung_up


def _socket_for(path: Path) -> trio.socket.SocketType:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise OSError(
            errno.ENAMETOOLONG,
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter run dir",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Only the lock holder gets here, so a file left at the path is a stale socket.
    path.unlink(missing_ok=True)
    return trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)


async def serve_unix_socket(
    path: Path,
    principal: Principal,
    endpoint: Endpoint,
    *,
    mode: int = 0o660,
    group: int | None = None,
    dir_mode: int | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``path`` until cancelled, then remove the socket file.

    ``mode``/``group`` apply to the socket file, ``dir_mode`` (when given) to its directory.
    """
    sock = _socket_for(path)
    try:
        if dir_mode is not None:
            os.chmod(path.parent, dir_mode)
        await sock.bind(os.fspath(path))
        os.chmod(path, mode)
        if group is not None:
            os.chown(path, -1, group)
        sock.listen(128)
        listener = trio.SocketListener(sock)

        async def handler(stream: trio.SocketStream) -> None:
            await handle_connection(stream, principal, endpoint)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, [listener])
            task_status.started()
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
