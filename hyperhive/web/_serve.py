"""Serving the dashboard inside the daemon's tree, as its own failure domain.

A crash of the web stack is logged and the server restarted with backoff; it never takes
the broker down. ``task_status.started`` reports the URLs once the first bind succeeded.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from hyperhive.errors import HyperhiveError
from hyperhive.supervision import Backoff, supervise
from hyperhive.web._app import Dashboard
from hyperhive.web._auth import Auth

if TYPE_CHECKING:
    from hyperhive.api import Api
    from hyperhive.hive import Hive

log = logging.getLogger(__name__)
BACKOFF = Backoff(first=1.0, limit=60.0)


def hypercorn_config(bind: list[str]) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = bind
    config.accesslog = None
    config.errorlog = logging.getLogger("hyperhive.web.server")
    # Open event streams must not hold a daemon shutdown up for long.
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 75.0
    return config


class DashboardUnavailable(HyperhiveError):
    """The dashboard could not be served at start (its address is taken or invalid)."""


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc)


async def serve_dashboard(
    hive: Hive,
    api: Api,
    auth: Auth,
    bind: list[str],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    dashboard = Dashboard(hive, api, auth)

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(
                functools.partial(
                    serve,
                    dashboard.app(),  # type: ignore[arg-type]
                    hypercorn_config(bind),
                )
            )
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
