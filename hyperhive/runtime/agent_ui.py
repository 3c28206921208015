"""HTTP/1.1 exchanges with an agent's UI socket, from the daemon.

The harness serves its UI on ``ui.sock`` in the agent's socket dir; two parts of the daemon
talk to it: the dashboard's proxy (``hyperhive.web._proxy``, the operator's browser) and
the host verb ``compact`` (:func:`post`). Both use :class:`Upstream`.

The other end is untrusted, and the dir is one the agent writes: a symlink planted there
could point the daemon (root) at any unix socket of the host. So the socket file is opened
without following a link and connected to through that very file (``/proc/self/fd/N``).
A request goes out in one write: a UI may answer on the head alone and close, and its
answer is then still there to read (three writes would meet a broken pipe). The answer's
head is bounded in size (:data:`MAX_HEAD_BYTES`) and time (:data:`HEAD_TIMEOUT`), each body
chunk in time (:data:`IDLE_TIMEOUT`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Final

import h11
import trio

CONNECT_TIMEOUT: Final = 5.0
#: From sending the request to the end of the response head.
HEAD_TIMEOUT: Final = 30.0
#: Longest silence inside a response body before it is cut (SSE heartbeats are every 15 s).
IDLE_TIMEOUT: Final = 60.0
MAX_HEAD_BYTES: Final = 16 * 1024
READ_CHUNK: Final = 65536
#: The whole of :func:`post`: connecting, the request and the answer's status line.
POST_TIMEOUT: Final = 10.0


class AgentUiUnavailable(Exception):
    """The agent's UI cannot be reached, or answered with something broken or refused."""


class Upstream:
    """One HTTP/1.1 exchange with an agent's UI socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)

    @classmethod
    async def open(cls, path: Path) -> Upstream:
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise AgentUiUnavailable(f"nothing listens at {path}") from None
        except OSError as exc:
            raise AgentUiUnavailable(f"cannot connect to {path}: {exc.strerror}") from None
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise AgentUiUnavailable(f"{path} is not a socket (a symlink?)")
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_unix_socket(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            raise AgentUiUnavailable(f"nothing listens at {path}") from None
        except trio.TooSlowError:
            raise AgentUiUnavailable(f"no answer from {path} in {CONNECT_TIMEOUT:g} s") from None
        except OSError as exc:
            raise AgentUiUnavailable(f"cannot connect to {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        return cls(stream)

    async def exchange(
        self, method: str, target: bytes, headers: list[tuple[str, str]], body: bytes | None
    ) -> h11.Response:
        """Send the request; the response head."""
        try:
            with trio.fail_after(HEAD_TIMEOUT):
                request = h11.Request(method=method, target=target, headers=headers)
                wire = self._conn.send(request) or b""
                if body:
                    wire += self._conn.send(h11.Data(data=body)) or b""
                wire += self._conn.send(h11.EndOfMessage()) or b""
                # In one piece: a UI may answer on the head alone and close; then its answer
                # is still there to read.
                with contextlib.suppress(trio.BrokenResourceError):
                    await self._stream.send_all(wire)
                while True:
                    event = await self._next_event()
                    if isinstance(event, h11.Response):
                        return event
                    if not isinstance(event, h11.InformationalResponse):
                        raise AgentUiUnavailable("the agent's UI closed without an answer")
        except trio.TooSlowError:
            raise AgentUiUnavailable(f"no answer in {HEAD_TIMEOUT:g} s") from None
        except (h11.ProtocolError, trio.BrokenResourceError, OSError) as exc:
            raise AgentUiUnavailable(f"broken answer from the agent's UI: {exc}") from None

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body; None at its end, after a silence of
        :data:`IDLE_TIMEOUT` or when the upstream breaks off."""
        with trio.move_on_after(IDLE_TIMEOUT):
            try:
                event = await self._next_event()
            except (h11.ProtocolError, trio.BrokenResourceError, OSError):
                return None
            return bytes(event.data) if isinstance(event, h11.Data) else None
        return None

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._stream.receive_some(READ_CHUNK))
                continue
            return event

    async def aclose(self) -> None:
        await self._stream.aclose()


async def post(path: Path, target: str) -> int:
    """``POST target`` (an empty JSON body) on the UI socket at ``path``; the status code.
    Only the status line is read; the whole exchange is bounded by :data:`POST_TIMEOUT`."""
    body = b"{}"
    headers = [
        ("host", "localhost"),
        ("connection", "close"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
    ]
    try:
        with trio.fail_after(POST_TIMEOUT):
            upstream = await Upstream.open(path)
            try:
                head = await upstream.exchange("POST", target.encode(), headers, body)
            finally:
                with trio.CancelScope(shield=True):
                    await upstream.aclose()
    except trio.TooSlowError:
        raise AgentUiUnavailable(f"no answer from {path} in {POST_TIMEOUT:g} s") from None
    return head.status_code
