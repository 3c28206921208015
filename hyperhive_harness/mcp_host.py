"""The hyperhive tools served by the harness itself, to the claude of the running turn.

    claude ──HTTP──► 127.0.0.1:<port>/mcp/<turn secret> ──► McpHost ──► ToolServer (the
                                                                 │   tools of the role)
                                      agent socket ◄── ConnectionPool

The harness is long-running, so the tools (pydantic models, schemas) are built once per
identity, and the connections to the agent socket are kept across turns: a tool call costs
one socket round trip, and a turn starts no MCP server process (see docs/harness.md).

claude reaches it over MCP's HTTP transport (:mod:`hyperhive_harness.mcp_http`, the turn's
config from :meth:`McpHost.config`): measured against the earlier stdio shim, that spares
claude spawning an interpreter and polling its exit at the end of every turn. The shim
(``python -I -S mcp_shim.py`` to the unix socket ``tools.sock``, :meth:`McpHost.shim_config`)
is still served, for MCP clients that speak only stdio.

Who may use it: every session and every HTTP request must carry the secret of the running
turn (:meth:`McpHost.open_turn`, a fresh 256-bit token per turn, put in claude's MCP config
file in the harness's private runtime directory, 0700). The loopback port is shared by all
agents of the host, so each request is checked; the unix socket is in that private directory
too, mode 0600. Between turns no token is valid, and when a turn ends every session and
connection it opened is closed. The tools act as this harness's agent only (its agent
socket).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import trio

from hyperhive_harness.mcp_http import PATH_PREFIX, serve_connection
from hyperhive_harness.mcp_server import ConnectionPool, build_server
from hyperhive_harness.prompt import mcp_http_config, mcp_shim_config
from hyperhive_harness.toolserver import KEPT_DURATIONS, MAX_IN_FLIGHT, ToolServer, call_key

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
#: The HTTP endpoint's address (a free port is chosen when the host starts).
HTTP_HOST: Final = "127.0.0.1"
#: Open HTTP connections at once (claude keeps a few); more are closed at once.
MAX_HTTP_CONNECTIONS: Final = 32


class McpHost:
    """The tools of one harness for the running turn's claude: its loopback HTTP endpoint
    (what the turns use) and its unix tool socket (for the stdio shim)."""

    def __init__(self, agent_socket: str, listen: Path) -> None:
        self.pool = ConnectionPool(agent_socket)
        self.listen = listen
        self.refused = 0
        #: Seconds per ``tools/call`` (request read → answer written), across sessions.
        self.call_durations: deque[float] = deque(maxlen=KEPT_DURATIONS)
        self._identity: tuple[str, str | None] | None = None
        self._server: ToolServer | None = None
        self._token: str | None = None
        self._sessions: set[trio.CancelScope] = set()
        self._http_connections = 0
        #: HTTP connections that have not shown the turn's secret yet, oldest first: at the
        #: cap the oldest is closed for a new one, so processes that only connect (any on
        #: the host may: the port is on the shared loopback) never lock claude out.
        self._unproven: dict[trio.CancelScope, None] = {}
        self._evicted: set[trio.CancelScope] = set()
        #: Calls of the running turn over HTTP, by request id (for ``notifications/cancelled``).
        self._calls: dict[object, trio.CancelScope] = {}
        #: The HTTP port, once :meth:`run` listens.
        self.port: int | None = None

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
        for scope in self._calls.values():
            scope.cancel()

    def url(self, token: str) -> str:
        """The HTTP endpoint of the turn holding ``token`` (once :meth:`run` listens)."""
        if self.port is None:
            raise RuntimeError("the MCP host is not listening yet")
        return f"http://{HTTP_HOST}:{self.port}{PATH_PREFIX}{token}"

    def config(
        self, python: str, token: str, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """claude's ``--mcp-config`` document for the turn holding ``token``: the tools over
        HTTP (``python`` is not needed; kept so both configs are built alike)."""
        return mcp_http_config(self.url(token), extra)

    def shim_config(
        self, python: str, token: str, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The same through the stdio shim to :attr:`listen`, for stdio-only MCP clients."""
        return mcp_shim_config(python, os.fspath(SHIM), os.fspath(self.listen), token, extra)

    # ------------------------------------------------------------ what the HTTP side uses

    @property
    def token(self) -> str | None:
        """The running turn's secret (``None`` between turns)."""
        return self._token

    @property
    def server(self) -> ToolServer | None:
        return self._server

    @contextlib.contextmanager
    def running_call(self, msg_id: object) -> Iterator[trio.CancelScope | None]:
        """A cancel scope for one HTTP request of the running turn, ``None`` when the turn
        already has :data:`MAX_IN_FLIGHT` calls running or one with the same id."""
        key = call_key(msg_id)
        if len(self._calls) >= MAX_IN_FLIGHT or key in self._calls:
            yield None
            return
        self._calls[key] = scope = trio.CancelScope()
        try:
            yield scope
        finally:
            if self._calls.get(key) is scope:
                del self._calls[key]

    def notified(self, message: dict[str, Any]) -> None:
        """A notification over HTTP: ``notifications/cancelled`` cancels its call."""
        if message.get("method") != "notifications/cancelled":
            return
        params = message.get("params")
        if isinstance(params, dict):
            scope = self._calls.get(call_key(params.get("requestId")))
            if scope is not None:
                scope.cancel()

    # ------------------------------------------------------------ serving

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on :attr:`listen` and on a loopback HTTP port until cancelled."""
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
                [http] = await trio.open_tcp_listeners(0, host=HTTP_HOST)
                self.port = http.socket.getsockname()[1]
                nursery.start_soon(self._accept_http, http)
                task_status.started()
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._session, stream)
        finally:
            self.port = None
            with contextlib.suppress(OSError):
                os.unlink(self.listen)
            with trio.CancelScope(shield=True):
                await self.pool.aclose()

    async def _accept_http(self, listener: trio.SocketListener) -> None:
        async with listener, trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                if self._http_connections >= MAX_HTTP_CONNECTIONS:
                    oldest = next(iter(self._unproven), None)
                    if oldest is None:  # every one carried the secret: the turn's own
                        await stream.aclose()
                        continue
                    del self._unproven[oldest]
                    self._evicted.add(oldest)
                    oldest.cancel()
                    self._http_connections -= 1  # counted here, not when its task ends
                self._http_connections += 1
                scope = trio.CancelScope()
                self._unproven[scope] = None
                nursery.start_soon(self._http_connection, stream, scope)

    async def _http_connection(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        def proven() -> None:
            self._unproven.pop(scope, None)

        try:
            with scope:
                self._sessions.add(scope)
                try:
                    await serve_connection(self, stream, proven)
                finally:
                    self._sessions.discard(scope)
        finally:
            if scope in self._evicted:
                self._evicted.discard(scope)  # no longer counted since it was closed
            else:
                self._unproven.pop(scope, None)
                self._http_connections -= 1

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
