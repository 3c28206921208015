"""Failure domains: one part of the daemon fails, is shown, and is restarted with backoff.

:func:`supervise` runs one part (an agent's runner, an agent's socket server, the questions
watchdog, the retention loop, the dashboard) until it returns or the tree is cancelled. An
unexpected exception in it is logged with its traceback, reported (on the agent's
``warning`` and to the manager for an agent's part, on the daemon's ``problems`` for the
others), and the part is started again after a doubling delay; the rest of the daemon
keeps running. A part that has stayed up for :attr:`Backoff.reset_after` seconds since
its last restart is healthy again: the delay starts over and its problem is cleared.

The one failure no part survives is the broker database's own (:class:`DatabaseFailed`):
it is re-raised so that the daemon ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from hyperhive.broker import Outgoing
from hyperhive.events import EventHub
from hyperhive.names import MANAGER, SYSTEM
from hyperhive.protocol import system_body
from hyperhive.protocol.event_payloads import ProblemsChanged
from hyperhive.protocol.system_messages import AgentError
from hyperhive.store import DatabaseClosed, DatabaseFailed

if TYPE_CHECKING:
    from hyperhive.broker import Broker
    from hyperhive.registry import Registry

log = logging.getLogger(__name__)

#: Problem text, or None once the part is healthy again.
Report = Callable[[str | None], Awaitable[None]]


@attrs.frozen
class Backoff:
    """Delays between restarts of one part: ``first`` doubling up to ``limit``."""

    first: float = 1.0
    limit: float = 60.0
    reset_after: float = 60.0

    def after(self, delay: float) -> float:
        return min(delay * 2, self.limit)


DEFAULT_BACKOFF: Final = Backoff()


def is_fatal(exc: BaseException) -> bool:
    """True when ``exc`` is (or contains) a failure of the broker database itself."""
    if isinstance(exc, BaseExceptionGroup):
        return any(is_fatal(e) for e in exc.exceptions)
    return isinstance(exc, DatabaseFailed | DatabaseClosed)


def describe(exc: BaseException) -> str:
    """``Type: message`` of the innermost single exception (task groups unwrapped)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def supervise(
    part: str,
    body: Callable[..., Awaitable[None]],
    *,
    report: Report,
    backoff: Backoff = DEFAULT_BACKOFF,
    start_failure: Callable[[BaseException], BaseException] | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``body(task_status=…)`` as its own failure domain (see the module docstring).

    ``task_status`` is reported after the body's first start (with its value), or after
    its first failure: the daemon goes on without the part while it waits to restart.
    ``start_failure`` turns a failure before the first start into an error that ends the
    daemon instead (an address that cannot be bound is a configuration error).
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
                        await _report(part, report, None)

                    nursery.start_soon(healthy)
            return
        except Exception as exc:
            if is_fatal(exc):
                raise
            if not started and start_failure is not None:
                raise start_failure(exc) from None
            log.error("%s failed; restarting in %.0f s", part, delay, exc_info=exc)
            await _report(part, report, f"{part} failed: {describe(exc)}; restarted with backoff")
            failed = True
            if not started:
                task_status.started()
                started = True
            await trio.sleep(delay)
            delay = backoff.after(delay)


async def _report(part: str, report: Report, problem: str | None) -> None:
    # Reporting must not become a second failure (the database may be what is full).
    try:
        await report(problem)
    except Exception as exc:
        if is_fatal(exc):
            raise
        log.warning("%s: could not report %r: %s", part, problem, describe(exc))


class Problems:
    """What is wrong with the daemon itself (not with one agent), by part: for ``status``."""

    def __init__(self, events: EventHub) -> None:
        self._events = events
        self._by_part: dict[str, str] = {}

    def list(self) -> list[str]:
        return [self._by_part[p] for p in sorted(self._by_part)]

    def set(self, part: str, problem: str | None) -> None:
        if self._by_part.get(part) == problem:
            return
        if problem is None:
            del self._by_part[part]
        else:
            self._by_part[part] = problem
        self._events.emit(ProblemsChanged(problems=self.list()))

    def reporter(self, part: str) -> Report:
        async def report(problem: str | None) -> None:
            self.set(part, problem)

        return report


def agent_reporter(registry: Registry, broker: Broker, name: str) -> Report:
    """Report a failed part of one agent: its ``warning``, and ``agent_error`` to the manager."""
    shown: list[str] = []

    async def report(problem: str | None) -> None:
        if problem is None:
            if shown and registry.get(name).warning == shown[-1]:
                await registry.update(name, warning=None)
            shown.clear()
            return
        shown[:] = [problem]
        await registry.update(name, warning=problem)
        body = system_body(AgentError(agent=name, error=problem))
        await broker.inject([Outgoing(SYSTEM, MANAGER, body)])

    return report
