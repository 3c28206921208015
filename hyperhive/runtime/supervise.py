"""A failure domain: one part fails, is shown, and is restarted with backoff.

:func:`supervise` runs one part (in the daemon: an agent's runner or socket server, the
questions watchdog, the retention loop, the dashboard; in the harness: its web UI) until it
returns or the tree is cancelled. An unexpected exception in it is logged with its
traceback, reported, and the part is started again after a doubling delay; the rest keeps
running. A part that has stayed up for :attr:`Backoff.reset_after` seconds since its last
restart is healthy again: the delay starts over and its problem is cleared (reported as
None). Failures ``fatal`` says no part survives are re-raised.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from hyperhive.runtime.backoff import Backoff
from hyperhive.runtime.exceptions import describe

log = logging.getLogger("hyperhive.supervision")

#: Problem text, or None once the part is healthy again.
Report = Callable[[str | None], Awaitable[None]]
DEFAULT_BACKOFF: Final = Backoff()


def _never(exc: BaseException) -> bool:
    return False


async def supervise(
    part: str,
    body: Callable[..., Awaitable[None]],
    *,
    report: Report,
    backoff: Backoff = DEFAULT_BACKOFF,
    start_failure: Callable[[BaseException], BaseException] | None = None,
    fatal: Callable[[BaseException], bool] = _never,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``body(task_status=…)`` as its own failure domain (see the module docstring).

    ``task_status`` is reported after the body's first start (with its value), or after
    its first failure: the rest goes on without the part while it waits to restart.
    ``start_failure`` turns a failure before the first start into an error that ends the
    caller instead (an address that cannot be bound is a configuration error).
    """
    started = False
    delay = backoff.first
    failed = False
    while True:
        try:
            async with trio.open_nursery() as nursery:

                async def run(task_status: trio.TaskStatus[Any]) -> None:
                    await body(task_status=task_status)
                    nursery.cancel_scope.cancel()  # finished: stop the healthy timer too

                value = await nursery.start(run)
                if not started:
                    task_status.started(value)
                    started = True
                if failed:

                    async def healthy() -> None:
                        nonlocal delay, failed
                        await trio.sleep(backoff.reset_after)
                        delay, failed = backoff.first, False
                        await _report(part, report, None, fatal)

                    nursery.start_soon(healthy)
            return
        except Exception as exc:
            if fatal(exc):
                raise
            if not started and start_failure is not None:
                raise start_failure(exc) from None
            log.error("%s failed; restarting in %g s", part, delay, exc_info=exc)
            await _report(
                part, report, f"{part} failed: {describe(exc)}; restarted with backoff", fatal
            )
            failed = True
            if not started:
                task_status.started()
                started = True
            await trio.sleep(delay)
            delay = backoff.after(delay)


async def _report(
    part: str, report: Report, problem: str | None, fatal: Callable[[BaseException], bool]
) -> None:
    # Reporting must not become a second failure (the database may be what is full).
    try:
        await report(problem)
    except Exception as exc:
        if fatal(exc):
            raise
        log.warning("%s: could not report %r: %s", part, problem, describe(exc))
