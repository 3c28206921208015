"""One supervising task per agent: the only thing that starts, stops or restarts it.

Lifecycle requests (start, kill, restart, rebuild, destroy) reach an agent's
:class:`AgentRunner` as commands and are carried out one at a time, so an operator's
restart and a crash restart can never race. While a command runs, the agent shows a
transient (``starting``, ``stopping``, …) that is cleared on every exit path. An exit the
runner did not cause is a crash: it is published, the manager is told
(``container_crash``), and the :class:`RestartPolicy` decides when to start again, or that
the agent is in a crash loop and stays down until the operator starts it.

Handling an exit, a restart or a re-adoption reads nothing from the agent's config (the
log is at a fixed path): only starting the payload needs the applied ``agent.toml``, and
one that cannot be used there leaves the agent stopped with the error as its warning.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs
import trio

from hyperhive import system_messages
from hyperhive.clocks import WallClock, trio_deadline
from hyperhive.config import RESTART_BACKOFF
from hyperhive.containers._backend import AgentSpec, Backend, PayloadHandle, RunRecord, tail_lines
from hyperhive.containers._policy import RestartPolicy
from hyperhive.errors import RequestRefused
from hyperhive.kinds import AgentState, LifecycleVerb, Transient
from hyperhive.protocol import event_payloads
from hyperhive.runtime import Backoff

if TYPE_CHECKING:
    from hyperhive.broker import Broker, Outbox
    from hyperhive.events import EventHub
    from hyperhive.registry import Registry
    from hyperhive.store import Conn

log = logging.getLogger(__name__)
STDERR_TAIL_LINES: Final = 20

PAST: Final = {LifecycleVerb.RESTART: "restarted", LifecycleVerb.REBUILD: "rebuilt"}
#: The notice's verb of a launch no lifecycle command asked for.
KICK_AFTER_CRASH: Final = "restarted by hyperhive after a crash"
KICK_WITH_HIVE: Final = "started again by hyperhive when the hive started"


class RunnerEvent(StrEnum):
    """What, besides a command, wakes the runner."""

    EXIT = "exit"
    RESTART_DUE = "restart_due"


@attrs.define(eq=False)
class Command:
    verb: LifecycleVerb
    done: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None


SpecFactory = Callable[[str], Awaitable[AgentSpec]]


class AgentRunner:
    def __init__(
        self,
        name: str,
        *,
        backend: Backend,
        registry: Registry,
        broker: Broker,
        events: EventHub,
        spec_for: SpecFactory,
        log_file: Path,
        stop_on_exit: bool,
        clock: WallClock = time.time,
        restart_backoff: Backoff = RESTART_BACKOFF,
        first_start: str | None = None,
        on_crash: Callable[[Conn, str, float], None] | None = None,
    ) -> None:
        self.name = name
        self._on_crash = on_crash
        self._log_file = log_file
        self._backend = backend
        self._registry = registry
        self._broker = broker
        self._events = events
        self._spec_for = spec_for
        self._stop_on_exit = stop_on_exit
        #: Wall-clock time of what is stored (crash times, run starts); waits run on trio's clock.
        self._clock = clock
        #: The start notice's verb of the first launch ("spawned", "revived"), if given.
        self._first_start = first_start
        self._send, self._commands = trio.open_memory_channel[Command](16)
        self.handle: PayloadHandle | None = None
        self._restart_at: float | None = None
        record = registry.get(name)
        self.policy = RestartPolicy(
            backoff=restart_backoff, crashes=record.crash_times, streak=record.crash_streak
        )

    async def request(self, verb: LifecycleVerb) -> None:
        """Queue a lifecycle command and wait until the runner carried it out."""
        command = Command(verb)
        await self._send.send(command)
        await command.done.wait()
        if command.error is not None:
            raise command.error

    # ------------------------------------------------------------ the loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._recover()
        task_status.started()
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, Command):
                    await self._execute(event)
                    if event.verb == LifecycleVerb.DESTROY and event.error is None:
                        return
                elif event == RunnerEvent.EXIT:
                    await self._on_unexpected_exit()
                elif event == RunnerEvent.RESTART_DUE:
                    self._restart_at = None
                    await self._start_guarded(Transient.STARTING, kick=False)
        except Exception:
            # A bug in here: the payload runs on, and the runner's restart re-adopts it.
            if self.handle is not None:
                self.handle.close()
                self.handle = None
            raise
        finally:
            if self._stop_on_exit and self.handle is not None:
                with trio.CancelScope(shield=True):
                    await self.handle.stop()
                    # Still ``running`` without a pid: the next daemon starts it again
                    # (only the operator's kill leaves an agent stopped).
                    await self._registry.update(self.name, pid=None)
            elif self.handle is not None:
                self.handle.close()  # the payload runs on; a later daemon re-adopts it

    async def _next_event(self) -> Command | RunnerEvent:
        result: list[Command | RunnerEvent] = []
        async with trio.open_nursery() as nursery:

            async def command() -> None:
                result.append(await self._commands.receive())
                nursery.cancel_scope.cancel()

            async def exited(handle: PayloadHandle) -> None:
                await handle.wait()
                result.append(RunnerEvent.EXIT)
                nursery.cancel_scope.cancel()

            async def timer(at: float) -> None:
                await trio.sleep_until(trio_deadline(at, self._clock))
                result.append(RunnerEvent.RESTART_DUE)
                nursery.cancel_scope.cancel()

            nursery.start_soon(command)
            if self.handle is not None:
                nursery.start_soon(exited, self.handle)
            elif self._restart_at is not None:
                nursery.start_soon(timer, self._restart_at)
        return result[0]

    async def _recover(self) -> None:
        """At daemon start (and when the runner is restarted after a failure): re-adopt a
        payload left running, or account for one that died."""
        self._restart_at = None
        record = self._registry.get(self.name)
        if record.transient is not None:
            record = await self._registry.update(self.name, transient=None, transient_since=None)
        if record.pid is not None and record.start_ticks is not None:
            run = RunRecord(record.pid, record.start_ticks, record.run_started_at or 0.0)
            self.handle = await self._backend.adopt(run)
            if self.handle is not None:
                log.info("%s: re-adopted pid %d", self.name, record.pid)
                if record.state != AgentState.RUNNING:
                    await self._registry.update(self.name, state=AgentState.RUNNING)
                return
            # It died while the daemon was away: that is a crash like any other.
            await self._on_unexpected_exit(exit_status=None)
            return
        if record.state == AgentState.CRASHED:
            self._restart_at = self._clock() + self.policy.next_delay()
        elif record.state in (AgentState.RUNNING, AgentState.REGISTERED):
            await self._start_guarded(Transient.STARTING, kick=False)

    # ------------------------------------------------------------ commands

    async def _execute(self, command: Command) -> None:
        try:
            match command.verb:
                case LifecycleVerb.START:
                    if self.handle is not None:
                        raise RequestRefused(f"{self.name} is already running")
                    self._restart_at = None
                    self.policy = self.policy.cleared()
                    await self._start(Transient.STARTING, kick=True)
                case LifecycleVerb.KILL:
                    if self.handle is None and self._restart_at is None:
                        raise RequestRefused(f"{self.name} is not running")
                    self._restart_at = None
                    async with self._transient(Transient.STOPPING):
                        await self._stop()
                        await self._registry.update(self.name, state=AgentState.STOPPED)
                case LifecycleVerb.RESTART | LifecycleVerb.REBUILD:
                    restart = command.verb == LifecycleVerb.RESTART
                    verb = Transient.RESTARTING if restart else Transient.REBUILDING
                    # Build the new spec first: a bad config leaves the running agent alone.
                    spec = await self._spec_for(self.name)
                    if command.verb == LifecycleVerb.REBUILD and self.handle is None:
                        return  # not running: the new config applies at its next start
                    self._restart_at = None
                    self.policy = self.policy.cleared()
                    async with self._transient(verb):
                        await self._stop()
                        await self._launch(spec, kick=PAST[command.verb])
                case LifecycleVerb.DESTROY:
                    self._restart_at = None
                    async with self._transient(Transient.DESTROYING):
                        await self._stop()
                case _:
                    raise RequestRefused(f"unknown lifecycle command '{command.verb}'")
        except Exception as exc:  # handed back to the requester
            command.error = exc if isinstance(exc, RequestRefused) else RequestRefused(str(exc))
        finally:
            command.done.set()

    async def _start_guarded(self, transient: Transient, *, kick: bool) -> None:
        try:
            await self._start(transient, kick=kick)
        except (RequestRefused, OSError) as exc:
            # A config that cannot be used, a full disk: the agent's error, not the daemon's.
            log.error("%s: %s", self.name, exc)
            await self._registry.update(self.name, state=AgentState.STOPPED, warning=str(exc))

    async def _start(self, transient: Transient, *, kick: bool) -> None:
        spec = await self._spec_for(self.name)
        async with self._transient(transient):
            await self._launch(spec, kick="started" if kick else None)

    def _kick_verb(self, kick: str | None) -> str:
        """The start notice's verb: the command's, else why the runner launches by itself."""
        first, self._first_start = self._first_start, None
        if kick is None:
            kick = first
        if kick is None:
            state = self._registry.get(self.name).state
            if state in (AgentState.CRASHED, AgentState.CRASH_LOOP):
                return KICK_AFTER_CRASH
            if state != AgentState.REGISTERED:
                return KICK_WITH_HIVE
            kick = "spawned"
        return f"{kick} by hyperhive"

    async def _launch(self, spec: AgentSpec, *, kick: str | None) -> None:
        # Every launch starts with a notice. It is in the inbox before the payload starts and
        # the broker hands it out before older messages, so the first turn is on it.
        await self._broker.notice(self.name, system_messages.start_notice(self._kick_verb(kick)))
        started = self._clock()
        started_run = await self._backend.start(spec, started)
        self.handle = started_run.handle
        try:
            await self._registry.update(
                self.name,
                state=AgentState.RUNNING,
                pid=self.handle.pid,
                start_ticks=self.handle.record.start_ticks,
                run_started_at=started,
                warning=started_run.warning,
                crash_times=self.policy.crashes,
                crash_streak=self.policy.streak,
            )
        except BaseException:
            # Not recorded (a full disk): nobody could re-adopt it, so it must not run on.
            handle, self.handle = self.handle, None
            with trio.CancelScope(shield=True):
                await handle.stop()
            raise
        self._events.emit(event_payloads.ContainerStarted(name=self.name, pid=self.handle.pid))

    async def _stop(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            status = await handle.stop()
            await self._registry.update(self.name, pid=None, start_ticks=None, last_exit=status)

    async def _on_unexpected_exit(self, exit_status: int | None = None) -> None:
        record = self._registry.get(self.name)
        if self.handle is not None:
            exit_status = self.handle.exit_status
            self.handle = None
        now = self._clock()
        self.policy = self.policy.record_crash(now, record.run_started_at)
        loop = self.policy.in_crash_loop
        state = AgentState.CRASH_LOOP if loop else AgentState.CRASHED
        tail = await trio.to_thread.run_sync(tail_lines, self._log_file, STDERR_TAIL_LINES)
        await self._registry.update(
            self.name,
            state=state,
            pid=None,
            start_ticks=None,
            last_exit=exit_status,
            crash_times=self.policy.crashes,
            crash_streak=self.policy.streak,
        )
        delay = math.inf if loop else self.policy.next_delay()
        self._events.emit(
            event_payloads.ContainerCrash(
                name=self.name,
                exit_status=exit_status,
                crash_loop=loop,
                restart_in=None if loop else delay,
            )
        )
        crash = system_messages.container_crash(
            self.name,
            exit_status=exit_status,
            stderr_tail="\n".join(tail),
            crash_loop=loop,
            restart_in_seconds=None if loop else delay,
        )
        count = self._on_crash

        def report(conn: Conn, outbox: Outbox) -> None:
            if count is not None:
                count(conn, self.name, now)  # the crash is counted with its report, or not at all
            outbox.insert([crash])

        await self._broker.transaction(report)
        log.warning(
            "%s crashed (exit %s); %s",
            self.name,
            exit_status,
            "crash loop: not restarting" if loop else f"restart in {delay:.0f} s",
        )
        self._restart_at = None if loop else now + delay

    @asynccontextmanager
    async def _transient(self, verb: Transient) -> AsyncIterator[None]:
        await self._registry.update(self.name, transient=verb, transient_since=self._clock())
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                await self._registry.update(self.name, transient=None, transient_since=None)
