"""Failure domains: one part of the daemon fails, is shown, and is restarted with backoff.

:func:`supervise` (the shared :func:`hyperhive.runtime.supervise`) runs one part (an
agent's runner, an agent's socket server, the questions watchdog, the retention loop, the
dashboard) until it returns or the tree is cancelled. An
unexpected exception in it is logged with its traceback, reported (on the agent's
``warning`` and to the manager for an agent's part, on the daemon's ``problems`` for the
others), and the part is started again after a doubling delay; the rest of the daemon
keeps running. A part that has stayed up for :attr:`Backoff.reset_after` seconds since
its last restart is healthy again: the delay starts over and its problem is cleared.

The one failure no part survives is the broker database's own (:class:`DatabaseFailed`):
it is re-raised so that the daemon ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from hyperhive import runtime, system_messages
from hyperhive.events import EventHub
from hyperhive.protocol.event_payloads import ProblemsChanged
from hyperhive.runtime import Backoff, Report, describe
from hyperhive.runtime.supervise import DEFAULT_BACKOFF
from hyperhive.store import DatabaseClosed, DatabaseFailed

if TYPE_CHECKING:
    from hyperhive.broker import Broker
    from hyperhive.registry import Registry

__all__ = [
    "DEFAULT_BACKOFF",
    "Backoff",
    "Problems",
    "Report",
    "agent_reporter",
    "describe",
    "is_fatal",
    "supervise",
]


def is_fatal(exc: BaseException) -> bool:
    """True when ``exc`` is (or contains) a failure of the broker database itself."""
    return runtime.find(exc, (DatabaseFailed, DatabaseClosed)) is not None


async def supervise(
    part: str,
    body: Callable[..., Awaitable[None]],
    *,
    report: Report,
    backoff: Backoff = DEFAULT_BACKOFF,
    start_failure: Callable[[BaseException], BaseException] | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """:func:`hyperhive.runtime.supervise` with the daemon's one fatal failure: the broker
    database's own (see the module docstring)."""
    await runtime.supervise(
        part,
        body,
        report=report,
        backoff=backoff,
        start_failure=start_failure,
        fatal=is_fatal,
        task_status=task_status,
    )


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
        await broker.inject([system_messages.agent_error(name, problem)])

    return report
