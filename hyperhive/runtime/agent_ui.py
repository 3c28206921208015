"""One request to an agent's UI socket from the daemon (the host verb ``compact``).

The harness serves its UI on ``ui.sock`` in the agent's socket dir, a dir the agent writes:
a symlink planted there could point the daemon (root) at any unix socket of the host. So,
as the dashboard's proxy does, the socket file is opened without following a link and
connected to through that very file (``/proc/self/fd/N``). The answer is read only up to its
status line and bounded in size and time.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

import h11
import trio

TIMEOUT: Final = 10.0
MAX_ANSWER_BYTES: Final = 16 * 1024


class AgentUiUnavailable(Exception):
    """The agent's UI cannot be reached, or answered with something broken."""


async def post(path: Path, target: str) -> int:
    """``POST target`` (an empty JSON body) on the UI socket at ``path``; the status code."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise AgentUiUnavailable(f"cannot open {path}: {exc.strerror}") from None
    try:
        with trio.fail_after(TIMEOUT):
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise AgentUiUnavailable(f"{path} is not a socket")
            stream = await trio.open_unix_socket(f"/proc/self/fd/{fd}")
            async with stream:
                return await _exchange(stream, target)
    except trio.TooSlowError:
        raise AgentUiUnavailable(f"no answer from {path} in {TIMEOUT:g} s") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise AgentUiUnavailable(f"broken exchange with {path}: {exc}") from None
    finally:
        os.close(fd)


async def _exchange(stream: trio.SocketStream, target: str) -> int:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_ANSWER_BYTES)
    body = b"{}"
    headers = [
        ("host", "localhost"),
        ("connection", "close"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
    ]
    request = h11.Request(method="POST", target=target, headers=headers)
    for out in (request, h11.Data(data=body), h11.EndOfMessage()):
        await stream.send_all(conn.send(out) or b"")
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(MAX_ANSWER_BYTES)
            if not data:
                raise AgentUiUnavailable("the agent's UI closed without an answer")
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            return event.status_code
        elif not isinstance(event, h11.InformationalResponse):
            raise AgentUiUnavailable("the agent's UI closed without an answer")
