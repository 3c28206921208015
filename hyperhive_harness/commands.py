"""What the operator can ask of the turn loop from the UI: cancel the running turn, retry
now (end a rate-limit sleep or a login park), start a new session, set the model, compact
claude's session.

:class:`Commands` is the one place these requests land; the turn loop reads them through the
same object (the running turn's :class:`~hyperhive_harness.claude.TurnControl`, the
new-session flag, the retry signal), so the web handlers never touch the loop itself.
"""

from __future__ import annotations

import trio

from hyperhive_harness.claude import TurnControl
from hyperhive_harness.event_log import EventLog
from hyperhive_harness.model import ModelFile


class Commands:
    def __init__(self, events: EventLog, model: ModelFile) -> None:
        self._events = events
        self._model = model
        #: The running turn (set by the loop while claude runs).
        self.control: TurnControl | None = None
        self._retry = trio.Event()
        self._new_session = False
        self._compact = trio.Event()

    # ------------------------------------------------------------ from the UI

    def cancel(self) -> bool:
        """SIGINT the running claude; False when no turn runs."""
        control = self.control
        cancelled = control.cancel() if control is not None else False
        if cancelled:
            self._events.note(
                "operator cancelled the turn (SIGINT sent to claude)", source="operator"
            )
        return cancelled

    def retry_now(self) -> None:
        """End a rate-limit sleep or a login park at once."""
        self._retry.set()

    def request_new_session(self, *, by_operator: bool = True) -> None:
        """The next turn runs without ``--continue`` (once)."""
        self._new_session = True
        if by_operator:
            self._events.note(
                "operator asked for a new session: the next turn starts without --continue"
            )

    def request_compact(self) -> None:
        """Compact claude's session as soon as no turn runs (the loop's compactor does it)."""
        self._compact.set()
        self._events.note(
            "operator asked for a compaction of claude's session; it runs when no turn does",
            source="operator",
        )

    def set_model(self, raw: str) -> str:
        """Write the model file; raises InvalidModel or OSError."""
        chosen = self._model.write(raw)
        self._events.note(f"operator set the model to {chosen}; it applies from the next turn")
        return chosen

    # ------------------------------------------------------------ for the loop

    @property
    def new_session_pending(self) -> bool:
        return self._new_session

    def take_new_session(self) -> bool:
        taken, self._new_session = self._new_session, False
        return taken

    @property
    def compact_pending(self) -> bool:
        return self._compact.is_set()

    async def wait_compact(self) -> None:
        """Wait until a compaction is asked for (it stays asked until taken)."""
        await self._compact.wait()

    def take_compact(self) -> None:
        """The asked-for compaction starts now; asking again asks for another one."""
        if self._compact.is_set():
            self._compact = trio.Event()

    def arm_retry(self) -> None:
        """Forget earlier retry requests: only one from now on ends the next wait."""
        self._retry = trio.Event()

    async def wait_retry(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a retry request; True when one came."""
        with trio.move_on_after(seconds):
            await self._retry.wait()
            return True
        return False
