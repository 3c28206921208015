"""Writing a whole line to a trio socket stream at once.

:func:`send_now` is ``stream.send_all(data)`` without its trip through the scheduler when
the socket takes all of it in one ``write`` (the usual case for a request or a reply line):
the read that follows is the caller's checkpoint. The daemon writes its replies so
(:mod:`hyperhive.server`), the client its requests (:mod:`hyperhive.client`).
"""

from __future__ import annotations

import os

import trio


async def send_now(stream: trio.SocketStream, data: bytes, fd: int | None = None) -> None:
    """Send all of ``data`` on ``stream`` (``fd``: its file descriptor, if the caller keeps
    it); the rest, if the socket took only part, through ``send_all``."""
    if fd is None:
        fd = stream.socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the connection was closed")
    try:
        sent = os.write(fd, data)  # a closed peer: EPIPE (Python ignores SIGPIPE)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
    if sent < len(data):
        await stream.send_all(memoryview(data)[sent:])
