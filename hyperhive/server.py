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
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path

import attrs
import trio

from hyperhive.config import MAX_SOCKET_PATH
from hyperhive.errors import ProtocolError, RequestRefused
from hyperhive.protocol import (
    AGENT_TABLE,
    HOST_TABLE,
    MANAGER_TABLE,
    OVERSIZED,
    LineBuffer,
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


Dispatch = Callable[[Connection, Request], Awaitable[Reply]]
OnClose = Callable[[Connection], None]


def _peer_pid(stream: trio.SocketStream) -> int | None:
    try:
        creds = stream.socket.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PEERCRED, 12)
    except OSError:
        return None
    return int.from_bytes(creds[:4], "little")


async def handle_connection(
    stream: trio.SocketStream, principal: Principal, dispatch: Dispatch, on_close: OnClose
) -> None:
    conn = Connection(principal, _peer_pid(stream))
    buffer = LineBuffer()
    try:
        while True:
            data = await stream.receive_some(RECEIVE_CHUNK)
            if not data:
                return
            for line in buffer.feed(data):
                if line is OVERSIZED:
                    reply = encode_error(
                        f"request line longer than {buffer.max_line} bytes; it was discarded"
                    )
                else:
                    assert isinstance(line, bytes)
                    reply = await _answer(conn, principal.table, line, dispatch)
                await stream.send_all(reply)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        on_close(conn)
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _answer(conn: Connection, table: RequestTable, line: bytes, dispatch: Dispatch) -> bytes:
    try:
        request = table.decode(line)
        return encode_reply(await dispatch(conn, request))
    except (ProtocolError, RequestRefused) as exc:
        return encode_error(str(exc))
    except Exception as exc:
        # A bug must not take the daemon down; the caller learns something went wrong.
        log.exception(
            "internal error while handling a request on the %s socket", conn.principal.kind
        )
        return encode_error(f"internal error: {type(exc).__name__}: {exc}")


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
    dispatch: Dispatch,
    on_close: OnClose,
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
            await handle_connection(stream, principal, dispatch, on_close)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, [listener])
            task_status.started()
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
