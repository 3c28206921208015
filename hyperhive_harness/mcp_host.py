"""The hyperhive tools served by the harness itself, to the claude of the running turn.

    claude ──stdio──► python -I -S mcp_shim.py ──unix socket + turn secret──► McpHost
                                                                               │ ToolServer
                                                                               ▼ (tools of the
                                                       agent socket ◄── ConnectionPool  role)

The harness is long-running, so the tools (pydantic models, schemas) are built once per
identity, and the connections to the agent socket are kept across turns: a tool call costs
one socket round trip, and a turn no longer starts an MCP server process that imports for
a second and a half (see docs/harness.md).

Who may use it: the socket is in the harness's private runtime directory (0700, in the
container's own /tmp), mode 0600, and a session must open with the secret of the running
turn (:meth:`McpHost.open_turn`, a fresh 256-bit token per turn, put in claude's MCP config
file in the same directory). Between turns no token is valid, and when a turn ends every
session it opened is closed. The tools act as this harness's agent only (its agent socket).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import trio

from hyperhive_harness.mcp_server import ConnectionPool, build_server
from hyperhive_harness.prompt import mcp_shim_config
from hyperhive_harness.toolserver import KEPT_DURATIONS, ToolServer

__all__ = ["HANDSHAKE_SECONDS", "SHIM", "McpHost"]

log = logging.getLogger("hyperhive.mcp")

#: The stdlib-only bridge claude starts (``python -I -S <SHIM>``).
SHIM: Final = Path(__file__).with_name("mcp_shim.py")
#: The harness's tool socket in its private runtime dir (not the agent socket).
TOOL_SOCKET_NAME: Final = "tools.sock"
#: How long a new connection has to present the turn's secret.
HANDSHAKE_SECONDS: Final = 5.0
#: The longest first line (the secret) accepted.
MAX_TOKEN_LINE: Final = 256
SOCKET_MODE: Final = 0o600


class McpHost:
    """The tool socket of one harness: sessions for the running turn's claude."""

    def __init__(self, agent_socket: str, listen: Path) -> None:
        self.pool = ConnectionPool(agent_socket)
        self.listen = listen
        self.refused = 0
        #: Seconds per ``tools/call`` (line read → answer written), across sessions.
        self.call_durations: deque[float] = deque(maxlen=KEPT_DURATIONS)
        self._identity: tuple[str, str | None] | None = None
        self._server: ToolServer | None = None
        self._token: str | None = None
        self._sessions: set[trio.CancelScope] = set()

    # ------------------------------------------------------------ what the loop calls

    def set_identity(self, role: str, name: str | None) -> None:
        """The agent socket's ``hello`` said who we are: build that role's tools (once)."""
        if self._identity == (role, name):
            return
        self._identity = (role, name)
        self._server = build_server(self.pool, role=role, name=name)
        self._server.call_durations = self.call_durations

    def open_turn(self) -> str:
        """A new secret for the turn that starts; any earlier one stops working."""
        self.close_turn()
        self._token = secrets.token_hex(32)
        return self._token

    def close_turn(self) -> None:
        """The turn ended: its secret is void and its sessions are closed."""
        self._token = None
        for scope in list(self._sessions):
            scope.cancel()

    def config(
        self, python: str, token: str, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """claude's ``--mcp-config`` document for the turn holding ``token``."""
        return mcp_shim_config(python, os.fspath(SHIM), os.fspath(self.listen), token, extra)

    # ------------------------------------------------------------ serving

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on :attr:`listen` until cancelled."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen)
        try:
            await sock.bind(os.fspath(self.listen))
            os.chmod(self.listen, SOCKET_MODE)
            sock.listen(16)
            listener = trio.SocketListener(sock)
        except BaseException:
            sock.close()
            raise
        try:
            async with listener, trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._session, stream)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.listen)
            with trio.CancelScope(shield=True):
                await self.pool.aclose()

    async def _session(self, stream: trio.SocketStream) -> None:
        async with stream:
            refusal: str | None = f"no secret within {HANDSHAKE_SECONDS:g} s"
            with trio.move_on_after(HANDSHAKE_SECONDS):
                refusal = await self._handshake(stream)
                if refusal is None:
                    await stream.send_all(b"ok\n")
            if refusal is not None or self._server is None:
                self.refused += 1
                log.warning("MCP session refused: %s", refusal)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(f"refused: {refusal}\n".encode())
                return
            with trio.CancelScope() as scope:
                self._sessions.add(scope)
                try:
                    await self._server.serve(stream)
                finally:
                    self._sessions.discard(scope)

    async def _handshake(self, stream: trio.SocketStream) -> str | None:
        """``None`` when the first line is the running turn's secret, else why not."""
        line = b""
        while not line.endswith(b"\n"):
            data = await stream.receive_some(MAX_TOKEN_LINE)
            if not data:
                return "closed before the secret"
            line += data
            if len(line) > MAX_TOKEN_LINE:
                return "first line too long"
        if line.count(b"\n") != 1:
            return "data before the harness said ok"
        token = self._token
        if token is None:
            return "no turn is running"
        if self._server is None:
            return "the harness does not know its agent yet"
        if not hmac.compare_digest(line.strip(), token.encode()):
            return "wrong secret"
        return None
