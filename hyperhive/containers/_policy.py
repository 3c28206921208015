"""When to restart a crashed agent: an immutable policy with the history of its crashes.

Rules (SPEC §8): the first restart waits 1 s, each further consecutive crash doubles the
wait up to 5 min; a run that stayed up for 10 min resets the streak; 5 crashes within
15 min is a crash loop, after which nothing restarts the agent automatically until the
operator starts it again (:meth:`RestartPolicy.cleared`). Times are plain floats from one
clock (wall-clock seconds in the daemon, so the history survives restarts).
"""

from __future__ import annotations

import attrs

from hyperhive.config import RESTART_BACKOFF
from hyperhive.config import RESTART_LOOP_CRASHES as LOOP_CRASHES
from hyperhive.config import RESTART_LOOP_WINDOW_SECONDS as LOOP_WINDOW
from hyperhive.runtime import Backoff


@attrs.frozen
class RestartPolicy:
    backoff: Backoff = RESTART_BACKOFF
    loop_window: float = LOOP_WINDOW
    loop_crashes: int = LOOP_CRASHES
    #: Crash times, oldest first: all crashes inside the loop window, for the loop rule.
    crashes: tuple[float, ...] = ()
    #: Consecutive crashes since the last run that stayed up ``reset_after`` seconds.
    streak: int = 0

    def record_crash(self, at: float, up_since: float | None) -> RestartPolicy:
        """The policy after a crash at ``at`` of a run that started at ``up_since``."""
        streak = self.streak
        if up_since is not None and at - up_since >= self.backoff.reset_after:
            streak = 0
        recent = tuple(t for t in self.crashes if at - t < self.loop_window)
        return attrs.evolve(self, crashes=(*recent, at), streak=streak + 1)

    @property
    def in_crash_loop(self) -> bool:
        if len(self.crashes) < self.loop_crashes:
            return False
        window = self.crashes[-self.loop_crashes :]
        return window[-1] - window[0] < self.loop_window

    def next_delay(self) -> float:
        """How long to wait before the next restart (0 before any crash)."""
        if self.streak == 0:
            return 0.0
        return self.backoff.delay(self.streak - 1)

    def cleared(self) -> RestartPolicy:
        """The operator started the agent by hand: forget the crashes."""
        return attrs.evolve(self, crashes=(), streak=0)
