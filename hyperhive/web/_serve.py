"""Serving the dashboard inside the daemon's tree, as its own failure domain.

The shared supervised ASGI loop (:func:`hyperhive.runtime.asgi.serve_asgi`): a crash of
the web stack is logged and the server restarted with backoff; it never takes
the broker down. ``task_status.started`` reports the URLs once the first bind succeeded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import hypercorn.trio.run
import trio
from hypercorn.trio.tcp_server import TCPServer

from hyperhive.errors import HyperhiveError
from hyperhive.runtime import innermost
from hyperhive.runtime.asgi import addresses, serve_asgi
from hyperhive.supervision import Backoff
from hyperhive.web._app import Dashboard
from hyperhive.web._auth import Auth

if TYPE_CHECKING:
    from hyperhive.api import Api
    from hyperhive.hive import Hive

BACKOFF: Final = Backoff(first=1.0, limit=60.0)
#: Most TCP connections the dashboard holds at once. Agents share the host's network, so
#: any of them can connect; without a cap, thousands of idle connections would take the
#: daemon's file descriptors (and its sockets and files with them) and its memory. Past the
#: cap a new connection is closed at once: the dashboard may be busy, the daemon is not.
MAX_DASHBOARD_CONNECTIONS: Final = 256


class _CappedTCPServer(TCPServer):
    """Hypercorn's per-connection server, refusing connections past the cap."""

    active = 0

    async def run(self) -> None:
        if _CappedTCPServer.active >= MAX_DASHBOARD_CONNECTIONS:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()
            return
        _CappedTCPServer.active += 1
        try:
            await super().run()
        finally:
            _CappedTCPServer.active -= 1


# hypercorn's trio worker makes one TCPServer per accepted connection; it has no cap of
# its own, so the worker is given this one.
hypercorn.trio.run.TCPServer = _CappedTCPServer  # type: ignore[attr-defined]


class DashboardUnavailable(HyperhiveError):
    """The dashboard could not be served at start (its address is taken or invalid)."""


async def serve_dashboard(
    hive: Hive,
    api: Api,
    auth: Auth,
    bind: list[str],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    dashboard = Dashboard(hive, api, auth)

    def unavailable(exc: BaseException) -> DashboardUnavailable:
        # Cannot even bind (port taken, bad address): a configuration error.
        return DashboardUnavailable(
            f"cannot serve the dashboard on {', '.join(bind)}: {innermost(exc)}"
        )

    await serve_asgi(
        "the dashboard",
        dashboard.app(),
        addresses(bind),
        report=hive.problems.reporter("the dashboard"),
        backoff=BACKOFF,
        start_failure=unavailable,
        task_status=task_status,
    )
