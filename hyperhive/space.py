"""Free space in the state dir: a warning before the disk fills up.

:class:`SpaceMonitor` looks at the state dir's file system with ``statvfs`` (in a worker
thread) every 30 s, and at once when a write just failed for lack of space (there is no
event for free space, so a timer it is). Under the ``--min-free`` threshold it is a
problem in ``status``, on the dashboard and in ``/metrics``; the decision is the plain
function :func:`space_problem`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Final

import attrs
import trio

from hyperhive.config import SPACE_CHECK_SECONDS, min_free_bytes
from hyperhive.events import EventHub
from hyperhive.protocol.event_payloads import SpaceChanged

log = logging.getLogger(__name__)
#: Pokes closer together than this share one look.
MIN_CHECK_INTERVAL: Final = 1.0


@attrs.frozen
class Space:
    free: int
    total: int
    threshold: int

    @property
    def low(self) -> bool:
        return self.free < self.threshold


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB"


def space_problem(space: Space | None, where: Path) -> str | None:
    """The warning for ``space`` (None when there is enough)."""
    if space is None or not space.low:
        return None
    return (
        f"low disk space: {_mib(space.free)} free of {_mib(space.total)} in {where} "
        f"(warning under {_mib(space.threshold)}; when it is full, writes are refused)"
    )


def measure(path: Path, setting: str | None) -> Space:
    """statvfs of ``path`` (blocking)."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    return Space(st.f_bavail * st.f_frsize, total, min_free_bytes(setting, total))


class SpaceMonitor:
    def __init__(
        self,
        path: Path,
        setting: str | None,
        events: EventHub,
        *,
        interval: float = SPACE_CHECK_SECONDS,
    ) -> None:
        self.path = path
        self._setting = setting
        self._events = events
        self._interval = interval
        self._poke = trio.Event()
        self.space: Space | None = None

    def problem(self) -> str | None:
        return space_problem(self.space, self.path)

    def poke(self) -> None:
        """Look again soon (a write just failed for lack of space)."""
        self._poke.set()

    async def check(self) -> Space:
        space = await trio.to_thread.run_sync(measure, self.path, self._setting)
        was_low = self.space is not None and self.space.low
        self.space = space
        if space.low != was_low:
            if space.low:
                log.warning("%s", self.problem())
            self._events.emit(SpaceChanged(free=space.free, low=space.low))
        return space

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.check()
        task_status.started()
        while True:
            with trio.move_on_after(self._interval):
                await self._poke.wait()
            self._poke = trio.Event()
            await self.check()
            await trio.sleep(MIN_CHECK_INTERVAL)
