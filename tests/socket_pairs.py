"""Both ends of a real unix socket pair, and reading JSON lines from one, for the tests of
the socket server's connection loop."""

from __future__ import annotations

import json
from typing import Any

import trio


async def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def read_line(stream: trio.SocketStream, buf: bytearray) -> dict[str, Any]:
    """The next JSON object line from ``stream``; ``buf`` keeps what came after it."""
    with trio.fail_after(10):
        while b"\n" not in buf:
            data = await stream.receive_some(65536)
            assert data, "closed"
            buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    obj = json.loads(line)
    assert isinstance(obj, dict)
    return obj
