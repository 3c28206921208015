"""An in-memory container backend, for tests of the runner's rules (like httpx's MockTransport).

Nothing is started: a :class:`FakeHandle` stands for a payload that runs until the test
makes it exit (:meth:`FakeHandle.exit`, a crash) or the runner stops it. The backend
records every start and stop, refuses the starts a test scripted to fail, and re-adopts
the payloads it still has running, so a second daemon on the same state given the same
backend re-adopts them as after a real daemon restart. With trio's ``MockClock`` and a
:class:`~hyperhive.clocks.TrioWallClock`, crash loops and backoffs take no real time.

It is given to a daemon under a real backend's name (``Config.container_backends``); the
CLI offers no way to choose it.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator

import attrs
import trio

from hyperhive.containers._backend import STOP_GRACE_SECONDS, AgentSpec, RunRecord, Started
from hyperhive.errors import RequestRefused


class FakeHandle:
    """One fake payload: running until :meth:`exit` or the runner's stop."""

    def __init__(self, record: RunRecord, spec: AgentSpec) -> None:
        self.record = record
        self.spec = spec
        self.exit_status: int | None = None
        #: A payload that ignores SIGTERM: a stop waits the grace period, then "SIGKILLs".
        self.ignore_sigterm = False
        #: Set by the runner's stop (not by :meth:`exit`).
        self.stopped = False
        #: The runner let go of it without stopping it (the payload runs on).
        self.closed = False
        self._exited = trio.Event()

    @property
    def pid(self) -> int:
        return self.record.pid

    @property
    def running(self) -> bool:
        return not self._exited.is_set()

    def exit(self, status: int | None, *, output: str = "") -> None:
        """The payload ends by itself with ``status``; ``output`` is appended to its log."""
        if output:
            self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
            with self.spec.log_file.open("a") as log:
                log.write(output if output.endswith("\n") else output + "\n")
        self._finish(status)

    def _finish(self, status: int | None) -> None:
        if self.running:
            self.exit_status = status
            self._exited.set()

    async def wait(self) -> int | None:
        await self._exited.wait()
        return self.exit_status

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        self.stopped = True
        if self.running and self.ignore_sigterm:
            with trio.move_on_after(grace):
                await self._exited.wait()
            self._finish(-signal.SIGKILL)
        self._finish(-signal.SIGTERM)
        return await self.wait()

    def close(self) -> None:
        self.closed = True


@attrs.frozen
class FakeStart:
    """One call of :meth:`FakeBackend.start` that started something."""

    spec: AgentSpec
    handle: FakeHandle
    #: ``trio.current_time()`` of the start (virtual under a MockClock).
    at: float


class FakeBackend:
    """The :class:`~hyperhive.containers.Backend` protocol in memory."""

    name = "fake"

    def __init__(self, *, isolated: bool = False, warning: str | None = None) -> None:
        self.isolated = isolated
        #: The warning every start reports (as a real backend does without cgroup limits).
        self.warning = warning
        self.starts: list[FakeStart] = []
        #: Run records re-adopted through :meth:`adopt`.
        self.adoptions: list[RunRecord] = []
        self._refusals: dict[str, list[str]] = {}
        self._exit_at_start: dict[str, tuple[int | None, str]] = {}
        self._live: dict[int, FakeHandle] = {}
        self._pids: Iterator[int] = itertools.count(10_000)
        self._changed = trio.Event()

    # ------------------------------------------------------------ scripting

    def refuse_next_start(self, name: str, reason: str) -> None:
        """The next start of ``name`` is refused with ``reason`` (e.g. a broken image)."""
        self._refusals.setdefault(name, []).append(reason)

    def exit_at_start(self, name: str, status: int | None, *, output: str = "") -> None:
        """Every payload of ``name`` exits at once with ``status`` (a crash loop)."""
        self._exit_at_start[name] = (status, output)

    def keep_running(self, name: str) -> None:
        """Undo :meth:`exit_at_start`: payloads of ``name`` run until told otherwise."""
        self._exit_at_start.pop(name, None)

    # ------------------------------------------------------------ looking at it

    def starts_of(self, name: str) -> list[FakeStart]:
        return [s for s in self.starts if s.spec.name == name]

    def current(self, name: str) -> FakeHandle:
        """The latest payload of ``name`` (running or not)."""
        starts = self.starts_of(name)
        if not starts:
            raise LookupError(f"{name} was never started")
        return starts[-1].handle

    async def wait_starts(self, name: str, count: int) -> FakeHandle:
        """Until ``name`` was started ``count`` times; its latest payload."""
        while len(self.starts_of(name)) < count:
            await self._changed.wait()
        return self.starts_of(name)[count - 1].handle

    # ------------------------------------------------------------ the protocol

    async def start(self, spec: AgentSpec, started_at: float) -> Started:
        await trio.lowlevel.checkpoint()
        refusals = self._refusals.get(spec.name)
        if refusals:
            raise RequestRefused(refusals.pop(0))
        pid = next(self._pids)
        handle = FakeHandle(RunRecord(pid, pid * 3, started_at), spec)
        self._live[pid] = handle
        self.starts.append(FakeStart(spec, handle, trio.current_time()))
        self._changed.set()
        self._changed = trio.Event()
        if spec.name in self._exit_at_start:
            status, output = self._exit_at_start[spec.name]
            handle.exit(status, output=output)
        return Started(handle, self.warning)

    async def adopt(self, record: RunRecord) -> FakeHandle | None:
        await trio.lowlevel.checkpoint()
        handle = self._live.get(record.pid)
        if handle is None or not handle.running or handle.record.start_ticks != record.start_ticks:
            return None
        handle.closed = False
        self.adoptions.append(record)
        return handle


__all__ = ["FakeBackend", "FakeHandle", "FakeStart"]
