"""Stored wall-clock times, and waits for them scheduled on trio's clock.

What is stored (a question's deadline, an agent's crash history) is wall-clock seconds, so
it keeps its meaning across daemon restarts. Waiting for such a time is done on trio's
clock: :func:`trio_deadline` turns what remains of it into a trio deadline. The daemon's
wall clock is :func:`time.time`; a test under :class:`trio.testing.MockClock` injects a
:class:`TrioWallClock` (``Config.wall_clock``), which follows trio's clock, so virtual
time moves both and a backoff of minutes passes in no real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

#: Seconds since the epoch, like :func:`time.time` (the default everywhere).
WallClock = Callable[[], float]


def trio_deadline(at: float, wall: WallClock) -> float:
    """The trio deadline of the wall-clock time ``at`` (now, if it has passed)."""
    return trio.current_time() + max(0.0, at - wall())


class TrioWallClock:
    """A wall clock that follows trio's clock: ``base + trio.current_time()``.

    Made inside a trio run; ``base`` defaults to the real time then, so stored times look
    like the real ones.
    """

    def __init__(self, base: float | None = None) -> None:
        self.base = time.time() - trio.current_time() if base is None else base

    def __call__(self) -> float:
        return self.base + trio.current_time()


__all__ = ["TrioWallClock", "WallClock", "trio_deadline"]
