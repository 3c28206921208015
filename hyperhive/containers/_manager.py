"""The agents' containers as a whole: one backend, one runner per agent, lifecycle requests.

Each runner is its own failure domain (:func:`~hyperhive.supervision.supervise`): a bug
that ends one is shown on its agent, reported to the manager, and the runner restarted
with backoff (it re-adopts the payload); the other agents never notice.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import trio

from hyperhive.config import RESTART_BACKOFF
from hyperhive.containers._backend import AgentSpec, Backend, tail_lines
from hyperhive.containers._runner import AgentRunner
from hyperhive.errors import RequestRefused
from hyperhive.kinds import AgentState, LifecycleVerb
from hyperhive.runtime import Backoff
from hyperhive.supervision import Report, supervise

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from hyperhive.broker import Broker
    from hyperhive.clocks import WallClock
    from hyperhive.config import Paths
    from hyperhive.events import EventHub
    from hyperhive.registry import Registry
    from hyperhive.store import Conn


def default_harness_command() -> tuple[str, ...]:
    return (sys.executable, "-m", "hyperhive_harness", "serve")


class Containers:
    def __init__(
        self,
        backends: dict[str, Backend],
        *,
        paths: Paths,
        registry: Registry,
        broker: Broker,
        events: EventHub,
        spec_for: Callable[[str], Awaitable[AgentSpec]],
        report_for: Callable[[str], Report],
        stop_on_exit: bool,
        clock: WallClock = time.time,
        restart_backoff: Backoff = RESTART_BACKOFF,
        on_crash: Callable[[Conn, str, float], None] | None = None,
    ) -> None:
        self.backends = backends
        #: Run in the transaction that reports a crash, with the agent's name and the time
        #: (the ledger counts crashes).
        self._on_crash = on_crash
        self._paths = paths
        self._registry = registry
        self._broker = broker
        self._events = events
        self._spec_for = spec_for
        self._report_for = report_for
        self._stop_on_exit = stop_on_exit
        self._clock = clock
        self._restart_backoff = restart_backoff
        self._runners: dict[str, AgentRunner] = {}
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise every live agent (re-adopting payloads) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for record in self._registry.all():
                if (
                    record.state != AgentState.DESTROYED
                    and record.backend in self.backends
                    and record.node == self._registry.node
                ):
                    await self.ensure(record.name)
            task_status.started()
            await trio.sleep_forever()

    async def ensure(self, name: str, *, first_start: str | None = None) -> None:
        """Make sure a runner supervises ``name`` (it starts the agent if it should run).

        ``first_start`` ("spawned", "revived") is the verb of a new runner's first start notice.
        """
        if name in self._runners:
            return
        assert self._nursery is not None, "Containers.serve() is not running"
        record = self._registry.get(name)
        if record.node != self._registry.node:
            raise RequestRefused(f"{name} runs on node {record.node}, not on this one")
        backend = record.backend
        if backend not in self.backends:
            raise RequestRefused(f"{name} uses the {backend} backend, which starts nothing")
        runner = AgentRunner(
            name,
            backend=self.backends[backend],
            registry=self._registry,
            broker=self._broker,
            events=self._events,
            spec_for=self._spec_for,
            log_file=self._paths.container_log(name),
            stop_on_exit=self._stop_on_exit,
            clock=self._clock,
            restart_backoff=self._restart_backoff,
            first_start=first_start,
            on_crash=self._on_crash,
        )
        self._runners[name] = runner

        async def supervised(task_status: trio.TaskStatus[None]) -> None:
            try:
                await supervise(
                    f"{name}'s supervisor",
                    runner.run,
                    report=self._report_for(name),
                    task_status=task_status,
                )
            finally:
                self._runners.pop(name, None)

        await self._nursery.start(supervised)

    def runner(self, name: str) -> AgentRunner:
        runner = self._runners.get(name)
        if runner is None:
            raise RequestRefused(f"{name} is not supervised (destroyed?)")
        return runner

    async def request(self, name: str, verb: str) -> None:
        try:
            command = LifecycleVerb(verb)
        except ValueError:
            raise RequestRefused(f"unknown lifecycle command {verb!r}") from None
        await self.runner(name).request(command)

    def logs(self, name: str, lines: int) -> list[str]:
        return tail_lines(self._paths.container_log(name), lines)
