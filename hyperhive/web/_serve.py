"""Serving the dashboard inside the daemon's tree, as its own failure domain.

A crash of the web stack is logged and the server restarted with backoff; it never takes
the broker down. ``task_status.started`` reports the URLs once the first bind succeeded.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Final

import hypercorn.trio.run
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

from hyperhive.errors import HyperhiveError
from hyperhive.supervision import Backoff, supervise
from hyperhive.web._app import Dashboard
from hyperhive.web._auth import Auth, load_or_create_token

if TYPE_CHECKING:
    from hyperhive.supervisor import Hive

log = logging.getLogger(__name__)
BACKOFF = Backoff(first=1.0, limit=60.0)
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


def hypercorn_config(bind: list[str]) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = bind
    config.accesslog = None
    config.errorlog = logging.getLogger("hyperhive.web.server")
    # Open event streams must not hold a daemon shutdown up for long.
    config.graceful_timeout = 1.0
    # An idle connection (also one whose request head never ends) is closed after 5 s, and
    # its slot under MAX_DASHBOARD_CONNECTIONS is free again then; browsers reconnect.
    config.keep_alive_timeout = 5.0
    return config


class DashboardUnavailable(HyperhiveError):
    """The dashboard could not be served at start (its address is taken or invalid)."""


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc)


async def serve_dashboard(
    hive: Hive,
    bind: list[str],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    token_file = hive.config.paths.state_dir / "dashboard-token"
    token = await trio.to_thread.run_sync(load_or_create_token, token_file)
    dashboard = Dashboard(hive, Auth(token))
    hive.dashboard = dashboard

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(
                functools.partial(
                    serve,
                    dashboard.app(),  # type: ignore[arg-type]
                    hypercorn_config(bind),
                )
            )
            hive.dashboard_urls = urls
            task_status.started(urls)

    def unavailable(exc: BaseException) -> DashboardUnavailable:
        # Cannot even bind (port taken, bad address): a configuration error.
        return DashboardUnavailable(
            f"cannot serve the dashboard on {', '.join(bind)}: {_reason(exc)}"
        )

    await supervise(
        "the dashboard",
        run,
        report=hive.problems.reporter("the dashboard"),
        backoff=BACKOFF,
        start_failure=unavailable,
        task_status=task_status,
    )
