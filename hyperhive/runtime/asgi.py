"""An ASGI app on hypercorn-trio as its own failure domain: the dashboard and each agent's UI.

:func:`serve_asgi` binds, serves, and when the server fails restarts it with backoff
(:func:`~hyperhive.runtime.supervise`), so a broken web stack never takes down what it
shows. ``listen`` opens the listener of one attempt: a context manager giving hypercorn's
bind list (a ``fd://`` of a socket bound by the caller, or addresses), left when that
attempt ends; ``on_bound`` sees the bound URLs of every attempt. ``task_status`` gets the
URLs of the first attempt that came up (or None once the first attempt failed, without
``start_failure``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from hyperhive.runtime.backoff import Backoff
from hyperhive.runtime.supervise import Report, supervise

Listen = Callable[[], AbstractContextManager[list[str]]]


def hypercorn_config(bind: list[str], *, graceful_timeout: float = 1.0) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = bind
    config.accesslog = None
    config.errorlog = logging.getLogger("hyperhive.web.server")
    # Open event streams must not hold a shutdown up for long.
    config.graceful_timeout = graceful_timeout
    # An idle connection (also one whose request head never ends) is closed after 5 s: the
    # dashboard is reachable from every agent (they share the host's network), and its
    # connections are capped (hyperhive/web/_serve.py); browsers reconnect at once.
    config.keep_alive_timeout = 5.0
    return config


def addresses(bind: list[str]) -> Listen:
    """``listen`` for fixed addresses (``host:port``, ``unix:/path``)."""
    return lambda: contextlib.nullcontext(bind)


async def serve_asgi(
    part: str,
    app: Any,
    listen: Listen,
    *,
    report: Report,
    backoff: Backoff,
    start_failure: Callable[[BaseException], BaseException] | None = None,
    on_bound: Callable[[list[str]], None] | None = None,
    graceful_timeout: float = 1.0,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled, restarted with ``backoff`` when it fails."""

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        with listen() as bind:
            config = hypercorn_config(bind, graceful_timeout=graceful_timeout)
            async with trio.open_nursery() as nursery:
                urls: list[str] = await nursery.start(functools.partial(serve, app, config))
                if on_bound is not None:
                    on_bound(urls)
                task_status.started(urls)

    await supervise(
        part,
        run,
        report=report,
        backoff=backoff,
        start_failure=start_failure,
        task_status=task_status,
    )
