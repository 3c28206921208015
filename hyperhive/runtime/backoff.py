"""The one backoff policy: ``first`` seconds, doubling up to ``limit``.

The daemon's supervised parts restart with it, the harness reconnects to its daemon and
restarts its UI with it, the MCP server retries its first ``hello`` with it.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Backoff:
    """Delays between attempts: ``first`` doubling up to ``limit``; a part that stayed up
    ``reset_after`` seconds starts over (see :func:`hyperhive.runtime.supervise`)."""

    first: float = 1.0
    limit: float = 60.0
    reset_after: float = 60.0

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.first <= self.limit:
            raise ValueError(f"backoff needs 0 <= first <= limit, not {self.first}, {self.limit}")

    def after(self, delay: float) -> float:
        """The delay that follows ``delay``."""
        return min(delay * 2, self.limit)

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0 for the first)."""
        delay = self.first
        for _ in range(attempt):
            delay = self.after(delay)
            if delay >= self.limit:
                break
        return delay

    def start(self) -> Retry:
        return Retry(self)


@attrs.define
class Retry:
    """One run of attempts under a :class:`Backoff`: counts them, says the next delay."""

    policy: Backoff
    attempts: int = 0

    def next(self) -> float:
        delay = self.policy.delay(self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
